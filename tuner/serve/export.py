"""`tuner serve --export DIR`: the service as files another tool deploys.

* `serve_config.yaml`: a Ray Serve config file. `serve run serve_config.yaml` runs it on a
  local Ray, `serve deploy serve_config.yaml` on a running cluster; its application's
  `args:` are the ServeSpec, read back by `tuner.serve.app:app_builder`.
* `rayservice.yaml`: a KubeRay `RayService` with the same application (`serveConfigV2`) and a
  cluster shaped like deploy/tuner-raycluster.yaml: a head that runs no replica, and a
  worker group whose pods each give one replica its threads.

Both need tuner installed where the replicas run (the image), and the tracking URI must be
reachable from there: a sqlite file on this machine is not, an MLflow server is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tuner.serve.app import APP_NAME, HAPROXY_ENV, haproxy_env
from tuner.serve.spec import ServeSpec

IMAGE = "registry.example.com/tuner:latest"  # deploy/tuner-raycluster.yaml's image: this repository with its venv
RAY_VERSION = "2.60.0"


def serve_config(spec: ServeSpec, host: str, port: int) -> dict[str, Any]:
    env = haproxy_env(port)
    ingress = {"controller_options": {"runtime_env": {"env_vars": env}}} if spec.ingress == "haproxy" else {}
    return {
        **ingress,
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": spec.route_prefix,
                "import_path": "tuner.serve.app:app_builder",
                "args": spec.to_args(),
            }
        ],
    }


def ray_service(spec: ServeSpec, port: int, name: str) -> dict[str, Any]:
    apps = {"applications": serve_config(spec, "0.0.0.0", port)["applications"]}
    env = [{"name": "RAY_worker_niceness", "value": "0"}, {"name": "MLFLOW_TRACKING_URI", "value": spec.tracking_uri}]
    if spec.ingress == "haproxy":  # the controller and the replicas read it when they start
        env += [{"name": k, "value": v} for k, v in HAPROXY_ENV.items()]
    cpu = str(spec.threads)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": yaml.safe_dump(apps, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "ray-head",
                                    "image": IMAGE,
                                    "env": env,
                                    "ports": [{"containerPort": port, "name": "serve"}],
                                    "resources": {
                                        "requests": {"cpu": "1", "memory": "4Gi"},
                                        "limits": {"cpu": "1", "memory": "4Gi"},
                                    },
                                }
                            ]
                        }
                    },  # fmt: skip
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "replicas",
                        "replicas": spec.replicas,
                        "minReplicas": spec.replicas,
                        "maxReplicas": spec.replicas,
                        "rayStartParams": {},
                        "template": {
                            "spec": {
                                "containers": [
                                    {
                                        "name": "ray-worker",
                                        "image": IMAGE,
                                        "env": env,
                                        # one replica per pod, requests = limits: sharing cores slows it
                                        "resources": {
                                            "requests": {"cpu": cpu, "memory": "8Gi"},
                                            "limits": {"cpu": cpu, "memory": "8Gi"},
                                        },
                                    }
                                ]
                            }
                        },  # fmt: skip
                    }
                ],
            },
        },
    }


def export(spec: ServeSpec, folder: Path, title: str, host: str, port: int) -> list[Path]:
    """Write both files into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "tuner-" + "".join(c if c.isalnum() else "-" for c in spec.model.lower()).strip("-")
    head = f'# {title}: {spec.label} ({spec.artifact}). Written by `tuner serve --export`; docs/serving.md.\n'
    config = folder / "serve_config.yaml"
    config.write_text(head + "# serve run serve_config.yaml   (or: serve deploy serve_config.yaml)\n"
                      + yaml.safe_dump(serve_config(spec, host, port), sort_keys=False))  # fmt: skip
    service = folder / "rayservice.yaml"
    service.write_text(head + "# kubectl apply -f rayservice.yaml   (KubeRay >= 1.5)\n"
                       + yaml.safe_dump(ray_service(spec, port, name[:63]), sort_keys=False))  # fmt: skip
    return [config, service]

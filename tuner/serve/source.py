"""What `tuner serve MODEL_URI` serves: a registered tuner model, found from

* a registry URI: `models:/tuner-resnet50@champion`, `models:/tuner-resnet50/3` (an alias is
  pinned to its version, so every replica loads the same one even if the alias moves);
* a run's model: `runs:/<run_id>/model`, or MLflow's `models:/m-<id>`;
* a search's output folder: its `recommended.yaml` names the model it registered (or, for
  a folder written before it did, the search's parent run does);
* a local MLflow model folder (it holds an `MLmodel` file).

A registered version that a serving search tuned (search/serving.py) carries its serving
config as `tuner.serving.<knob>` tags: they are the service's defaults, under any flag. Its
`tuner.decode.*` tags say how far the fast JPEG decode moved the model's outputs on the
search's images (deploy/register.py): `--decode auto` takes the fast path only where
`tuner.decode.fast` is true.

Only the model's `MLmodel` file is read here, through the tracking URI passed in (never
MLflow's process-wide one): the loader's config, which says what the artifact is, and the
signature, which gives the input shape. The replicas load the artifact themselves.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuner.core.errors import ConfigError, one_line
from tuner.serve.spec import ServeSpec
from tuner.tracking.store import absolute_uri


@dataclass(frozen=True)
class Source:
    uri: str  # what it is: models:/NAME/VERSION, runs:/..., models:/m-<id>, a folder
    location: str  # where its files are (an artifact URI or a folder): what the replicas download
    tracking_uri: str
    config: dict[str, Any]  # the loader's model_config (deploy/pyfunc_model.py)
    input_shape: tuple[int, int, int]
    registered: str = ""  # "tuner-resnet50/3" when it came from the registry
    search_run: str = ""  # the parent run of the search that made the pick
    serving: tuple[tuple[str, Any], ...] = ()  # the knobs a serving search chose (version tags)
    decode: tuple[tuple[str, str], ...] = ()  # the fast decode's measured agreement (tuner.decode.* tags)

    @property
    def experiment(self) -> str:
        return f"tuner/{self.config['model']}"


def resolve(target: str, tracking_uri: str) -> Source:
    """`target` as the module docstring lists; a ConfigError names it when nothing fits."""
    tracking_uri = absolute_uri(tracking_uri)
    path = Path(target)
    if path.is_dir():
        if (path / "MLmodel").is_file():
            return _source(str(path.resolve()), tracking_uri, f"MODEL_URI {target}")
        if (path / "recommended.yaml").is_file():
            return _from_output_folder(path, target)
        raise ConfigError(
            f"MODEL_URI {target}: a folder, but neither a search's output folder (no recommended.yaml) nor an "
            "MLflow model (no MLmodel file)"
        )
    if not target.startswith(("models:/", "runs:/")):
        raise ConfigError(
            f"MODEL_URI {target}: not a registered model (models:/tuner-<model>@champion, models:/NAME/VERSION), "
            "a run's model (runs:/RUN_ID/model), a search's output folder or an MLflow model folder"
        )
    registered, search_run, serving, decode = _pin_version(target, tracking_uri)
    return _source(f"models:/{registered}" if registered else target, tracking_uri, f"MODEL_URI {target}",
                   registered, search_run, serving, decode)  # fmt: skip


# Knobs whose default depends on another's value (ServeSpec.for_model): a flag for the one
# drops the tuned values of the others.
DERIVED = {
    "max_batch_size": ("batch_wait_timeout_s", "max_ongoing_requests", "max_queued_requests"),
    "max_ongoing_requests": ("max_queued_requests",),
    "replicas": ("max_queued_requests",),
}
SERVING_TAG = "tuner.serving."  # + a ServeSpec knob: what the serving search chose (search/serving.py)
DECODE_TAG = "tuner.decode."  # + a figure of the fast decode's agreement (inputs/images.py Agreement.tags)
Tags = tuple[tuple[str, str], ...]


def serving_tags(knobs: dict[str, Any]) -> dict[str, str]:
    return {f"{SERVING_TAG}{k}": str(v) for k, v in knobs.items()}


def _pin_version(uri: str, tracking_uri: str) -> tuple[str, str, Tags, Tags]:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> ("NAME/VERSION", the search's parent
    run, its serving knobs, its decode figures); ("", "", (), ()) for other URIs (runs:/,
    models:/m-<id>)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    rest = uri.removeprefix("models:/")
    if not uri.startswith("models:/") or rest.startswith("m-"):
        return "", "", (), ()
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = rest.partition("/")
            if not version.isdigit():
                raise ConfigError(
                    f"MODEL_URI {uri}: name a version (models:/{name}/3) or an alias (models:/{name}@champion)"
                )
            mv = client.get_model_version(name, version)
    except MlflowException as e:
        raise ConfigError(f"MODEL_URI {uri}: no such model in {tracking_uri}: {one_line(e)}") from None
    tags = dict(mv.tags or {})
    knobs = tuple(sorted((k.removeprefix(SERVING_TAG), v) for k, v in tags.items() if k.startswith(SERVING_TAG)))
    decode = tuple(sorted((k.removeprefix(DECODE_TAG), v) for k, v in tags.items() if k.startswith(DECODE_TAG)))
    return f"{mv.name}/{mv.version}", str(tags.get("tuner.search_run", "")), knobs, decode


def _from_output_folder(folder: Path, target: str) -> Source:
    """A search's output folder: the model its recommended.yaml names, else the one its
    parent run's `tuner.registered_model` tag names."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    doc = yaml.safe_load((folder / "recommended.yaml").read_text()) or {}
    mlflow_doc = doc.get("mlflow") or {}
    tracking_uri = mlflow_doc.get("tracking_uri")
    parent = mlflow_doc.get("parent_run_id")
    if not tracking_uri or not parent:
        raise ConfigError(f"MODEL_URI {target}: its recommended.yaml has no `mlflow: tracking_uri / parent_run_id`")
    registered = str(doc.get("registered_model") or "")
    if not registered:
        try:
            tags = MlflowClient(tracking_uri).get_run(parent).data.tags
        except MlflowException as e:
            why = one_line(e)
            raise ConfigError(f"MODEL_URI {target}: its search run {parent} is not in {tracking_uri}: {why}") from None
        registered = tags.get("tuner.registered_model", "")
        if not registered:
            why = tags.get("tuner.model_export", "no `tuner.registered_model` tag")
            raise ConfigError(f"MODEL_URI {target}: that search registered no model ({why})")
    _, _, serving, decode = _pin_version(f"models:/{registered}", tracking_uri)
    return _source(f"models:/{registered}", tracking_uri, f"MODEL_URI {target}", registered, parent, serving, decode)


def _source(
    uri: str, tracking_uri: str, what: str, registered: str = "", search_run: str = "", serving: Tags = (),
    decode: Tags = (),
) -> Source:  # fmt: skip
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    try:
        location = _location(uri, tracking_uri)
        with tempfile.TemporaryDirectory(prefix="tuner-mlmodel-") as tmp:
            meta = Model.load(_mlmodel_file(location, tracking_uri, tmp))
    except (MlflowException, OSError) as e:
        raise ConfigError(f"{what}: cannot read the model's MLmodel file from {tracking_uri}: {one_line(e)}") from None
    config = dict((meta.flavors.get("python_function") or {}).get("config") or {})
    if "artifact" not in config or "variant" not in config:
        raise ConfigError(f"{what}: not a model tuner registered (its pyfunc config has no `artifact`)")
    shape = _input_shape(meta, config, what)
    return Source(uri, location, tracking_uri, config, shape, registered, search_run, serving, decode)


def _location(uri: str, tracking_uri: str) -> str:
    """Where the model's files are, asked of the store at `tracking_uri` (MLflow resolves a
    `models:/` URI through its process-wide registry URI otherwise)."""
    from mlflow.tracking import MlflowClient

    if not uri.startswith("models:/"):
        return uri  # runs:/ resolves through the tracking URI given with it; a folder is a folder
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    rest = uri.removeprefix("models:/")
    if rest.startswith("m-"):
        return str(client.get_logged_model(rest.split("/")[0]).artifact_location)
    name, version = rest.split("/", 1)
    return str(client.get_model_version_download_uri(name, version))


def _mlmodel_file(location: str, tracking_uri: str, tmp: str) -> str:
    if "://" not in location and not location.startswith("runs:/"):
        return str(Path(location) / "MLmodel")
    import mlflow.artifacts

    return mlflow.artifacts.download_artifacts(artifact_uri=f"{location.rstrip('/')}/MLmodel", dst_path=tmp,
                                               tracking_uri=tracking_uri)  # fmt: skip


def _input_shape(meta: Any, config: dict[str, Any], what: str) -> tuple[int, int, int]:
    """(C, H, W): from the loader config where registration wrote it, else the signature."""
    shape = config.get("input_shape")
    if shape is None and meta.signature is not None:
        spec = meta.signature.inputs.inputs[0]
        shape = list(getattr(spec, "shape", ()) or ())[1:]
    if not shape or len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ConfigError(f"{what}: the model does not say its input shape (C, H, W); got {shape}")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def for_serving(config: dict[str, Any], threads: int) -> dict[str, Any]:
    """The loader config's keys to change for a replica with `threads` threads
    (`mlflow.pyfunc.load_model(model_config=...)` replaces top-level keys). An AOTInductor
    package keeps the thread count it was compiled for.

    OpenVINO pins its inference threads to cores, counting from core 0 in every process: two
    replicas of one thread on a node both ran on core 0, at half speed each (measured on
    this 2-core box: 40 ms a call instead of 21). Replicas do not know which cores are
    theirs, so the operating system places their threads."""
    out: dict[str, Any] = {"threads": threads}
    if "session" in config:
        out["session"] = {**config["session"], "intra_op_num_threads": threads}
    if "compile" in config:
        out["compile"] = {**config["compile"], "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False}
    return out


def decode_for(source: Source, decode: str | None) -> tuple[str, str]:
    """`--decode` auto | fast | exact (None: auto) -> the path the service takes, and why."""
    from tuner.inputs.images import DECODES

    decode = decode or "auto"
    if decode not in DECODES:
        raise ConfigError(f"--decode {decode}: allowed: {', '.join(DECODES)}")
    if decode != "auto":
        return decode, f"--decode {decode}"
    d = dict(source.decode)
    if not d:
        return "exact", "the model carries no measured agreement of the fast decode (tuner.decode.* tags)"
    figures = f"{d.get('judged_by', '?')} agreement {d.get('agreement', '?')} on {d.get('images', '?')}"
    if d.get("fast") == "true":
        return "fast", f"{figures}, within the search's limit {d.get('limit', '?')}"
    return "exact", f"{figures}, outside the search's limit {d.get('limit', '?')}"


def spec_for(source: Source, **chosen: Any) -> ServeSpec:
    """The ServeSpec for this model: the pick's defaults (spec.py), under the serving search's
    choice (`source.serving`), under what was `chosen` (flags; None: the default). Threads
    default to the pick's; the decode path follows the registered agreement (`decode_for`)."""
    c = source.config
    chosen["decode"] = decode_for(source, chosen.get("decode"))[0]
    tuned = ServeSpec.from_knobs(dict(source.serving), f"{source.uri}'s {SERVING_TAG}* tags")
    given = {k: v for k, v in chosen.items() if v is not None}
    for flag, derived in DERIVED.items():  # a flag's own defaults follow it, not the tuned values
        if flag in given:
            for k in derived:
                tuned.pop(k, None)
    chosen = {**tuned, **given}
    fixed = {
        "model_uri": source.uri,
        "location": source.location,
        "tracking_uri": source.tracking_uri,
        "model": str(c["model"]),
        "weights": str(c.get("weights", "random")),
        "input_shape": source.input_shape,
        "artifact": str(c["artifact"]),
        "artifact_batch": int(c["batch_size"]),
        "label": str(c.get("label", "")),
    }
    if chosen.get("threads") is None:
        chosen["threads"] = int(c.get("threads", 1))
    return ServeSpec.for_model(fixed, c.get("confirmed_p50_ms"), **chosen)


def search_run_of(model_uri: str, tracking_uri: str) -> str:
    """The parent run of the search that registered `model_uri` ("" when none says so)."""
    try:
        return _pin_version(model_uri, tracking_uri)[1]
    except ConfigError:
        return ""

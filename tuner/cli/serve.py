"""`python -m tuner serve MODEL_URI [flags]`: the registered pick behind Ray Serve (tuner/serve/),
or with `--export DIR` the files that deploy it elsewhere."""

from __future__ import annotations

import argparse

from tuner.core.console import say
from tuner.core.env import measurement_env, quiet_logs, service_env
from tuner.core.errors import EXIT_OK
from tuner.tracking.store import default_tracking_uri


def run(args: argparse.Namespace) -> int:
    service_env()  # before Ray and MLflow are imported: both read these when imported
    measurement_env()  # replicas at nice 0, not Ray's 15 (docs/architecture.md §7)
    quiet_logs()
    from tuner.serve.source import decode_for, resolve, spec_for

    source = resolve(args.model_uri, args.tracking_uri or default_tracking_uri())
    spec = spec_for(
        source,
        replicas=args.replicas,
        threads=args.threads,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_timeout_s,
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests,
        max_body_mb=args.max_body_mb,
        max_rows=args.max_rows,
        top_k=args.top_k,
        route_prefix=args.route_prefix,
        ingress=args.ingress,
        decode=args.decode,
    )
    title = source.registered or source.uri
    say(f"images: {spec.decode} decode ({decode_for(source, args.decode)[1]})")
    if spec.artifact == "aoti" and spec.threads != int(source.config.get("threads", spec.threads)):
        say(f"note: the AOTInductor package was compiled for {source.config['threads']} thread(s); "
            f"--threads {spec.threads} sets only the CPUs Ray reserves for each replica")  # fmt: skip
    if args.export:
        from tuner.serve.export import export

        for path in export(spec, args.export, title, args.host, args.port):
            say(f"wrote {path}")
        return EXIT_OK
    from tuner.serve.service import serve_until_stopped

    return serve_until_stopped(spec, title, args.address, args.host, args.port)

"""``sparsepipe pipeline list|compile|run|submit``: the KFP pipelines of ``pipelines/`` from the command line.

- ``compile NAME --out FILE.yaml``: KFP v2 IR YAML with the Kubernetes platform spec (``pipelines.k8s``).
- ``run NAME --local [--param k=v]...``: runs every step here with ``kfp.local`` (``pipelines.local``).
- ``submit NAME --host URL [--experiment E] [--param k=v]... [--namespace NS]``: creates a run on a KFP API server
  (``pipelines.submit``) and prints its URL.

Every action takes ``--json``: one JSON object on the last stdout line.
"""

from __future__ import annotations

import json
import os
import sys

from sparse_core.errors import UserError

import pipelines
from pipelines.params import parse_params, pipeline_inputs
from pipelines.submit import DEFAULT_KFP_EXPERIMENT


def _k8s_settings(args):
    from pipelines.k8s import K8sSettings

    settings = K8sSettings.from_env()
    if getattr(args, "gpus", None) is not None:
        settings.gpus = args.gpus
    return settings


def _list(args) -> int:
    rows = {}
    for name in pipelines.PIPELINES:
        func = pipelines.build(name)
        rows[name] = {k: {"type": t, "default": d, "required": not has} for k, (t, d, has) in
                      pipeline_inputs(func).items()}
        if not args.json:
            print(f"{name}:")
            for k, v in rows[name].items():
                print(f"  {k:<16} {v['type']:<14} " + ("(required)" if v["required"] else f"= {v['default']!r}"))
    if args.json:
        print(json.dumps(rows))
    return 0


def _compile(args) -> int:
    k8s = None if args.no_k8s else _k8s_settings(args)
    path = pipelines.compile_pipeline(args.name, args.out, k8s)
    if args.json:
        print(json.dumps({"pipeline": args.name, "out": str(path), "kubernetes": k8s is not None,
                          "gpus": k8s.gpus if k8s is not None else None}))
    else:
        print(path)
    return 0


def print_summary(summary: dict) -> None:
    """The human form of a local run's summary: one row per step, then where to look."""
    rows = summary.get("steps") or []
    if rows:
        print(f"\n{'step':<18} {'status':<9} {'cache':<5} {'seconds':>8}  details")
        for r in rows:
            details = ", ".join(f"{k}={r[k]:.4g}" if isinstance(r[k], float) else f"{k}={r[k]}"
                                for k in ("map50", "sparsity", "images_per_s", "size_mb", "registered", "error")
                                if k in r)
            print(f"{r['step']:<18} {r['status']:<9} {r['cache']:<5} {r['seconds']:>8.1f}  {details}")
    print(f"\npipeline {summary['pipeline']}: {summary['status']} in {summary['wall_seconds']:.1f} s; "
          f"outputs under {summary['pipeline_root']}")
    if summary.get("parent_run_id"):
        from sparse_core.tracking.redaction import redact

        uri = redact(summary["mlflow_uri"])
        print(f"MLflow parent run {summary['parent_run_id']} in experiment {summary['experiment']!r} at {uri}")
        if not uri.startswith("http"):
            print(f"  browse: mlflow ui --backend-store-uri {uri}")
        registered = [r["registered"] for r in rows if r.get("registered")]
        if registered:
            print(f"  registered: {', '.join(registered)} (pull: sparsepipe models pull {registered[-1]} "
                  f"--out DIR --tracking-uri {uri})")


def _run(args) -> int:
    from pipelines.local import PipelineFailed, run_local

    if not args.local:
        raise UserError("pipeline run: only --local is supported here; use 'sparsepipe pipeline submit' for a cluster")
    params = parse_params(pipelines.build(args.name), args.param)
    if args.no_cache:
        params["cache_dir"] = "none"
    try:
        summary = run_local(args.name, params, pipeline_root=args.pipeline_root)
    except PipelineFailed as failed:
        if args.json:
            print(json.dumps(failed.summary, default=str))
        else:
            print_summary(failed.summary)
        print(f"sparsepipe pipeline: error: {args.name} failed: {failed}", file=sys.stderr)
        return 2 if failed.user else 1
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print_summary(summary)
    return 0


def _submit(args) -> int:
    from pipelines.submit import submit

    k8s = _k8s_settings(args)
    params = parse_params(pipelines.build(args.name, k8s), args.param)
    result = submit(args.name, args.host, params, experiment=args.experiment, namespace=args.namespace,
                    service_account=args.service_account, run_name=args.run_name, k8s=k8s)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"submitted {args.name}: run {result['run_id']}\n{result['url']}")
    return 0


def _json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object on the last stdout line")


def register(subparsers) -> None:
    p = subparsers.add_parser("pipeline", help="compile, run locally or submit the KFP pipelines")
    sub = p.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)

    ls = sub.add_parser("list", help="the pipelines and their parameters")
    _json_flag(ls)
    ls.set_defaults(func=_list)

    c = sub.add_parser("compile", help="write the KFP v2 IR YAML (with Kubernetes settings)")
    c.add_argument("name", help="pipeline name (see 'sparsepipe pipeline list')")
    c.add_argument("--out", required=True, help="output .yaml")
    c.add_argument("--gpus", type=int, default=None,
                   help="GPUs per training step (default $SPARSEPIPE_GPU_COUNT or 1; 0 = CPU-only cluster)")
    c.add_argument("--no-k8s", action="store_true", help="leave out the Kubernetes platform settings")
    _json_flag(c)
    c.set_defaults(func=_compile)

    r = sub.add_parser("run", help="run a pipeline in this environment (kfp.local SubprocessRunner)")
    r.add_argument("name", help="pipeline name")
    r.add_argument("--local", action="store_true", help="run locally (required)")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
    r.add_argument("--pipeline-root", default=None,
                   help="where step outputs go (default $SPARSEPIPE_HOME/kfp-local)")
    r.add_argument("--no-cache", action="store_true", help="recompute every step (cache_dir=none)")
    _json_flag(r)
    r.set_defaults(func=_run)

    s = sub.add_parser("submit", help="create a run on a Kubeflow Pipelines API server")
    s.add_argument("name", help="pipeline name")
    s.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8080")
    s.add_argument("--experiment", default=DEFAULT_KFP_EXPERIMENT, help="KFP experiment")
    s.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
    s.add_argument("--namespace", default=None, help="KFP namespace (multi-user installs)")
    s.add_argument("--service-account", default=os.environ.get("SPARSEPIPE_SERVICE_ACCOUNT", "sparsepipe-runner"),
                   help="service account of the step pods (default sparsepipe-runner)")
    s.add_argument("--run-name", default=None)
    s.add_argument("--gpus", type=int, default=None, help="GPUs per training step (0 = CPU-only cluster)")
    _json_flag(s)
    s.set_defaults(func=_submit)


if __name__ == "__main__":  # pragma: no cover
    from sparse_core.cli import main

    sys.exit(main(["pipeline", *sys.argv[1:]]))

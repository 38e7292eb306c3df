"""``sparsepipe pipeline list|compile|run|submit``: the KFP pipelines of ``pipelines/`` from the command line.

- ``compile NAME --out FILE.yaml``: KFP v2 IR YAML with the Kubernetes platform spec (``pipelines.k8s``).
- ``run NAME --local [--param k=v]...``: runs every step in this environment with ``kfp.local``'s SubprocessRunner
  (no Docker here). A parent MLflow run is opened first and always ended FINISHED/FAILED; a failing step's
  one-line cause is printed (exit 2 for bad input, 1 for any other failure).
- ``submit NAME --host URL [--experiment E] [--param k=v]... [--namespace NS]``: creates a run on a KFP API server
  with ``kfp.Client`` and prints its URL. A recipe given as a local file is sent inline (pods cannot read this
  machine's files); data and model must be reachable from the cluster (``s3://``, ``zoo:``, or a PVC path).

kfp is imported inside the functions only: ``sparse_core`` never imports it at module import time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sparse_core.atomic import atomic_file
from sparse_core.errors import UserError

HEALTH_PATH = "/apis/v2beta1/healthz"
DEFAULT_KFP_EXPERIMENT = "sparsepipe"


# ---------------------------------------------------------------------------------------------------- helpers


def _pipeline(name: str, k8s=None):
    _import_path()
    import pipelines

    if name not in pipelines.PIPELINES:
        raise UserError(f"pipeline {name!r}: unknown; expected one of {', '.join(pipelines.PIPELINES)}")
    return pipelines.build(name, k8s)


def _import_path() -> None:
    """``pipelines``/``components`` live next to ``sparse_core``: importable from an install or a checkout."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)


def _k8s_settings(args):
    _import_path()
    from pipelines.k8s import K8sSettings

    settings = K8sSettings.from_env()
    if getattr(args, "gpus", None) is not None:
        settings.gpus = args.gpus
    return settings


def pipeline_inputs(func) -> dict[str, tuple[str, object, bool]]:
    """name -> (IR parameter type, default, has_default) of a pipeline's parameters, from its compiled spec
    (``STRING``, ``NUMBER_INTEGER``, ``NUMBER_DOUBLE``, ``BOOLEAN``, ``LIST``, ``STRUCT``)."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    names = pipeline_spec_pb2.ParameterType.ParameterTypeEnum
    ir = func.pipeline_spec.root.input_definitions.parameters
    out = {}
    for name, spec in func.component_spec.inputs.items():  # declaration order, Python defaults
        out[name] = (names.Name(ir[name].parameter_type), spec.default,
                     spec.default is not None or bool(spec.optional))
    return out


def _convert(name: str, kind: str, value: str):
    try:
        if kind == "NUMBER_INTEGER":
            return int(value)
        if kind == "NUMBER_DOUBLE":
            return float(value)
        if kind == "BOOLEAN":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if kind in ("LIST", "STRUCT"):
            if kind == "LIST" and not value.strip().startswith("["):
                return [_scalar(v.strip()) for v in value.split(",") if v.strip()]
            parsed = json.loads(value)
            if not isinstance(parsed, list if kind == "LIST" else dict):
                raise ValueError(value)
            return parsed
    except (ValueError, json.JSONDecodeError):
        expected = {"NUMBER_INTEGER": "an integer", "NUMBER_DOUBLE": "a number", "BOOLEAN": "true or false",
                    "LIST": "a JSON list or comma-separated values", "STRUCT": "a JSON object"}
        raise UserError(f"--param {name}={value}: expected {expected.get(kind, kind.lower())}") from None
    return value


def _scalar(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_params(func, pairs: list[str]) -> dict:
    """``['k=v', ...]`` -> typed arguments for ``func``; unknown names and missing required ones are errors."""
    inputs = pipeline_inputs(func)
    params: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--param {pair!r}: expected NAME=VALUE")
        if key not in inputs:
            raise UserError(f"--param {key}: unknown parameter of {func.name}; expected one of "
                            f"{', '.join(sorted(inputs))}")
        params[key] = _convert(key, inputs[key][0], value)
    missing = [n for n, (_, _, has_default) in inputs.items() if not has_default and n not in params]
    if missing:
        raise UserError(f"pipeline {func.name}: missing --param {', --param '.join(f'{m}=...' for m in missing)}")
    return params


# ---------------------------------------------------------------------------------------------------- list


def _list(args) -> int:
    _import_path()
    import pipelines

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


# ---------------------------------------------------------------------------------------------------- compile


def compile_pipeline(name: str, out: str | os.PathLike, k8s=None) -> Path:
    """Compile pipeline ``name`` to KFP IR YAML at ``out`` (written to a temp file, then renamed)."""
    from kfp import compiler

    func = _pipeline(name, k8s)
    with atomic_file(out) as tmp:
        yaml_tmp = tmp.with_suffix(".yaml")  # the compiler picks the format from the suffix
        compiler.Compiler().compile(func, str(yaml_tmp))
        os.replace(yaml_tmp, tmp)
    return Path(out)


def _compile(args) -> int:
    path = compile_pipeline(args.name, args.out, None if args.no_k8s else _k8s_settings(args))
    print(path)
    return 0


# ---------------------------------------------------------------------------------------------------- run --local


def _first_error(folder: Path) -> dict | None:
    records = []
    for f in sorted(folder.glob("*.json")):
        try:
            records.append(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return records[0] if records else None


def run_local(name: str, params: dict, pipeline_root: str | os.PathLike | None = None,
              experiment: str | None = None) -> dict:
    """Run pipeline ``name`` with kfp.local (SubprocessRunner, this interpreter); returns a summary dict.

    The parent MLflow run (when a tracking URI is given or set) is opened before and ended after, FAILED on any
    failure, with the failing step's one-line cause as tag ``sparsepipe.error``. Raises ``PipelineFailed``.
    """
    from kfp import local

    from sparse_core import steps
    from sparse_core.tracking import Tracker, keys
    from sparse_core.tracking.connection import resolve_uri

    func = _pipeline(name)
    params = dict(params)
    mlflow_uri = resolve_uri(params.get("mlflow_uri") or None)
    experiment = params.get("experiment") or experiment or "sparsepipe"
    local_id = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    parent = Tracker.start(mlflow_uri, experiment=experiment, run_name=f"{name}-{local_id[6:]}",
                           tags={steps.TAG_KIND: "pipeline", steps.TAG_PIPELINE: name,
                                 keys.TAG_PIPELINE_RUN_ID: local_id})
    if parent.enabled:
        params.update(mlflow_uri=mlflow_uri, experiment=experiment, parent_run_id=parent.run_id)
        parent.log_params({k: v for k, v in params.items() if k not in ("parent_run_id",) and v not in ("", None)})
        parent.flush(timeout=30)
    root = Path(pipeline_root or Path(os.environ.get("SPARSEPIPE_HOME") or "~/.sparsepipe").expanduser()
                / "kfp-local").absolute()
    root.mkdir(parents=True, exist_ok=True)
    errors = Path(tempfile.mkdtemp(prefix="sparsepipe-step-errors-"))
    saved = os.environ.get(steps.ERRORS_ENV)
    os.environ[steps.ERRORS_ENV] = str(errors)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    t0 = time.perf_counter()
    failure = None
    import warnings

    # the runner warns for every task that our image name has no 'python' in it: true, and irrelevant here
    warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
    # and that Kubernetes-only settings (display names) do nothing locally
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
    try:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
        func(**params)
    except KeyboardInterrupt:
        failure = {"step": "", "error": "interrupted", "user": False}
    except Exception as err:  # noqa: BLE001 - kfp.local raises RuntimeError for a failed task
        failure = _first_error(errors) or {"step": "", "error": steps.one_line(err), "user": False}
    finally:
        if saved is None:
            os.environ.pop(steps.ERRORS_ENV, None)
        else:
            os.environ[steps.ERRORS_ENV] = saved
    wall = time.perf_counter() - t0
    cause = f"{failure['step']}: {failure['error']}" if failure and failure["step"] else (failure or {}).get("error")
    summary = {"pipeline": name, "status": "FAILED" if failure else "SUCCEEDED", "wall_seconds": round(wall, 3),
               "pipeline_root": str(root), "local_run_id": local_id, "parent_run_id": parent.run_id or "",
               "mlflow_uri": mlflow_uri or "", "experiment": experiment}
    if failure:
        summary["error"] = cause
    if parent.enabled:
        try:
            steps.close_parent_run(mlflow_uri, experiment, parent_run_id=parent.run_id,
                                   state="FAILED" if failure else "SUCCEEDED", error=cause or "")
        except UserError as err:
            summary["mlflow_warning"] = str(err)
        summary["steps"] = _step_summary(mlflow_uri, parent.run_id)
    import shutil

    shutil.rmtree(errors, ignore_errors=True)
    if failure:
        raise PipelineFailed(cause, summary, user=bool(failure.get("user")))
    return summary


class PipelineFailed(Exception):
    def __init__(self, cause: str, summary: dict, user: bool):
        super().__init__(cause)
        self.summary, self.user = summary, user


def _step_summary(mlflow_uri: str, parent_run_id: str) -> list[dict]:
    """One row per child run of the parent: step, status, cache hit/miss, seconds, registered version."""
    from sparse_core import steps
    from sparse_core.tracking.connection import connect, http_limits

    client = connect(mlflow_uri)
    with http_limits(retries=2, timeout=30):
        parent = client.get_run(parent_run_id)
        runs = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=500)
    rows = []
    for r in runs:
        t = r.data.tags
        row = {"step": t.get(steps.TAG_STEP, r.info.run_name), "run_id": r.info.run_id, "status": r.info.status,
               "cache": t.get(steps.TAG_CACHE, ""), "seconds": round(r.data.metrics.get("step_seconds", 0.0), 3)}
        for key in ("map50", "sparsity", "images_per_s", "size_mb"):
            if key in r.data.metrics:
                row[key] = r.data.metrics[key]
        if t.get("sparsepipe.registered"):
            row["registered"] = t["sparsepipe.registered"]
        if t.get(steps.TAG_ERROR):
            row["error"] = t[steps.TAG_ERROR]
        rows.append(row)
    return rows


def _print_summary(summary: dict) -> None:
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
    if not args.local:
        raise UserError("pipeline run: only --local is supported here; use 'sparsepipe pipeline submit' for a cluster")
    func = _pipeline(args.name)
    params = parse_params(func, args.param)
    if args.no_cache:
        params["cache_dir"] = "none"
    try:
        summary = run_local(args.name, params, pipeline_root=args.pipeline_root)
    except PipelineFailed as failed:
        if args.json:
            print(json.dumps(failed.summary, default=str))
        else:
            _print_summary(failed.summary)
        print(f"sparsepipe pipeline: error: {args.name} failed: {failed}", file=sys.stderr)
        return 2 if failed.user else 1
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        _print_summary(summary)
    return 0


# ---------------------------------------------------------------------------------------------------- submit


def _check_host(host: str, timeout: float = 10.0) -> None:
    """Fail fast with a clear message when the KFP API does not answer (kfp.Client would retry for minutes)."""
    import urllib.error
    import urllib.request

    if not host.startswith(("http://", "https://")):
        raise UserError(f"--host {host}: expected an http:// or https:// URL of the KFP API (e.g. "
                        "http://localhost:8080 after kubectl port-forward svc/ml-pipeline-ui 8080:80)")
    url = host.rstrip("/") + HEALTH_PATH
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return  # behind auth: the client brings its credentials; reachable is what we checked
        raise UserError(f"--host {host}: KFP API answered HTTP {err.code} at {HEALTH_PATH}; expected a Kubeflow "
                        "Pipelines v2 API server") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"--host {host}: KFP API not reachable ({reason}); check the URL, the port-forward or "
                        "the cluster") from None


def _inline_local_recipe(params: dict) -> dict:
    """A recipe given as a file on this machine travels as its text; local data/model paths get a warning."""
    recipe = params.get("recipe")
    if isinstance(recipe, str) and recipe and "\n" not in recipe and Path(recipe).is_file():
        params = {**params, "recipe": Path(recipe).read_text(encoding="utf-8")}
    for key in ("data", "model", "teacher"):
        value = params.get(key)
        if isinstance(value, str) and value and not value.startswith(("s3://", "zoo:")) and Path(value).exists():
            print(f"sparsepipe pipeline: note: {key}={value} is a path on this machine; the step pods must see it "
                  "too (a path on the data PVC), else use s3:// or a zoo: stub", file=sys.stderr)
    return params


def submit(name: str, host: str, params: dict, experiment: str = DEFAULT_KFP_EXPERIMENT,
           namespace: str | None = None, service_account: str | None = None, run_name: str | None = None,
           k8s=None) -> dict:
    """Compile with Kubernetes settings and create a run on the KFP API at ``host``; returns run id and URL."""
    _check_host(host)
    import kfp

    params = _inline_local_recipe(params)
    with tempfile.TemporaryDirectory(prefix="sparsepipe-submit-") as tmp:
        package = compile_pipeline(name, Path(tmp) / f"{name}.yaml", k8s)
        try:
            import warnings

            with warnings.catch_warnings():  # "only works with KFP v2.0.0-beta.2 and later": true, and noise
                warnings.simplefilter("ignore", FutureWarning)
                client = kfp.Client(host=host, namespace=namespace or "kubeflow")
            result = client.create_run_from_pipeline_package(
                str(package), arguments=params, run_name=run_name or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
                experiment_name=experiment, namespace=namespace, service_account=service_account,
                enable_caching=False)
        except Exception as err:  # noqa: BLE001 - ApiException, urllib3 errors: one line for the user
            raise UserError(f"--host {host}: submitting {name} failed: {_api_error(err)}") from None
    url = f"{host.rstrip('/')}/#/runs/details/{result.run_id}"
    return {"pipeline": name, "run_id": result.run_id, "url": url, "experiment": experiment}


def _api_error(err: Exception) -> str:
    status = getattr(err, "status", None)
    body = getattr(err, "body", None)
    if status:
        text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
        try:
            text = json.loads(text).get("message", text)
        except (ValueError, AttributeError):
            pass
        return f"HTTP {status}: {text.strip().splitlines()[0][:300] if text.strip() else getattr(err, 'reason', '')}"
    from sparse_core import steps

    return steps.one_line(err)[:300]


def _submit(args) -> int:
    k8s = _k8s_settings(args)
    func = _pipeline(args.name, k8s)
    params = parse_params(func, args.param)
    result = submit(args.name, args.host, params, experiment=args.experiment, namespace=args.namespace,
                    service_account=args.service_account, run_name=args.run_name, k8s=k8s)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"submitted {args.name}: run {result['run_id']}\n{result['url']}")
    return 0


# ---------------------------------------------------------------------------------------------------- parser


def register(subparsers) -> None:
    p = subparsers.add_parser("pipeline", help="compile, run locally or submit the KFP pipelines")
    sub = p.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)

    ls = sub.add_parser("list", help="the pipelines and their parameters")
    ls.add_argument("--json", action="store_true", help="one JSON object on the last stdout line")
    ls.set_defaults(func=_list)

    c = sub.add_parser("compile", help="write the KFP v2 IR YAML (with Kubernetes settings)")
    c.add_argument("name", help="pipeline name (see 'sparsepipe pipeline list')")
    c.add_argument("--out", required=True, help="output .yaml")
    c.add_argument("--gpus", type=int, default=None,
                   help="GPUs per training step (default $SPARSEPIPE_GPU_COUNT or 1; 0 = CPU-only cluster)")
    c.add_argument("--no-k8s", action="store_true", help="leave out the Kubernetes platform settings")
    c.set_defaults(func=_compile)

    r = sub.add_parser("run", help="run a pipeline in this environment (kfp.local SubprocessRunner)")
    r.add_argument("name", help="pipeline name")
    r.add_argument("--local", action="store_true", help="run locally (required)")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
    r.add_argument("--pipeline-root", default=None,
                   help="where step outputs go (default $SPARSEPIPE_HOME/kfp-local)")
    r.add_argument("--no-cache", action="store_true", help="recompute every step (cache_dir=none)")
    r.add_argument("--json", action="store_true", help="one JSON object on the last stdout line")
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
    s.add_argument("--json", action="store_true", help="one JSON object on the last stdout line")
    s.set_defaults(func=_submit)


if __name__ == "__main__":  # pragma: no cover
    from sparse_core.cli import main

    sys.exit(main(["pipeline", *sys.argv[1:]]))

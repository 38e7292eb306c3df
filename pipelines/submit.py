"""``sparsepipe pipeline submit``: compile with Kubernetes settings and create a run on a KFP API server.

A recipe given as a local file is sent inline (pods cannot read this machine's files); data and model must be
reachable from the cluster (``s3://``, ``zoo:``, or a PVC path).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

from sparse_core.errors import UserError

import pipelines

HEALTH_PATH = "/apis/v2beta1/healthz"
DEFAULT_KFP_EXPERIMENT = "sparsepipe"


def check_host(host: str, timeout: float = 10.0) -> None:
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
    check_host(host)
    import kfp

    params = _inline_local_recipe(params)
    with tempfile.TemporaryDirectory(prefix="sparsepipe-submit-") as tmp:
        package = pipelines.compile_pipeline(name, Path(tmp) / f"{name}.yaml", k8s)
        try:
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

"""``sparsepipe pipeline run --local``: every step in this environment with ``kfp.local``'s SubprocessRunner.

A parent MLflow run is opened first and always ended FINISHED/FAILED; a failing step's one-line cause (written by
the step into ``steps.ERRORS_ENV``'s folder) becomes the failure, with exit 2 for bad input, 1 for anything else.
Rerunning a killed, interrupted or failed run with the same parameters resumes it: the same local run id and
parent run (so each step keeps one child run), finished steps hit the step cache, and a training step continues
from its working folder (``sparse_core.step_work``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

from sparse_core.atomic import write_json
from sparse_core.errors import UserError

import pipelines


class PipelineFailed(Exception):
    def __init__(self, cause: str, summary: dict, user: bool):
        super().__init__(cause)
        self.summary, self.user = summary, user


def run_local(name: str, params: dict, pipeline_root: str | os.PathLike | None = None,
              experiment: str | None = None) -> dict:
    """Run pipeline ``name`` with kfp.local (SubprocessRunner, this interpreter); returns a summary dict.

    The parent MLflow run (when a tracking URI is given or set) is opened before and ended after, FAILED on any
    failure, with the failing step's one-line cause as tag ``sparsepipe.error``. Raises ``PipelineFailed``.
    """
    from sparse_core.tracking.connection import resolve_uri

    func = pipelines.build(name)
    params = dict(params)
    mlflow_uri = resolve_uri(params.get("mlflow_uri") or None)
    experiment = params.get("experiment") or experiment or "sparsepipe"
    root = Path(pipeline_root or Path(os.environ.get("SPARSEPIPE_HOME") or "~/.sparsepipe").expanduser()
                / "kfp-local").absolute()
    root.mkdir(parents=True, exist_ok=True)
    record = _run_record(root, name, params, mlflow_uri, experiment)
    earlier = _read_record(record)  # an interrupted run with these parameters: resumed, not started again
    local_id = earlier.get("local_run_id") or f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    parent = _open_parent(name, params, mlflow_uri, experiment, local_id, earlier.get("parent_run_id") or None)
    write_json(record, {"local_run_id": local_id, "parent_run_id": parent.run_id or "", "status": "RUNNING",
                        "attempts": int(earlier.get("attempts", 0)) + 1})
    t0 = time.perf_counter()
    failure = _execute(func, params, root)
    cause = f"{failure['step']}: {failure['error']}" if failure and failure["step"] else (failure or {}).get("error")
    summary = {"pipeline": name, "status": "FAILED" if failure else "SUCCEEDED",
               "wall_seconds": round(time.perf_counter() - t0, 3), "pipeline_root": str(root),
               "local_run_id": local_id, "parent_run_id": parent.run_id or "", "mlflow_uri": mlflow_uri or "",
               "experiment": experiment}
    if failure:
        summary["error"] = cause
    summary["attempts"] = int(earlier.get("attempts", 0)) + 1
    if parent.enabled:
        _close_parent(summary, failed=bool(failure), cause=cause or "")
    if failure:
        write_json(record, {**_read_record(record), "status": "FAILED"})
    else:
        record.unlink(missing_ok=True)  # done: the same parameters again make a new run (cached steps hit)
    if failure:
        raise PipelineFailed(cause, summary, user=bool(failure.get("user")))
    return summary


def _run_record(root: Path, name: str, params: dict, mlflow_uri: str | None, experiment: str) -> Path:
    """``ROOT/runs/<name>-<hash of the parameters>.json``: the local run id and parent run of a run with these
    parameters that has not succeeded yet (killed, interrupted or failed); a rerun resumes it."""
    import hashlib

    doc = {"name": name, "params": {k: v for k, v in params.items() if k != "parent_run_id"},
           "mlflow_uri": mlflow_uri or "", "experiment": experiment}
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return root / "runs" / f"{name}-{digest}.json"


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _open_parent(name: str, params: dict, mlflow_uri: str | None, experiment: str, local_id: str,
                 run_id: str | None = None):
    """Start (or, given ``run_id``, reopen) the parent run and point the steps at it (``params`` updated)."""
    from sparse_core import steps
    from sparse_core.tracking import Tracker, keys
    from sparse_core.tracking.step_run import clear_error

    tags = {steps.TAG_KIND: "pipeline", steps.TAG_PIPELINE: name, keys.TAG_PIPELINE_RUN_ID: local_id}
    try:
        parent = Tracker.start(mlflow_uri, experiment=experiment, run_name=f"{name}-{local_id[6:]}", run_id=run_id,
                               tags=tags)
    except UserError:  # the earlier parent run is gone (deleted): a new one
        if run_id is None:
            raise
        parent = Tracker.start(mlflow_uri, experiment=experiment, run_name=f"{name}-{local_id[6:]}", tags=tags)
    if run_id and parent.enabled and parent.run_id == run_id:
        clear_error(parent, run_id)
    if parent.enabled:
        params.update(mlflow_uri=mlflow_uri, experiment=experiment, parent_run_id=parent.run_id)
        parent.log_params({k: v for k, v in params.items() if k not in ("parent_run_id",) and v not in ("", None)})
        parent.flush(timeout=30)
    return parent


@contextmanager
def _error_folder():
    """A fresh folder the steps write their one-line failure records into (``steps.ERRORS_ENV``)."""
    from sparse_core import steps

    errors = Path(tempfile.mkdtemp(prefix="sparsepipe-step-errors-"))
    saved = os.environ.get(steps.ERRORS_ENV)
    os.environ[steps.ERRORS_ENV] = str(errors)
    try:
        yield errors
    finally:
        if saved is None:
            os.environ.pop(steps.ERRORS_ENV, None)
        else:
            os.environ[steps.ERRORS_ENV] = saved
        shutil.rmtree(errors, ignore_errors=True)


def _execute(func, params: dict, root: Path) -> dict | None:
    """Run the pipeline function under kfp.local; None on success, else the first failure record."""
    from kfp import local

    from sparse_core import steps

    os.environ.setdefault("YOLO_OFFLINE", "1")
    # the runner warns for every task that our image name has no 'python' in it: true, and irrelevant here
    warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
    # and that Kubernetes-only settings (display names) do nothing locally
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
    with _error_folder() as errors:
        try:
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
            func(**params)
        except KeyboardInterrupt:
            return {"step": "", "error": "interrupted", "user": False}
        except Exception as err:  # noqa: BLE001 - kfp.local raises RuntimeError for a failed task
            return _first_error(errors) or {"step": "", "error": steps.one_line(err), "user": False}
    return None


def _first_error(folder: Path) -> dict | None:
    records = []
    for f in sorted(folder.glob("*.json")):
        try:
            records.append(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return records[0] if records else None


def _close_parent(summary: dict, failed: bool, cause: str) -> None:
    from sparse_core import steps

    try:
        steps.close_parent_run(summary["mlflow_uri"], summary["experiment"], parent_run_id=summary["parent_run_id"],
                               state="FAILED" if failed else "SUCCEEDED", error=cause)
    except UserError as err:
        summary["mlflow_warning"] = str(err)
    summary["steps"] = step_summary(summary["mlflow_uri"], summary["parent_run_id"])
    summary["mlflow_ui"] = _ui_link(summary["mlflow_uri"], summary["parent_run_id"])


def _ui_link(mlflow_uri: str, parent_run_id: str) -> str:
    """The parent run's page in the MLflow UI (http servers only; '' for a file or sqlite store)."""
    from sparse_core.tracking.connection import connect
    from sparse_core.tracking.rollup import ui_url

    if not mlflow_uri.startswith(("http://", "https://")):
        return ""
    try:
        return ui_url(mlflow_uri, connect(mlflow_uri).get_run(parent_run_id).info.experiment_id, parent_run_id)
    except Exception:  # noqa: BLE001 - a link is a convenience
        return ""


def step_summary(mlflow_uri: str, parent_run_id: str) -> list[dict]:
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

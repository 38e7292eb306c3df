"""MLflow runs of pipeline steps: the parent run of a pipeline, one child run per step, and failure causes.

Every step runs inside ``step_run``: a child run under ``parent_run_id`` with the step's params, ``step_seconds``
and, when the body raises, status FAILED plus tag ``sparsepipe.error`` = the one-line cause. The cause is also
written to ``$SPARSEPIPE_STEP_ERRORS/<ns>-<step>.json`` when that variable is set (``pipeline run --local`` reads
it back, since the local runner's logs bury it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sparse_core.errors import UserError
from sparse_core.tracking import keys

ERRORS_ENV = "SPARSEPIPE_STEP_ERRORS"
TAG_STEP = "sparsepipe.step"
TAG_CACHE = "sparsepipe.cache"
TAG_CACHE_KEY = "sparsepipe.cache_key"
TAG_ERROR = "sparsepipe.error"
TAG_PIPELINE = "sparsepipe.pipeline"
TAG_KIND = "sparsepipe.run_kind"  # 'pipeline' on parent runs, 'step' on child runs
TAG_STEP_KEY = keys.TAG_STEP_KEY  # the same on every attempt of one step of one pipeline run (``step_key``)
TAG_ATTEMPTS = "sparsepipe.attempts"  # how many times the step started (child run; per step on the parent)


@dataclass(frozen=True)
class StepContext:
    """Where a step records and caches: the KFP parameters every component passes through unchanged."""

    mlflow_uri: str = ""  # empty: $MLFLOW_TRACKING_URI, or no tracking
    experiment: str = "sparsepipe"
    parent_run_id: str = ""  # the pipeline's run; the step's run is its child
    cache_dir: str = ""  # step cache folder; 'none' disables it
    step: str = ""  # the step's name in MLflow and the cache (default: the step function's name)

    def named(self, default: str) -> str:
        return self.step or default


def one_line(err: BaseException) -> str:
    """The cause a user needs: a UserError's own line, else ``Type: first line``."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, UserError):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def record_error(step: str, cause: str, user: bool) -> None:
    folder = os.environ.get(ERRORS_ENV)
    if not folder:
        return
    path = Path(folder) / f"{time.time_ns()}-{step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": step, "error": cause, "user": user}))
    os.replace(tmp, path)



def input_id(folder: str, *names: str) -> dict:
    """The identity of a step's input folder for ``step_key``: the sha256 of its first file among ``names`` ({}
    when none is there: the step itself reports a missing input)."""
    from sparse_core.tracking.lineage import file_sha256

    for name in names:
        path = Path(folder) / name
        if path.is_file():
            try:
                return {name: file_sha256(path)}
            except OSError:
                break
    return {}


def step_key(step: str, run_name: str, params: dict, inputs: dict | None = None) -> str:
    """What identifies one step of one pipeline run across its attempts: name, params and input identities
    (e.g. the sha256 of the model it reads), so the branches of a sweep that share a step name stay apart."""
    doc = {"step": step, "run_name": run_name, "params": params, "inputs": inputs or {}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def step_run(step: str, params: dict, ctx: "StepContext", run_name: str | None = None,
             inputs: dict | None = None) -> Iterator[Any]:
    """A child MLflow run for one step (a no-op tracker without a URI); FAILED + cause tag when the body raises.

    A retry of the step in the same pipeline run (same parent, same ``step_key``) reopens the child run the first
    attempt created instead of adding another; the child and the parent record the attempt count. SIGTERM (pod
    eviction) ends the run KILLED after a short flush (``sparse_core.preemption``).
    """
    from sparse_core import preemption

    with preemption.installed(), _step_run(step, params, ctx, run_name or step, inputs) as tracker:
        yield tracker


@contextlib.contextmanager
def _step_run(step: str, params: dict, ctx: "StepContext", run_name: str, inputs: dict | None) -> Iterator[Any]:
    from sparse_core import preemption

    mlflow_uri, experiment, parent_run_id = ctx.mlflow_uri, ctx.experiment, ctx.parent_run_id
    key = step_key(step, run_name, params, inputs)
    tracker = None
    try:
        from sparse_core.tracking import Tracker

        earlier = _earlier_attempt(mlflow_uri, parent_run_id, key)
        tracker = Tracker.start(mlflow_uri or None, experiment=experiment or "sparsepipe", run_name=run_name,
                                run_id=earlier[0] if earlier else None, parent_run_id=parent_run_id or None,
                                tags={TAG_STEP: step, TAG_KIND: "step", TAG_STEP_KEY: key})
        tracker.step_key = key  # read by register_model: the version it creates carries it
        if earlier:
            clear_error(tracker, tracker.run_id)  # this attempt's outcome replaces the earlier one's
            tracker.logged_points = logged_points(tracker)  # a cache hit re-logs nothing the earlier attempt did
        if tracker.enabled and parent_run_id:
            _inherit_parent_tags(tracker, parent_run_id)
            _count_attempt(tracker, parent_run_id, run_name, key, 1 + (earlier[1] if earlier else 0))
        tracker.log_params({k: v for k, v in params.items() if v not in (None, "")})
        t0 = time.perf_counter()
        yield tracker
        tracker.log_metrics({"step_seconds": time.perf_counter() - t0}, step=getattr(tracker, "attempt", 1) - 1)
        tracker.finish("FINISHED")
    except BaseException as err:
        cause = one_line(err)
        record_error(step, cause, isinstance(err, UserError))
        if tracker is not None:
            tracker.set_tags({TAG_ERROR: cause[:500]})
            stopped = isinstance(err, (KeyboardInterrupt, preemption.Preempted))
            tracker.finish("KILLED" if stopped else "FAILED",
                           timeout=preemption.FLUSH_SECONDS if isinstance(err, preemption.Preempted) else None)
        raise


def logged_points(tracker) -> set[tuple[str, int]]:
    """(metric, step) pairs the run already holds (a reopened run's earlier attempts)."""
    from sparse_core.tracking.connection import http_limits

    points: set[tuple[str, int]] = set()
    try:
        with http_limits(retries=1, timeout=15):
            for key in tracker.client.get_run(tracker.run_id).data.metrics:
                points |= {(key, int(m.step)) for m in tracker.client.get_metric_history(tracker.run_id, key)}
    except Exception:  # noqa: BLE001 - at worst a retry logs a point twice
        pass
    return points


def clear_error(tracker, run_id: str) -> None:
    """Drop an earlier attempt's ``sparsepipe.error`` tag from a reopened run."""
    from sparse_core.tracking.connection import http_limits

    try:
        with http_limits(retries=1, timeout=10):
            if TAG_ERROR in tracker.client.get_run(run_id).data.tags:
                tracker.client.delete_tag(run_id, TAG_ERROR)
    except Exception:  # noqa: BLE001 - a stale cause is cosmetic; the run status is what counts
        pass


def _earlier_attempt(mlflow_uri: str, parent_run_id: str, key: str) -> tuple[str, int] | None:
    """(run id, attempts so far) of this step's child run from an earlier attempt, or None."""
    if not parent_run_id:
        return None
    from sparse_core.tracking.connection import connect, http_limits, resolve_uri

    uri = resolve_uri(mlflow_uri or None)
    if not uri:
        return None
    client = connect(uri)
    with http_limits(retries=2, timeout=15):
        parent = client.get_run(parent_run_id)
        runs = client.search_runs([parent.info.experiment_id], max_results=1, order_by=["attributes.start_time ASC"],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                                                f"tags.`{TAG_STEP_KEY}` = '{key}'")
    if not runs:
        return None
    return runs[0].info.run_id, int(runs[0].data.tags.get(TAG_ATTEMPTS, "1") or 1)


def _count_attempt(tracker, parent_run_id: str, run_name: str, key: str, attempt: int) -> None:
    """Attempt number on the child run, and per step on the parent (``sparsepipe.attempts.<run name>.<key>``)."""
    tracker.set_tags({TAG_ATTEMPTS: str(attempt)})
    tracker.attempt = attempt
    from sparse_core.tracking.connection import http_limits

    try:
        with http_limits(retries=2, timeout=15):
            tracker.client.set_tag(parent_run_id, f"{TAG_ATTEMPTS}.{run_name}.{key[:8]}", str(attempt))
    except Exception:  # noqa: BLE001 - the count is a record; the child run carries it too
        pass


def _inherit_parent_tags(tracker, parent_run_id: str) -> None:
    """Copy the parent's pipeline identity onto the child (and into lineage, via the environment)."""
    from sparse_core.tracking import keys
    from sparse_core.tracking.connection import http_limits

    try:
        with http_limits(retries=1, timeout=10):
            tags = tracker.client.get_run(parent_run_id).data.tags
    except Exception:  # noqa: BLE001 - lineage is best effort; the child run itself is already linked
        return
    inherit = {k: v for k, v in tags.items() if k in (keys.TAG_PIPELINE_RUN_ID, TAG_PIPELINE)}
    tracker.set_tags(inherit)
    tracker.pipeline_run_id = inherit.get(keys.TAG_PIPELINE_RUN_ID)  # read by step_lineage


def step_lineage(tracker, **kwargs) -> dict:
    """``lineage_tags`` with the pipeline run id of the parent run (the pod's environment may not carry it)."""
    from sparse_core.tracking import keys, lineage_tags

    tags = lineage_tags(**kwargs)
    if getattr(tracker, "pipeline_run_id", None):
        tags[keys.TAG_PIPELINE_RUN_ID] = tracker.pipeline_run_id
    return tags


def log_outcome(tracker, hit: bool, key: str, metrics: dict | None = None, tags: dict | None = None,
                 history: list | None = None, artifacts: list | None = None) -> None:
    cache = {TAG_CACHE: "hit" if hit else "miss", TAG_CACHE_KEY: key} if key else {TAG_CACHE: "skip"}
    tracker.set_tags({**cache, **(tags or {})})
    last = 0
    for row in history or []:
        row = dict(row)
        last = max(last, int(row.pop("epoch", 0)))
        tracker.log_metrics(row, step=last)
    if metrics:  # at the last epoch's step, so the UI's "latest" value is the final one, not an epoch's
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                            step=last)
    for path in artifacts or []:
        if Path(path).exists():
            tracker.log_artifact(path)


def open_parent_run(mlflow_uri: str = "", experiment: str = "sparsepipe", pipeline: str = "",
                    pipeline_run_id: str = "", parent_run_id: str = "", params: dict | None = None) -> dict:
    """The pipeline's parent run: ``parent_run_id`` when given (the local CLI opened it), else a new run tagged with
    the KFP run id. Returns ``{'run_id'}`` ('' when tracking is off)."""
    from sparse_core.tracking import Tracker, keys

    tags = {TAG_KIND: "pipeline", TAG_PIPELINE: pipeline}
    if pipeline_run_id:
        tags[keys.TAG_PIPELINE_RUN_ID] = pipeline_run_id
    try:
        tracker = Tracker.start(mlflow_uri or None, experiment=experiment or "sparsepipe",
                                run_name=None if parent_run_id else f"{pipeline}-{pipeline_run_id[:8]}",
                                run_id=parent_run_id or None, tags=tags)
    except BaseException as err:
        record_error("open_run", one_line(err), isinstance(err, UserError))
        raise
    if not tracker.enabled:
        return {"run_id": ""}
    tracker.log_params({k: v for k, v in (params or {}).items() if v not in (None, "")})
    tracker.flush(timeout=30)
    return {"run_id": tracker.run_id}


def close_parent_run(mlflow_uri: str = "", experiment: str = "sparsepipe", pipeline_run_id: str = "",
                     parent_run_id: str = "", state: str = "SUCCEEDED", error: str = "") -> dict:
    """End the parent run FINISHED or FAILED from the pipeline's final state (KFP exit handler).

    The parent is ``parent_run_id``, else the run tagged with ``pipeline_run_id`` (an exit task cannot take another
    task's output, so it finds the run the way ``open_parent_run`` tagged it).
    """
    from sparse_core.tracking import keys
    from sparse_core.tracking.connection import connect, http_limits, resolve_uri

    uri = resolve_uri(mlflow_uri or None)
    if not uri:
        return {"run_id": "", "status": "untracked"}
    client = connect(uri)
    run_id = parent_run_id
    with http_limits(retries=3, timeout=30):
        if not run_id:
            exp = client.get_experiment_by_name(experiment or "sparsepipe")
            runs = client.search_runs([exp.experiment_id], filter_string=(
                f"tags.`{keys.TAG_PIPELINE_RUN_ID}` = '{pipeline_run_id}' and tags.`{TAG_KIND}` = 'pipeline'"),
                max_results=1) if exp else []
            if not runs:
                return {"run_id": "", "status": "not found"}
            run_id = runs[0].info.run_id
        failed = state.upper() not in ("SUCCEEDED", "SUCCESS", "FINISHED")
        status = "FAILED" if failed else "FINISHED"
        cause = ""
        if failed:
            cause = failed_step_cause(client, run_id) or error
            if cause:
                client.set_tag(run_id, TAG_ERROR, cause[:500])
        from sparse_core.tracking.rollup import roll_up

        roll_up(client, run_id)  # headline metrics + registered model, for the UI's compare view
        client.set_terminated(run_id, status=status)
    return {"run_id": run_id, "status": status, "error": cause}


def failed_step_cause(client, parent_run_id: str) -> str:
    """``step: cause`` of the first failed child run of a pipeline's parent run ('' if none recorded one)."""
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=200)
    for child in children:
        if child.info.status == "FAILED" and child.data.tags.get(TAG_ERROR):
            return f"{child.data.tags.get(TAG_STEP, child.info.run_name)}: {child.data.tags[TAG_ERROR]}"
    return ""

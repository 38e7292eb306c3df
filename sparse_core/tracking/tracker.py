"""One MLflow run, written so that a flaky tracking server never loses data and never stalls or kills training.

Everything logged (params, tags, metric points, artifacts) goes into an in-memory queue that is sent at once when
the server answers. While it does not, points stay queued, are mirrored to a JSONL spool file
(``$SPARSEPIPE_MLFLOW_SPOOL`` or ``$SPARSEPIPE_HOME/mlflow-spool``, default ``~/.sparsepipe/mlflow-spool``) and are
re-sent every few seconds; ``finish`` waits a bounded time for the server before ending the run. Points keep their
original timestamps, and MLflow drops exact duplicates, so a re-send after a lost reply cannot double-count.
Resuming a run (``Tracker.start(run_id=...)``) re-queues whatever its spool still holds.

The tracker uses its own ``MlflowClient``, never MLflow's global "active run", so nothing else in the process
(Ultralytics' callback, a library calling ``mlflow.end_run``) can end or hijack it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sparse_core.errors import UserError
from sparse_core.tracking.connection import connect, http_limits, is_transient, resolve_uri
from sparse_core.tracking.keys import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from sparse_core.tracking.redaction import redact, redact_value

log = logging.getLogger("sparsepipe.tracking")

FLUSH_TIMEOUT_ENV = "SPARSEPIPE_MLFLOW_FLUSH_TIMEOUT"  # seconds finish() waits for a down server (default 120)
SPOOL_ENV = "SPARSEPIPE_MLFLOW_SPOOL"
RETRY_INTERVAL = 3.0  # seconds before the first re-send while the server is down; doubles up to MAX_RETRY_INTERVAL
MAX_RETRY_INTERVAL = 60.0  # a hung (not refusing) server costs one request timeout per attempt: keep attempts rare
MAX_KEY = 250  # MLflow limits (mlflow.utils.validation)
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
_TEXT_SUFFIXES = {".yaml", ".yml", ".json", ".jsonl", ".txt", ".csv", ".md", ".log", ".cfg", ".ini", ".toml", ".py"}
_MAX_REDACT_BYTES = 20 << 20


def spool_root() -> Path:
    """Where unsent items and upload copies wait; falls back to the temp dir if the home one is not writable
    (read-only HOME in a container)."""
    if os.environ.get(SPOOL_ENV):
        root = Path(os.environ[SPOOL_ENV])
    else:
        root = Path(os.environ.get("SPARSEPIPE_HOME") or "~/.sparsepipe").expanduser() / "mlflow-spool"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    root = Path(tempfile.gettempdir()) / "sparsepipe-mlflow-spool"
    root.mkdir(parents=True, exist_ok=True)
    return root


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{'prune': {'final_sparsity': 0.8}}`` -> ``{'prune.final_sparsity': 0.8}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def metric_key(name: str) -> str:
    """An MLflow-valid metric/param name: Ultralytics' ``metrics/mAP50(B)`` becomes ``metrics/mAP50B``."""
    name = re.sub(r"[()\[\]]", "", str(name))
    return re.sub(r"[^\w./\- :]", "_", name)[:MAX_KEY]


def _as_float(value) -> float:
    if hasattr(value, "item"):  # torch / numpy scalars
        value = value.item()
    return float(value)


def stage_for_upload(src: Path, dest: Path) -> None:
    """Copy a file or folder for upload, replacing secrets in text files (binaries are copied unchanged)."""
    if src.is_dir():
        shutil.copytree(src, dest)
        files = [p for p in dest.rglob("*") if p.is_file()]
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        files = [dest]
    for f in files:
        if f.suffix.lower() in _TEXT_SUFFIXES and f.stat().st_size <= _MAX_REDACT_BYTES:
            text = f.read_text(errors="surrogateescape")
            clean = redact(text)
            if clean != text:
                f.write_text(clean, errors="surrogateescape")


def ensure_experiment(client, name: str) -> str:
    """The experiment's id, created (or restored) as needed, marked as a model-training experiment."""
    from mlflow.exceptions import MlflowException

    for _ in range(3):  # concurrent starts race to create the experiment
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                log.warning("MLflow experiment %r was deleted; restoring it", name)
                client.restore_experiment(exp.experiment_id)
            if EXPERIMENT_KIND_TAG not in exp.tags:  # made before sparsepipe set it; a user's choice is kept
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    raise UserError(f"MLflow experiment {name!r}: could not be created or found")


class Tracker:
    """A run in MLflow, or a no-op with the same methods when no tracking URI is configured (``enabled`` False)."""

    def __init__(self, client=None, run_id: str | None = None, uri: str | None = None):
        self.client = client
        self.run_id = run_id
        self.uri = uri
        self.enabled = client is not None and run_id is not None
        self._lock = threading.RLock()
        self._params: dict[str, str] = {}  # queued
        self._sent_params: dict[str, str] = {}  # accepted by the server (params are write-once in MLflow)
        self.logged_points: set[tuple[str, int]] = set()  # (key, step) an earlier attempt logged: not sent twice
        self._tags: dict[str, str] = {}
        self._metrics: list = []  # mlflow.entities.Metric
        self._artifacts: list[tuple[str, str | None]] = []  # (staged local path, artifact_path)
        self._retry_at = 0.0
        self._failures = 0  # consecutive failed sends
        self._down = False
        self._finished = False

    # ---- start ---------------------------------------------------------------------------------------------
    @classmethod
    def start(cls, uri: str | None, experiment: str = "sparsepipe", run_name: str | None = None,
              run_id: str | None = None, parent_run_id: str | None = None, tags: dict | None = None) -> "Tracker":
        """Create (or resume, given ``run_id``) a run; a disabled tracker when no URI is given or set.

        An unreachable server is a UserError after a bounded wait (see ``connect``), never a hang.
        """
        uri = resolve_uri(uri)
        if not uri:
            return cls()
        from mlflow.exceptions import MlflowException

        client = connect(uri)
        try:
            with http_limits(retries=1, timeout=10):
                if run_id:
                    run = client.get_run(run_id)
                    if run.info.status != "RUNNING":
                        client.update_run(run_id, status="RUNNING")
                else:
                    exp_id = ensure_experiment(client, experiment)
                    run_tags = {"mlflow.source.name": "sparsepipe", "mlflow.source.type": "LOCAL"}
                    if parent_run_id:
                        run_tags["mlflow.parentRunId"] = parent_run_id
                    run_tags.update({k: v for k, v in cls._clean_tags(tags or {}).items()})
                    run = client.create_run(exp_id, run_name=redact(run_name) if run_name else None, tags=run_tags)
        except MlflowException as err:
            what = f"run {run_id}" if run_id else f"experiment {experiment!r}"
            raise UserError(f"MLflow {redact(uri)}: {what}: {redact(str(err))[:300]}") from None
        tracker = cls(client, run.info.run_id, uri)
        tracker._sent_params = dict(run.data.params)
        if run_id:
            tracker._load_spool()
            if tags:
                tracker.set_tags(tags)
        log.info("MLflow run %s at %s", tracker.run_id, redact(uri))
        return tracker

    # ---- logging -------------------------------------------------------------------------------------------
    @staticmethod
    def _clean_tags(tags: dict) -> dict[str, str]:
        return {str(k)[:MAX_KEY]: redact_value(str(k), str(v))[:MAX_TAG_VALUE] for k, v in tags.items()}

    def log_params(self, params: dict) -> None:
        """Log params: nested dicts flattened with dots, values stringified, truncated, secrets masked.

        MLflow params are write-once; a key already logged with another value keeps its first value (warning).
        """
        if not self.enabled:
            return
        with self._lock:
            for key, value in flatten(params).items():
                key = metric_key(key)
                value = redact_value(key, str(value))[:MAX_PARAM_VALUE]
                old = self._sent_params.get(key, self._params.get(key))
                if old is None:
                    self._params[key] = value
                elif old != value:
                    log.warning("MLflow param %s already logged as %r; keeping it (not %r)", key, old[:80],
                                value[:80])
            self._send()

    def set_tags(self, tags: dict) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._tags.update(self._clean_tags(tags))
            self._send()

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        """Log one point per key at ``step``; queued (and spooled) while the server is unreachable."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = []
        for key, value in flatten(metrics).items():
            try:
                value = _as_float(value)
            except (TypeError, ValueError):
                log.warning("MLflow metric %s=%r is not a number; skipped", key, value)
                continue
            if math.isinf(value):
                value = math.copysign(1.7976931348623157e308, value)
            if (metric_key(key), int(step or 0)) not in self.logged_points:
                points.append(Metric(metric_key(key), value, now, int(step or 0)))
        with self._lock:
            self._metrics.extend(points)
            if self._down:
                self._spool_append([self._metric_record(m) for m in points])
            self._send()

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        """Upload a file or a folder (as ``artifact_path/<name>``); text files have secrets masked first."""
        if not self.enabled:
            return
        src = Path(path)
        if not src.exists():
            raise UserError(f"{src}: artifact not found")
        staged = self._staging_dir() / src.name
        stage_for_upload(src, staged)
        self._queue_artifact(staged, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if not self.enabled:
            return
        staged = self._staging_dir() / Path(artifact_file).name
        staged.write_text(redact(text))
        self._queue_artifact(staged, str(Path(artifact_file).parent) if Path(artifact_file).parent.parts else None)

    def log_dict(self, d: dict, artifact_file: str) -> None:
        """Write ``d`` as YAML (``.yaml``/``.yml``) or JSON and log it as ``artifact_file``."""
        if not self.enabled:
            return
        if Path(artifact_file).suffix.lower() in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(d, sort_keys=False)
        else:
            text = json.dumps(d, indent=2, default=str)
        self.log_text(text, artifact_file)

    def _queue_artifact(self, staged: Path, artifact_path: str | None) -> None:
        with self._lock:
            self._artifacts.append((str(staged), artifact_path))
            if self._down:
                self._spool_append([{"type": "artifact", "path": str(staged), "artifact_path": artifact_path}])
            self._send()

    # ---- sending, buffering --------------------------------------------------------------------------------
    def pending(self) -> int:
        """Number of queued items not yet accepted by the server."""
        return len(self._params) + len(self._tags) + len(self._metrics) + len(self._artifacts)

    def flush(self, timeout: float = 0.0) -> bool:
        """Send everything queued, retrying for up to ``timeout`` seconds; True when nothing is left."""
        if not self.enabled:
            return True
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if self._send(force=True):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                time.sleep(min(RETRY_INTERVAL, left))

    def _send(self, force: bool = False) -> bool:
        if not self.pending():
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        from mlflow.entities import Param, RunTag

        try:
            with http_limits(retries=0, timeout=10):
                while self._params:
                    chunk = dict(list(self._params.items())[:100])
                    self._batch(params=[Param(k, v) for k, v in chunk.items()])
                    for k in chunk:
                        self._sent_params[k] = self._params.pop(k)
                while self._tags:
                    chunk = dict(list(self._tags.items())[:100])
                    self._batch(tags=[RunTag(k, v) for k, v in chunk.items()])
                    for k in chunk:
                        del self._tags[k]
                while self._metrics:
                    chunk = self._metrics[:1000]
                    self._batch(metrics=chunk)
                    del self._metrics[:len(chunk)]
            with http_limits(retries=0, timeout=120):
                while self._artifacts:
                    staged, artifact_path = self._artifacts[0]
                    p = Path(staged)
                    if p.exists():  # a folder lands as artifact_path/<folder name>
                        self.client.log_artifact(self.run_id, staged, artifact_path=artifact_path)
                    else:
                        log.warning("MLflow artifact %s vanished before upload; skipped", staged)
                    self._artifacts.pop(0)
                    shutil.rmtree(p.parent, ignore_errors=True)
        except Exception as err:  # noqa: BLE001 - the server being down must not stop training
            self._failures += 1
            self._retry_at = time.monotonic() + min(MAX_RETRY_INTERVAL, RETRY_INTERVAL * 2 ** (self._failures - 1))
            if not self._down:
                log.warning("MLflow server %s not answering (%s); buffering %d items in %s and retrying",
                            redact(self.uri or ""), redact(str(err)).splitlines()[0][:160], self.pending(),
                            self._spool_file())
            self._down = True
            try:
                self._write_spool()
            except OSError as spool_err:  # full disk: the queue in memory still holds everything
                log.warning("MLflow spool %s not written: %s", self._spool_file(), spool_err)
            return False
        if self._down:
            log.warning("MLflow server %s is back; buffered items sent", redact(self.uri or ""))
            self._down = False
        self._failures = 0
        self._spool_file().unlink(missing_ok=True)
        return True

    def _batch(self, **kwargs) -> None:
        """log_batch; a 4xx (bad value, not an outage) drops that chunk with a warning instead of retrying forever."""
        try:
            self.client.log_batch(self.run_id, **kwargs)
        except Exception as err:
            if is_transient(err):
                raise
            what = ", ".join(f"{len(v)} {k}" for k, v in kwargs.items())
            log.warning("MLflow rejected %s for run %s: %s", what, self.run_id, redact(str(err))[:300])

    # ---- spool file ----------------------------------------------------------------------------------------
    def _spool_file(self) -> Path:
        return spool_root() / f"{self.run_id}.jsonl"

    def _staging_dir(self) -> Path:
        d = spool_root() / self.run_id / uuid.uuid4().hex
        d.mkdir(parents=True, exist_ok=True)
        return d

    @staticmethod
    def _metric_record(m) -> dict:
        return {"type": "metric", "key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}

    def _records(self) -> list[dict]:
        recs = [{"type": "param", "key": k, "value": v} for k, v in self._params.items()]
        recs += [{"type": "tag", "key": k, "value": v} for k, v in self._tags.items()]
        recs += [self._metric_record(m) for m in self._metrics]
        recs += [{"type": "artifact", "path": p, "artifact_path": a} for p, a in self._artifacts]
        return recs

    def _write_spool(self) -> None:
        path = self._spool_file()
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self._records()))
        os.replace(tmp, path)

    def _spool_append(self, records: list[dict]) -> None:
        try:
            with open(self._spool_file(), "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
        except OSError as err:  # the in-memory queue is the source of truth; the spool is for crashes
            log.warning("MLflow spool %s not written: %s", self._spool_file(), err)

    def _load_spool(self) -> None:
        """Re-queue what an earlier process left unsent for this run (duplicates are dropped by MLflow)."""
        from mlflow.entities import Metric

        path = self._spool_file()
        if not path.exists():
            return
        n = 0
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash
            n += 1
            if r["type"] == "metric":
                self._metrics.append(Metric(r["key"], r["value"], r["timestamp"], r["step"]))
            elif r["type"] == "param" and r["key"] not in self._sent_params:
                self._params[r["key"]] = r["value"]
            elif r["type"] == "tag":
                self._tags[r["key"]] = r["value"]
            elif r["type"] == "artifact" and (r["path"], r["artifact_path"]) not in self._artifacts:
                self._artifacts.append((r["path"], r["artifact_path"]))
        log.info("MLflow run %s: re-sending %d spooled items from %s", self.run_id, n, path)
        with self._lock:
            self._send(force=True)

    # ---- end -----------------------------------------------------------------------------------------------
    def finish(self, status: str = "FINISHED", timeout: float | None = None) -> None:
        """Send what is queued (waiting up to ``timeout`` s, default $SPARSEPIPE_MLFLOW_FLUSH_TIMEOUT or 120), then
        end the run.

        If the server stays away, the run is left as is, with its data in the spool file; resuming the run
        (``Tracker.start(uri, run_id=...)``) sends it. Never raises: losing the tracker must not fail the job.
        """
        if not self.enabled or self._finished:
            return
        self._finished = True
        timeout = float(os.environ.get(FLUSH_TIMEOUT_ENV, 120)) if timeout is None else timeout
        if not self.flush(timeout=timeout):
            log.warning("MLflow server %s still unreachable after %.0f s: %d items of run %s kept in %s",
                        redact(self.uri or ""), timeout, self.pending(), self.run_id, self._spool_file())
            return
        try:
            with http_limits(retries=2, timeout=15):
                self.client.set_terminated(self.run_id, status=status)
        except Exception as err:  # noqa: BLE001
            log.warning("MLflow run %s could not be marked %s: %s", self.run_id, status, redact(str(err))[:200])
        shutil.rmtree(spool_root() / self.run_id, ignore_errors=True)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish("FINISHED")
        else:
            self.finish("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

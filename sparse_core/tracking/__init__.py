"""MLflow tracking for sparsepipe: runs (``Tracker``), lineage tags, secret redaction, model registry.

``Tracker.start(uri)`` is a no-op tracker when neither ``--mlflow URI`` nor ``MLFLOW_TRACKING_URI`` is set, so
callers never branch on whether tracking is on. Registry helpers live in ``sparse_core.tracking.registry``.
"""

from sparse_core.tracking.keys import LINEAGE_TAG_KEYS, METRIC_KEYS, METRICS
from sparse_core.tracking.lineage import git_commit, lineage_tags, recipe_sha256
from sparse_core.tracking.redaction import redact
from sparse_core.tracking.tracker import Tracker
from sparse_core.tracking.ultralytics_mlflow import disable_ultralytics_mlflow

__all__ = ["Tracker", "lineage_tags", "redact", "disable_ultralytics_mlflow", "METRIC_KEYS", "METRICS",
           "LINEAGE_TAG_KEYS", "git_commit", "recipe_sha256"]

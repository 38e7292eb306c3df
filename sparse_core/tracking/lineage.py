"""Lineage tags: which recipe, which sparsepipe code, which data, which base model, which pipeline run.

Set on training runs and copied onto registered model versions, so a deployed model can be traced back.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path

from sparse_core.tracking import keys
from sparse_core.tracking.redaction import redact

_PKG_DIR = Path(__file__).resolve().parents[1]  # sparse_core/


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recipe_sha256(recipe) -> str:
    """sha256 of a recipe given as a file path, its text/bytes, or a dict (canonical JSON)."""
    if isinstance(recipe, Path) or (isinstance(recipe, str) and "\n" not in recipe and len(recipe) < 4096
                                    and Path(recipe).is_file()):
        return file_sha256(recipe)
    if isinstance(recipe, bytes):
        return sha256_bytes(recipe)
    if isinstance(recipe, dict):
        return sha256_bytes(json.dumps(recipe, sort_keys=True, default=str).encode())
    return sha256_bytes(str(recipe).encode())


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Commit of the sparsepipe checkout this code runs from (``+dirty`` if modified), else ``v<package version>``.

    Only trusted when the package's own files are tracked by that repository, so an install inside some other
    repository does not report that repository's commit.
    """
    from sparse_core import __version__

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(_PKG_DIR), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"v{__version__}"


def pipeline_run_id() -> str | None:
    """The KFP run this step belongs to, when inside a pipeline (KFP_RUN_ID or SPARSEPIPE_PIPELINE_RUN_ID)."""
    return os.environ.get("KFP_RUN_ID") or os.environ.get("SPARSEPIPE_PIPELINE_RUN_ID") or None


def lineage_tags(recipe=None, data_hash=None, base=None) -> dict:
    """Tags tracing a model to its recipe (sha256), code (git commit / version), data, base model, pipeline run."""
    from sparse_core import __version__

    tags = {keys.TAG_GIT_COMMIT: git_commit(), keys.TAG_VERSION: __version__}
    if recipe is not None:
        tags[keys.TAG_RECIPE_SHA256] = recipe_sha256(recipe)
    if data_hash:
        tags[keys.TAG_DATA_HASH] = str(data_hash)
    if base:
        tags[keys.TAG_BASE] = redact(str(base))
    if run_id := pipeline_run_id():
        tags[keys.TAG_PIPELINE_RUN_ID] = run_id
    return tags

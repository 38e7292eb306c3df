"""Content-addressed cache of pipeline step outputs, so an unchanged step is not recomputed.

Why not KFP's own cache: KFP keys a task on its literal inputs. Those include the MLflow parent run id (new every
pipeline run, so nothing would ever hit) and, for a path or ``s3://`` parameter, only the string, not the content
(a changed data set behind the same path would hit a stale entry). Here each step builds its key from content:
checkpoint sha256, data set content hash, resolved recipe sha256, and every setting that changes the result.

Layout: ``ROOT/<step>/<key>/{result.json, out/}``. An entry is written to a temp folder and renamed into place, so a
crash never leaves a half entry, and concurrent writers of the same key keep the first complete one. A hit copies
``out/`` to the step's output path (hard links where the file system allows; entries are never modified).

ROOT: the ``cache_dir`` argument, else ``$SPARSEPIPE_STEP_CACHE``, else ``$SPARSEPIPE_HOME/step-cache``, else
``~/.sparsepipe/step-cache``; ``none`` / ``off`` disables caching. On Kubernetes it lives on the data PVC.
Entries are keyed on the sparsepipe version, not the git commit: a developer changing step code in place should
pass ``cache_dir=none`` (``--no-cache``) or clear the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from sparse_core import __version__

SCHEMA = 1  # bump when the layout or the meaning of a key changes
DISABLED = ("none", "off", "false", "0")


def cache_root(cache_dir: str | None = None) -> Path | None:
    """The cache folder, or None when caching is disabled."""
    value = cache_dir or os.environ.get("SPARSEPIPE_STEP_CACHE") or ""
    if value.strip().lower() in DISABLED:
        return None
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("SPARSEPIPE_HOME") or "~/.sparsepipe").expanduser() / "step-cache"


def cache_key(step: str, parts: dict[str, Any]) -> str:
    """sha256 of the step name, the cache schema, the sparsepipe version and ``parts`` (canonical JSON)."""
    doc = {"step": step, "schema": SCHEMA, "version": __version__, "parts": parts}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Put ``src`` at ``dst`` (replacing a file there): a hard link where the file system allows, else a copy."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking files when possible (same file system), else copying them."""
    shutil.copytree(src, dst, copy_function=link_or_copy, dirs_exist_ok=True)


def cached(step: str, parts: dict[str, Any], out: str | os.PathLike, compute: Callable[[Path], dict],
           cache_dir: str | None = None) -> tuple[dict, bool, str]:
    """Run ``compute(out) -> result`` unless an entry for ``(step, parts)`` exists; returns (result, hit, key).

    ``compute`` writes its files under ``out`` and returns a JSON-serialisable result that names files relative to
    ``out`` (never absolute paths), so a result restored elsewhere stays true.
    """
    out = Path(out)
    key = cache_key(step, parts)
    root = cache_root(cache_dir)
    entry = root / step / key if root else None
    if entry is not None and (entry / "result.json").is_file():
        try:
            result = json.loads((entry / "result.json").read_text())
        except (OSError, json.JSONDecodeError):
            result = None  # unreadable entry: recompute and replace it
        if result is not None:
            out.mkdir(parents=True, exist_ok=True)
            if (entry / "out").is_dir():
                _copy_tree(entry / "out", out)
            return result, True, key
    out.mkdir(parents=True, exist_ok=True)
    result = compute(out)
    if entry is not None:
        _store(entry, out, result)
    return result, False, key


def _store(entry: Path, out: Path, result: dict) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name[:12]}.", dir=entry.parent))
    try:
        _copy_tree(out, tmp / "out")
        (tmp / "result.json").write_text(json.dumps(result, indent=2, default=str))
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)  # an unreadable entry being replaced
        os.replace(tmp, entry)
    except OSError:
        pass  # another writer got there first (or the disk is full): the result is still valid, just not cached
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

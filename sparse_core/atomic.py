"""Atomic outputs: build a folder or file under a hidden temp name next to it, then rename it into place.

A crash or a validation error leaves nothing at the destination (only, at worst, a hidden ``.name.tmp-*`` folder
that the ``finally`` removes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sparse_core.errors import UserError


@contextmanager
def atomic_dir(out: str | os.PathLike, replace_if=None) -> Iterator[Path]:
    """Yield a temp folder next to ``out``; on success rename it to ``out``.

    ``out`` must not exist or be an empty folder; ``replace_if(out) -> bool`` may allow replacing an existing
    folder (e.g. an earlier output of the same command).
    """
    out = Path(out).absolute()
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif not (replace_if and out.is_dir() and replace_if(out)):
            raise UserError(f"{out}: output already exists and is not empty; expected a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():  # replace_if allowed it: move the old one aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file path next to ``path``; on success rename it to ``path`` (a crash leaves no partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, obj) -> None:
    """``obj`` as indented JSON at ``path``, written whole or not at all."""
    import json

    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")

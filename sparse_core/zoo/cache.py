"""Local cache of zoo files, keyed by sha256: ``$SPARSEPIPE_CACHE/zoo/blobs/<sha256>``.

A file enters the cache only after its sha256 and size match the manifest, and every cache hit is hashed again.
It lands by ``os.replace`` from a temp file in the same folder, so concurrent fetches of the same stub are safe
without locks: each one either finds the finished blob or writes an identical one. Fetched entries are assembled
(hard links to the blobs) into ``zoo/entries/<stub path>/<manifest sha256[:16]>/`` the same way: built in a temp folder, renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from sparse_core.atomic import atomic_file
from sparse_core.errors import UserError


def cache_root() -> Path:
    return Path(os.environ.get("SPARSEPIPE_CACHE") or Path.home() / ".cache" / "sparsepipe") / "zoo"


def _sha256_file(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def blob(store, key: str, sha256: str, size: int, label: str) -> Path:
    """The verified local copy of ``key`` (downloaded once); a mismatch is refused and nothing is cached."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):  # it names the cache file: never a path
        raise UserError(f"{label}: sha256 {sha256[:80]!r} for {key}; expected 64 lowercase hex digits")
    dest = cache_root() / "blobs" / sha256
    if dest.is_file() and _sha256_file(dest) == (sha256, size):  # every hit re-hashed: a cache is not a proof
        return dest
    with atomic_file(dest) as tmp:  # renamed into the cache only once verified
        with open(tmp, "wb") as f:
            store.download(key, f)
        got, got_size = _sha256_file(tmp)
        if got != sha256 or got_size != size:
            raise UserError(f"{label}: sha256 mismatch for {store.uri}/{key}: expected sha256 {sha256} ({size} "
                            f"bytes), got sha256 {got} ({got_size} bytes); refusing the tampered or corrupted "
                            "object")
    return dest


def unpacked(packed: Path, sha256: str, size: int, label: str) -> Path:
    """The xz-decompressed copy of a verified blob, cached like a blob under its own (manifest) sha256 and checked
    against it; decompression stops past ``size`` bytes, so a decompression bomb is refused, not written out."""
    import lzma

    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise UserError(f"{label}: unpacked sha256 {sha256[:80]!r}; expected 64 lowercase hex digits")
    dest = cache_root() / "blobs" / sha256
    if dest.is_file() and _sha256_file(dest) == (sha256, size):
        return dest
    with atomic_file(dest) as tmp:
        written = 0
        try:
            with lzma.open(packed, "rb") as src, open(tmp, "wb") as dst:
                while block := src.read(1 << 20):
                    written += len(block)
                    if written > size:
                        break
                    dst.write(block)
        except lzma.LZMAError as err:
            raise UserError(f"{label}: {packed.name}: not a valid xz stream ({err}); expected an xz-compressed "
                            "checkpoint") from None
        got, got_size = _sha256_file(tmp)
        if written > size or (got, got_size) != (sha256, size):
            raise UserError(f"{label}: the unpacked checkpoint does not match its manifest (expected sha256 "
                            f"{sha256}, {size} bytes); refusing it")
    return dest


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _intact(dest: Path, hashes: dict[str, str]) -> bool:
    return all((dest / rel).is_file() and _sha256_file(dest / rel)[0] == sha for rel, sha in hashes.items())


def assemble(dest: Path, files: dict[str, Path], extra: dict[str, bytes], hashes: dict[str, str] | None = None,
             link: bool = True) -> Path:
    """Build ``dest`` (relative path → blob, plus small extra files) in a temp sibling and rename it in.

    If ``dest`` already exists (another process finished first) it is kept when its files still hash to
    ``hashes``; a tampered entry is removed and rebuilt.
    """
    if dest.is_dir():
        if hashes is None or _intact(dest, hashes):
            return dest
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        for rel, src in files.items():
            if link:
                _link_or_copy(src, tmp / rel)
            else:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, tmp / rel)
        for rel, data in extra.items():
            (tmp / rel).write_bytes(data)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # lost the race to another fetch: theirs is identical
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest

"""What a prepared data set depends on (the step cache's key for ``prepare_dataset``) and the identity of one.

``source_fingerprint`` hashes a source before it is prepared (file contents, or S3 ETags for an ``s3://`` prefix);
``prepared_info`` reads a prepared folder's ``data.yaml`` and content hash (``stats.json``, else computed).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from sparse_core.errors import UserError
from sparse_core.tracking.lineage import file_sha256


def tree_fingerprint(src: Path) -> str:
    """sha256 over (relative path, size, sha256) of every file under ``src`` (or of ``src`` itself)."""
    h = hashlib.sha256()
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    for f in files:
        rel = f.name if f == src else f.relative_to(src).as_posix()
        h.update(f"{rel}\0{f.stat().st_size}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def source_fingerprint(data: str, data_format: str) -> str:
    """What the prepared data set depends on. An ``s3://`` prefix: its listing (keys, ETags, sizes). A YOLO
    ``data.yaml`` may point anywhere (its ``path``): the images and labels it names (``dataset_hash``) plus the yaml
    itself. Otherwise every file under the source."""
    if data.startswith("s3://"):
        from sparse_core import s3

        return json.dumps(s3.listing(data))
    src = Path(data)
    if not src.exists():
        raise UserError(f"data {src}: not found; expected a data set folder/file or an s3:// prefix")
    if data_format == "yolo":
        data_yaml = src / "data.yaml" if src.is_dir() else src
        if data_yaml.is_file():
            from sparse_core.data.hashing import dataset_hash

            try:
                return f"{dataset_hash(data_yaml)}:{file_sha256(data_yaml)}"
            except UserError:
                pass  # broken source: fall through; prepare reports the problem with its location
    return tree_fingerprint(src)


def rebase_data_yaml(folder: Path) -> None:
    """Point ``data.yaml``'s ``path`` at ``folder`` (a restored copy lives elsewhere); replaces, never edits in
    place, because the file may be a hard link into the cache."""
    import yaml

    f = folder / "data.yaml"
    meta = yaml.safe_load(f.read_text()) or {}
    meta["path"] = str(folder.absolute())
    tmp = folder / ".data.yaml.tmp"
    tmp.write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))
    os.replace(tmp, f)


def prepared_info(dataset: str) -> tuple[Path, str]:
    """(data.yaml, content hash) of a ``prepare_dataset`` output folder (or a data.yaml)."""
    folder = Path(dataset)
    data_yaml = folder / "data.yaml" if folder.is_dir() else folder
    if not data_yaml.is_file():
        raise UserError(f"{dataset}: no data.yaml; expected the folder written by prepare_dataset")
    stats = folder / "stats.json"
    if stats.is_file():
        try:
            return data_yaml, json.loads(stats.read_text())["content_hash"]
        except (json.JSONDecodeError, KeyError):
            raise UserError(f"{stats}: not a prepare_dataset stats file; expected JSON with 'content_hash'") from None
    from sparse_core.data.hashing import dataset_hash

    return data_yaml, dataset_hash(data_yaml)

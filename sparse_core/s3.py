"""S3 access (boto3) for everything that reads or writes buckets: zoo stores, ``s3://`` checkpoints and data sets.

Endpoint and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` ...),
read by boto3 itself; the region defaults to us-east-1 (S3-compatible stores such as SeaweedFS ignore it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sparse_core.errors import UserError


def client():
    import boto3

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("s3", region_name=region)


def split_uri(uri: str, what: str = "KEY") -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise UserError(f"{uri}: expected s3://BUCKET/{what}")
    return bucket, key


def _cause(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def download_file(uri: str) -> Path:
    """The object at ``uri`` in a new temp folder, under its own name."""
    bucket, key = split_uri(uri)
    name = key.rsplit("/", 1)[-1]
    if name in ("", ".", ".."):
        raise UserError(f"{uri}: key {key!r} does not name a file; expected s3://BUCKET/path/to/file")
    dest = Path(tempfile.mkdtemp(prefix="sparsepipe-s3-")) / name
    try:
        client().download_file(bucket, key, str(dest))
    except Exception as err:  # noqa: BLE001 - botocore raises many types; the user needs the URI and the reason
        raise UserError(f"{uri}: download failed ({_cause(err)})") from None
    return dest


def listing(uri: str) -> list[tuple[str, str, int]]:
    """Sorted (key, ETag, size) of every object under the prefix ``uri``; an empty prefix is a UserError."""
    bucket, prefix = split_uri(uri, "PREFIX")
    rows = []
    try:
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            rows += [(o["Key"], o["ETag"], o["Size"]) for o in page.get("Contents", [])]
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{uri}: cannot list ({_cause(err)})") from None
    if not rows:
        raise UserError(f"{uri}: no objects under this prefix; expected a data set")
    return sorted(rows)


def relative_key(uri: str, key: str) -> str:
    """Where object ``key`` listed under prefix ``uri`` lands below the download folder; a key that would land
    outside it ('..', '.', empty parts, which AWS S3 allows in keys) is refused."""
    bucket, prefix = split_uri(uri, "PREFIX")
    rel = key[len(prefix):].lstrip("/") or key.rsplit("/", 1)[-1]
    if any(part in ("", ".", "..") for part in rel.split("/")) or "\\" in rel:
        raise UserError(f"s3://{bucket}/{key}: key escapes the data set folder; expected keys below {uri} "
                        "without '..' or empty parts")
    return rel


def download_prefix(uri: str, dest: Path) -> Path:
    """Every object under ``uri`` into ``dest`` (keys relative to the prefix); the file itself for a single key.
    Every key is checked before anything is written."""
    bucket, prefix = split_uri(uri, "PREFIX")
    s3 = client()
    files = {key: relative_key(uri, key) for key, _, _ in listing(uri)}
    for key, rel in files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))
    single = dest / Path(prefix).name
    return single if single.is_file() else dest

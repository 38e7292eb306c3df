"""Where zoo entries live: a local folder or an S3 bucket/prefix (boto3). Both expose the same five calls.

Zoo URI: ``s3://bucket/prefix`` (endpoint and credentials from the standard AWS variables, e.g.
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``) or a folder path (``file://`` optional). Default: ``$SPARSEPIPE_ZOO``.
Keys are ``/``-separated paths below the root.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO

from sparse_core import s3
from sparse_core.atomic import atomic_file
from sparse_core.errors import UserError


def zoo_uri(zoo: str | None) -> str:
    uri = zoo or os.environ.get("SPARSEPIPE_ZOO")
    if not uri:
        raise UserError("no zoo given; expected --zoo URI (s3://bucket/prefix or a folder) or $SPARSEPIPE_ZOO")
    return uri


def open_store(zoo: str | None):
    uri = zoo_uri(zoo)
    if uri.startswith("s3://"):
        bucket, prefix = s3.split_uri(uri, "PREFIX")
        return S3Store(uri, bucket, prefix.strip("/"))
    if "://" in uri and not uri.startswith("file://"):
        raise UserError(f"zoo {uri}: unsupported scheme; expected s3://bucket/prefix or a local folder")
    return LocalStore(uri, Path(uri.removeprefix("file://")))


class LocalStore:
    def __init__(self, uri: str, root: Path):
        self.uri, self.root = uri, root

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def keys(self, suffix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob(f"*{suffix}") if p.is_file())

    def read(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def download(self, key: str, fileobj: BinaryIO) -> None:
        with open(self.root / key, "rb") as f:
            shutil.copyfileobj(f, fileobj, 1 << 20)

    def upload(self, key: str, path: Path) -> None:
        with atomic_file(self.root / key) as tmp:
            shutil.copyfile(path, tmp)


class S3Store:
    def __init__(self, uri: str, bucket: str, prefix: str):
        self.uri, self.bucket, self.prefix = uri, bucket, prefix
        self.s3 = s3.client()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, err: Exception, key: str = "") -> UserError:
        from botocore.exceptions import ClientError

        where = f"{self.uri}/{key}".rstrip("/")
        if isinstance(err, ClientError):
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket",):
                return UserError(f"zoo {self.uri}: bucket {self.bucket!r} does not exist; expected an existing bucket")
            return UserError(f"zoo {where}: S3 error {code or err}")
        return UserError(f"zoo {where}: cannot reach S3 ({type(err).__name__}: {str(err)[:150]}); expected a "
                         "reachable endpoint (AWS_ENDPOINT_URL) and credentials (AWS_ACCESS_KEY_ID/SECRET)")

    @staticmethod
    def _missing(err: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(err, ClientError) and err.response.get("Error", {}).get("Code") in (
            "NoSuchKey", "404", "NotFound")

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as err:  # noqa: BLE001
            if self._missing(err):
                return False
            raise self._error(err, key) from None

    def keys(self, suffix: str = "") -> list[str]:
        out = []
        base = f"{self.prefix}/" if self.prefix else ""
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                out += [o["Key"][len(base):] for o in page.get("Contents", []) if o["Key"].endswith(suffix)]
        except Exception as err:  # noqa: BLE001
            raise self._error(err) from None
        return sorted(out)

    def read(self, key: str) -> bytes | None:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as err:  # noqa: BLE001
            if self._missing(err):
                return None
            raise self._error(err, key) from None

    def download(self, key: str, fileobj: BinaryIO) -> None:
        try:
            self.s3.download_fileobj(self.bucket, self._key(key), fileobj)
        except Exception as err:  # noqa: BLE001
            if self._missing(err):
                raise UserError(f"zoo {self.uri}/{key}: object missing; expected it (listed in the manifest)") from None
            raise self._error(err, key) from None

    def upload(self, key: str, path: Path) -> None:
        try:
            self.s3.upload_file(str(path), self.bucket, self._key(key))
        except Exception as err:  # noqa: BLE001
            raise self._error(err, key) from None

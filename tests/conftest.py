"""Shared pytest fixtures: one real SeaweedFS S3 server per test session (started on free ports by
``tests/servers.py``), and a fresh bucket per test with the standard AWS variables pointing at it."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `import servers` from any test module
os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """Endpoint URL of a SeaweedFS S3 server running for the whole session."""
    from servers import start_seaweedfs

    endpoint, stop = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield endpoint
    stop()


@pytest.fixture
def s3_bucket(seaweedfs, monkeypatch):
    """A new, empty bucket on the session's SeaweedFS; AWS_* variables set so boto3 (and subprocesses) reach it."""
    import boto3

    env = {"AWS_ENDPOINT_URL": seaweedfs, "AWS_ACCESS_KEY_ID": "sparsepipe", "AWS_SECRET_ACCESS_KEY": "sparsepipe",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=seaweedfs, region_name="us-east-1").create_bucket(Bucket=bucket)
    return bucket

"""A real ``mlflow server`` process for tests: PostgreSQL or sqlite backend store, proxied artifacts.

``start_mlflow(tmpdir, backend='postgres'|'sqlite', s3_endpoint=None) -> (uri, stop_fn)`` is the simple entry point.
``MlflowServer`` is the same thing as an object that can also be killed and restarted on the same port and store
(the outage test needs that). With ``backend='postgres'`` a fresh database ``sparsepipe_test_<random>`` is created on
127.0.0.1:5432 (trust auth, user postgres) and dropped by ``stop``. With ``s3_endpoint`` artifacts are proxied by the
server to ``s3://<bucket>/artifacts`` on that endpoint (the bucket is created here); otherwise to a local folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from servers import free_ports  # tests/ is on sys.path (pytest rootdir import, or run as a script)

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
S3_KEY_ID = "sparsepipe-test-key"
S3_SECRET = "sparsepipe-test-secret-do-not-log-0123456789"  # the secret-scan test looks for this too


def _pg_exec(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(uri + "/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class MlflowServer:
    """One ``mlflow server`` bound to 127.0.0.1 on a free port; ``kill()`` then ``start()`` keeps port and store."""

    def __init__(self, tmpdir, backend: str = "postgres", s3_endpoint: str | None = None):
        self.tmpdir = Path(tmpdir)
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = self.tmpdir / f"mlflow-server-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.db_name: str | None = None
        if backend == "postgres":
            self.db_name = f"sparsepipe_test_{uuid.uuid4().hex[:12]}"
            _pg_exec(f'CREATE DATABASE "{self.db_name}"')
            self.store = f"postgresql://postgres@127.0.0.1:5432/{self.db_name}"
        elif backend == "sqlite":
            self.store = f"sqlite:///{self.tmpdir / 'mlflow.db'}"
        else:
            raise ValueError(f"backend must be 'postgres' or 'sqlite', not {backend!r}")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        if s3_endpoint:
            import boto3

            bucket = f"mlflow-{uuid.uuid4().hex[:8]}"
            boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=S3_KEY_ID,
                         aws_secret_access_key=S3_SECRET, region_name="us-east-1").create_bucket(Bucket=bucket)
            self.artifacts = f"s3://{bucket}/artifacts"
            self.env.update(MLFLOW_S3_ENDPOINT_URL=s3_endpoint, AWS_ACCESS_KEY_ID=S3_KEY_ID,
                            AWS_SECRET_ACCESS_KEY=S3_SECRET, AWS_DEFAULT_REGION="us-east-1")
        else:
            self.artifacts = str(self.tmpdir / "mlartifacts")

    def start(self, timeout: float = 120.0) -> str:
        """Start the server process and wait until ``/health`` answers 200; returns the tracking URI."""
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.store,
            "--artifacts-destination", self.artifacts,
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--allowed-hosts", f"127.0.0.1:{self.port},localhost:{self.port},127.0.0.1,localhost",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, start_new_session=True, cwd=self.tmpdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}):\n{self.log_tail()}")
            if _healthy(self.uri):
                return self.uri
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"mlflow server not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group (server + workers): an abrupt outage, nothing flushed."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 10  # the workers of the group may outlive the parent by a moment
        while time.monotonic() < deadline and _healthy(self.uri):
            time.sleep(0.2)

    def stop(self) -> None:
        """Kill the server and drop its database."""
        self.kill()
        if self.db_name:
            try:
                _pg_exec(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            except Exception as err:  # noqa: BLE001 - a leftover test database is harmless; say so and go on
                print(f"mlflow_server: could not drop {self.db_name}: {err}", file=sys.stderr)
            self.db_name = None


def start_mlflow(tmpdir, backend: str = "postgres", s3_endpoint: str | None = None):
    """Start ``mlflow server`` (fresh Postgres database or sqlite file; artifacts proxied to S3 when given).

    Returns ``(tracking_uri, stop_fn)``.
    """
    server = MlflowServer(tmpdir, backend=backend, s3_endpoint=s3_endpoint)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server.uri, server.stop


if __name__ == "__main__":  # manual check: python tests/mlflow_server.py
    import tempfile

    from servers import start_seaweedfs

    with tempfile.TemporaryDirectory() as d:
        t0 = time.monotonic()
        s3, stop_s3 = start_seaweedfs(d)
        print("seaweedfs", s3, f"{time.monotonic() - t0:.1f}s")
        for backend in ("postgres", "sqlite"):
            t0 = time.monotonic()
            uri, stop = start_mlflow(Path(d) / backend, backend=backend, s3_endpoint=s3)
            print(backend, uri, f"{time.monotonic() - t0:.1f}s")
            stop()
        stop_s3()

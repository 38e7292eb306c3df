"""Reaching the MLflow tracking store: which URI, short HTTP timeouts, a bounded reachability probe, and telling
transient failures (server down, 5xx) from permanent ones (bad request)."""

from __future__ import annotations

import contextlib
import os
import time

from sparse_core.errors import UserError
from sparse_core.tracking.redaction import redact

CONNECT_TIMEOUT_ENV = "SPARSEPIPE_MLFLOW_CONNECT_TIMEOUT"  # seconds to wait for an unreachable server at start
DEFAULT_CONNECT_TIMEOUT = 15.0


def resolve_uri(uri: str | None) -> str | None:
    """``--mlflow URI`` wins, then ``MLFLOW_TRACKING_URI``; None means tracking is off."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@contextlib.contextmanager
def http_limits(retries: int = 0, timeout: float = 10):
    """Make MLflow's REST client fail fast inside the block (its defaults retry for minutes), and stop it printing
    run URLs to stdout (it prints the tracking URI as given, credentials included)."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout))),
             "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def is_transient(err: BaseException) -> bool:
    """True when retrying later can help: connection refused/reset, timeouts, 5xx, 429. False for 4xx."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
        return not (400 <= status < 500) or status in (408, 429)
    return isinstance(err, (OSError, ConnectionError, TimeoutError)) or "Connection" in type(err).__name__


def connect(uri: str, timeout: float | None = None):
    """An ``MlflowClient`` for ``uri`` whose store answered; UserError (URI redacted) within ``timeout`` seconds.

    HTTP servers are probed until ``timeout`` (default ``$SPARSEPIPE_MLFLOW_CONNECT_TIMEOUT`` or 15 s) so a server
    that is still starting is waited for, while an absent one is reported instead of hanging.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if timeout is None:
        timeout = float(os.environ.get(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT))
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as err:  # noqa: BLE001 - unknown scheme, missing driver: the user's URI is wrong
        raise UserError(f"MLflow tracking URI {redact(uri)}: {redact(str(err))[:300]}") from None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with http_limits(retries=0, timeout=max(1.0, min(5.0, left))):
                client.search_experiments(max_results=1)
            return client
        except MlflowException as err:
            if not is_http(uri) or not is_transient(err):
                raise UserError(f"MLflow tracking store {redact(uri)} refused the request: "
                                f"{redact(str(err))[:300]}") from None
            last = err
        except Exception as err:  # noqa: BLE001 - sqlite/postgres driver errors, requests errors
            if not is_http(uri):
                raise UserError(f"MLflow tracking store {redact(uri)}: {redact(str(err))[:300]}") from None
            last = err
        if time.monotonic() + 1.0 >= deadline:
            reason = redact(str(last)).splitlines()[0][:200]
            raise UserError(f"MLflow tracking server {redact(uri)} not reachable after {timeout:.0f} s ({reason}); "
                            "start it, fix --mlflow / MLFLOW_TRACKING_URI, or unset it to run without tracking")
        time.sleep(1.0)

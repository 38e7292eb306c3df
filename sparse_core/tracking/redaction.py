"""Keep secrets out of MLflow: passwords in URIs, AWS keys, ``key=value`` secrets, and the literal values of
secret environment variables. Applied to every param, tag, text artifact and log line the tracker writes."""

from __future__ import annotations

import os
import re

MASK = "***"
# a name whose last part is one of these holds a secret (``tokenizer`` is not ``token``)
_SECRET_NAME = r"(?:password|passwd|pwd|secret|secret_key|secret_access_key|token|session_token|api_?key|" \
               r"access_?key(?:_?id)?|credentials?|signature|private_?key|authorization)"
_SECRET_KEY_RE = re.compile(rf"(?i)(?:^|[^a-z0-9]){_SECRET_NAME}$")
_URI_PASSWORD_RE = re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]*):(?P<pw>[^/\s@]+)@")
_AWS_KEY_ID_RE = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b")
_KV_RE = re.compile(rf"(?i)(?P<key>[\w.\-]*{_SECRET_NAME})(?P<sep>[\"']?\s*[=:]\s*[\"']?)(?P<val>[^\s&,;'\"}}\]]+)")
_BEARER_RE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}")
_NOT_SECRET_ENV = {"PWD", "OLDPWD"}  # the shell's working directories, not passwords
_MIN_ENV_SECRET_LEN = 8  # shorter values ('x' in tests) would mask innocent text


def is_secret_name(name: str) -> bool:
    """True for parameter/variable names that hold secrets (``aws_secret_access_key``, ``db.password``)."""
    return bool(_SECRET_KEY_RE.search(str(name).replace("-", "_")))


def _env_secrets() -> list[str]:
    values = {v for k, v in os.environ.items()
              if is_secret_name(k) and k not in _NOT_SECRET_ENV and len(v) >= _MIN_ENV_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact(text_or_uri: str) -> str:
    """``text`` with passwords in URIs, AWS key ids, ``secret=...`` values and secret env values replaced by ***."""
    if not isinstance(text_or_uri, str):
        text_or_uri = str(text_or_uri)
    text = text_or_uri
    for value in _env_secrets():
        text = text.replace(value, MASK)
    text = _URI_PASSWORD_RE.sub(lambda m: f"{m['pre']}:{MASK}@", text)
    text = _AWS_KEY_ID_RE.sub(MASK, text)
    text = _BEARER_RE.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _KV_RE.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
    return text


def redact_value(name: str, value: str) -> str:
    """A param/tag value: fully masked when its name says secret, else ``redact``-ed."""
    return MASK if is_secret_name(name) and value not in ("", "None") else redact(value)

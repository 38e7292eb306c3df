"""Headless Chromium for the MLflow UI tests: render a page of the single-page app and read back its text."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path


def chromium(url: str, screenshot: Path, profile: Path) -> str:
    """Headless Chromium (Debian ``chromium``; root needs --no-sandbox) renders ``url``, the SPA's JS included,
    writes ``screenshot`` and returns the rendered DOM. Killed (and the test failed) if it hangs."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Debian 'chromium' is not installed: `make install` installs it (apt-get install -y chromium)"
    proc = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             f"--user-data-dir={profile}", "--window-size=1600,1400", "--virtual-time-budget=20000",
                             f"--screenshot={screenshot}", "--dump-dom", url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, f"chromium exited {proc.returncode}"
    return out


def page_lines(dom: str) -> list[str]:
    dom = re.sub(r"(?s)<(script|style)[^>]*>.*?</\1>", "", dom)
    return [ln.strip() for ln in html.unescape(re.sub(r"<[^>]+>", "\n", dom)).splitlines() if ln.strip()]

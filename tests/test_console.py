"""The quiet console of ``make demo``: only stage/step lines and a progress bar reach the terminal; everything
else (this process, its libraries, child processes) goes to the log file."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import subprocess, sys, time
    from pipelines.console import Console
    from sparse_core import progress

    with Console(sys.argv[1]) as con:
        con.line("==> [1/1] a stage")
        print("library noise from this process")
        subprocess.run([sys.executable, "-c", "import sys; print('child stdout'); print('child stderr', file=sys.stderr)"])
        con.begin("train")
        for k in (1, 2, 3):
            progress.emit(event="epoch", epoch=k, epochs=3, name="t")
            time.sleep(0.6)
        con.end("mAP50 0.500")
        print("Executing task \\x1b[96m'export-model'\\x1b[0m")
        time.sleep(0.6)
        print("Task \\x1b[96m'export-model'\\x1b[0m finished with status \\x1b[92mSUCCESS\\x1b[0m")
        con.sync()  # at once, not at the watcher's next poll
        con.end()
        con.line("    done")
    print("after the console: terminal again")
''')


def test_quiet_console_sends_noise_to_the_log_and_draws_progress(tmp_path):
    log = tmp_path / "logs" / "demo.log"
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], capture_output=True, timeout=60)
    stdout, stderr = r.stdout.decode(), r.stderr.decode()  # bytes: text mode would turn the bar's \r into \n
    assert r.returncode == 0, stderr
    assert "\r" not in stdout, "captured output (not a terminal) must not carry redraws"
    lines = stdout.split("\n")
    assert lines[0] == "==> [1/1] a stage"
    train = lines[1]
    assert train.startswith("      train") and "[####################] 3/3 epochs" in train
    assert train.endswith("mAP50 0.500")
    assert "export_model" in lines[2] and lines[2].endswith("SUCCESS")
    assert lines[3:] == ["    done", "after the console: terminal again", ""]
    assert stderr == ""
    text = log.read_text()
    for noise in ("library noise from this process", "child stdout", "child stderr", "==> [1/1] a stage"):
        assert noise in text
    assert "library noise" not in stdout and "child" not in stdout


def test_console_redraws_the_live_line_only_on_a_terminal(tmp_path):
    """On a terminal the bar is redrawn in place (\\r); the same script's captured output had none (above)."""
    import os
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "demo.log")], stdout=slave,
                            stderr=subprocess.PIPE)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
    os.close(master)
    text = out.decode().replace("\r\n", "\n")  # the pty's own newline translation
    train = [ln for ln in text.split("\n") if "train" in ln][0]
    drawings = train.split("\r")
    assert len(drawings) >= 3, f"expected redraws on a terminal: {train!r}"
    assert drawings[-1].endswith("mAP50 0.500") and "3/3 epochs" in drawings[-1]

"""Runs inside the DeepSparse side venv (numpy<2): compiles one model and runs it on request over stdin/stdout.

Standalone on purpose (imports only numpy and deepsparse): the side venv has none of sparsepipe's dependencies.
Protocol, one JSON line each way: on start it answers {"version", "log"} (or {"error"}); then every line "run"
runs one batch and answers "ok"; end of input ends it. DeepSparse's own log (which says how much of the graph it
compiled natively) goes to file descriptors 1/2 from C++: it is captured into a file and returned.
"""

import json
import os
import sys
import tempfile


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # never import a neighbour as a package
    model, shape, dtype, threads = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    out = os.fdopen(os.dup(1), "w", buffering=1)
    log = tempfile.TemporaryFile(mode="w+b")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    os.environ.setdefault("NM_LOGGING_LEVEL", "diagnose")
    try:
        import numpy as np
        import deepsparse

        x = np.random.default_rng(0).random(shape, dtype=np.float32).astype(dtype)
        engine = deepsparse.compile_model(model, batch_size=shape[0], num_cores=threads)
        engine([x])
    except Exception as err:  # reported to the parent, which raises a UserError naming the model
        out.write(json.dumps({"error": f"{type(err).__name__}: {err}"[:400]}) + "\n")
        return 1
    log.seek(0)
    text = log.read().decode(errors="replace")[-400000:]
    out.write(json.dumps({"version": getattr(deepsparse, "__version__", "unknown"), "log": text}) + "\n")
    for line in sys.stdin:
        if line.strip() != "run":
            break
        engine([x])
        out.write("ok\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

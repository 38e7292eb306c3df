"""OpenVINO with oneDNN's instruction set capped (``ONEDNN_MAX_CPU_ISA``), in a worker process.

Why: on CPUs with AMX, OpenVINO runs INT8 convolutions on AMX kernels (``brgconv_avx512_amx_I8``), which at a
thinned YOLO's narrow channel widths took twice the time of the same convolutions on AVX-512 VNNI kernels (Xeon
with AMX, v8n with 75% of channels removed, 640 px, 2 threads: 12.7 vs 6.3 ms; whole model v8n 62.6 -> 107.1 img/s,
v8s 54.0 -> 80.4; benchmarks/results/speed-xeon-amx.md). oneDNN reads the cap once per process, so a capped model cannot share
the process with uncapped ones: it runs in a worker (``pipe_worker``) and is timed interleaved like the others.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from sparse_core.bench import pipe_worker
from sparse_core.bench.engines import Loaded
from sparse_core.errors import UserError

ENV = "ONEDNN_MAX_CPU_ISA"
# oneDNN's names, oldest to newest (its documentation, "CPU dispatcher control")
ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16",
        "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "ALL")
VNNI_CAP = "AVX512_CORE_VNNI"  # the cap that moves INT8 convs off AMX kernels (the "openvino-vnni" benchmark column)


def check(isa: str) -> str:
    """The cap's oneDNN name, upper-cased; a one-line UserError for anything else."""
    name = str(isa).upper()
    if name not in ISAS:
        raise UserError(f"--isa: {isa!r} is not a oneDNN ISA name; expected one of {', '.join(ISAS)}")
    return name


def default_precision(isa: str) -> str | None:
    """OpenVINO picks its default precision from the CPU's flags, not from oneDNN's cap: under a cap without BF16
    instructions its bf16 default is emulated (thin v8n 39.8 vs 101.5 img/s in f32) or has no kernel at all
    (MaxPool under AVX2), so such a cap defaults to f32."""
    return "f32" if ISAS.index(check(isa)) < ISAS.index("AVX512_CORE_BF16") else None


def load(path: Path, x: np.ndarray, threads: int, precision: str | None, isa: str) -> Loaded:
    """``path`` compiled by OpenVINO in a worker whose oneDNN is capped at ``isa``."""
    cap = check(isa)
    cmd = [sys.executable, "-m", "sparse_core.bench.openvino_isa", str(path), json.dumps(list(x.shape)), str(x.dtype),
           str(threads), precision or default_precision(cap) or ""]
    proc, hello = pipe_worker.start(cmd, {**os.environ, ENV: cap}, path, f"OpenVINO ({isa})")

    def profile(n: int) -> dict:
        return json.loads(pipe_worker.request(proc, f"profile {int(n)}", path, "OpenVINO"))

    return Loaded(pipe_worker.runner(proc, path, "OpenVINO"), hello["version"], hello["precision"], profile=profile,
                  extra={"isa_cap": cap}, close=proc.kill)


def _serve(model: str, shape: list[int], dtype: str, threads: int, precision: str | None) -> int:
    from sparse_core.bench import engines

    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything OpenVINO prints goes to stderr, never into the protocol
    x = np.random.default_rng(0).random(shape, dtype=np.float32).astype(dtype)
    try:
        loaded = engines.openvino(Path(model), x, threads, precision)
    except UserError as err:
        out.write(json.dumps({"error": str(err)[:400]}) + "\n")
        return 1
    out.write(json.dumps({"version": loaded.version, "precision": loaded.precision}) + "\n")
    for line in sys.stdin:
        word, _, arg = line.strip().partition(" ")
        if word == "run":
            loaded.run()
            out.write("ok\n")
        elif word == "profile":
            out.write(json.dumps(loaded.profile(int(arg))) + "\n")
        else:
            break
    return 0


if __name__ == "__main__":  # the worker: MODEL SHAPE_JSON DTYPE THREADS PRECISION ("" = OpenVINO's default)
    a = sys.argv[1:]
    sys.exit(_serve(a[0], json.loads(a[1]), a[2], int(a[3]), a[4] or None))

"""What the CPU can do: speed figures are only comparable between runs on the same ISA, so every report prints it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# flag in /proc/cpuinfo -> name in reports; VNNI/AMX are what INT8 kernels need to beat FP32 by much
# BF16 (avx512_bf16, AMX) is what makes OpenVINO's default precision bf16
FLAGS = {"avx2": "avx2", "avx512f": "avx512f", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni",
         "avx512_bf16": "avx512_bf16", "amx_int8": "amx"}


def cpu_info(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict:
    """Model name, CPU counts and the SIMD flags relevant to FP32/INT8 inference."""
    model, flags = platform.processor() or platform.machine(), set()
    path = Path(cpuinfo)
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    found = {name: flag in flags for flag, name in FLAGS.items()}
    if found["amx"]:
        isa = "AMX"
    elif found["avx512_vnni"]:
        isa = "AVX-512 VNNI"
    elif found["avx512f"]:
        isa = "AVX-512"
    elif found["avx_vnni"]:
        isa = "AVX-VNNI"
    elif found["avx2"]:
        isa = "AVX2"
    else:
        isa = "baseline"
    if found["avx512_bf16"] and not found["amx"]:
        isa += " + BF16"
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "logical_cpus": os.cpu_count(), "available_cpus": available, "isa": isa, "flags": found}

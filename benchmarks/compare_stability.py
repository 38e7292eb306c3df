"""Is ``sparsepipe benchmark --compare`` stable? Three runs of the same pair should agree within 10 % (issue 6).

Builds two models from nothing (random init, nothing downloaded): yolov8s and yolov8n (nc=3), exported FP32 at
``--imgsz``. Then, ``--runs`` times, runs the real CLI in a subprocess: ``sparsepipe benchmark S --compare N``
(interleaved in one process) and, as a contrast, each model alone in its own process back to back (the
"separate" ratio a naive benchmark would report). Reports every speedup, and the spread (max/min - 1) of both.
With --json, one JSON object on the last line.

    .venv/bin/python benchmarks/compare_stability.py [--imgsz 320] [--seconds 10] [--runs 3] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")


def bench(*args: str) -> dict:
    cmd = [sys.executable, "-m", "sparse_core.cli", "benchmark", *args, "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def spread(values: list[float]) -> float:
    return max(values) / min(values) - 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per interleaved run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    from ultralytics.nn.tasks import DetectionModel

    from sparse_core.export import export_model

    work = Path(tempfile.mkdtemp(prefix="compare-stability-"))
    try:
        paths = {}
        for name in ("yolov8s", "yolov8n"):
            torch.manual_seed(0)
            paths[name] = work / name
            export_model({"model": DetectionModel(f"{name}.yaml", nc=3, verbose=False)}, paths[name], imgsz=args.imgsz)
        common = ["--warmup", "5"] + (["--threads", str(args.threads)] if args.threads else [])
        rows = []
        for i in range(args.runs):
            inter = bench(str(paths["yolov8n"]), "--compare", str(paths["yolov8s"]), "--seconds", str(args.seconds), *common)
            alone_n = bench(str(paths["yolov8n"]), "--seconds", str(args.seconds / 2), *common)
            alone_s = bench(str(paths["yolov8s"]), "--seconds", str(args.seconds / 2), *common)
            rows.append({
                "run": i + 1,
                "interleaved_speedup": inter["speedup"],
                "interleaved_speedup_p50": inter["speedup_p50"],
                "interleaved_img_s": [inter["images_per_s"], inter["compare"]["images_per_s"]],
                "separate_speedup": round(alone_n["images_per_s"] / alone_s["images_per_s"], 4),
                "separate_img_s": [alone_n["images_per_s"], alone_s["images_per_s"]],
            })
            print(f"run {i + 1}: interleaved speedup {rows[-1]['interleaved_speedup']:.3f} "
                  f"(p50 ratio {rows[-1]['interleaved_speedup_p50']:.3f}) "
                  f"(v8n {inter['images_per_s']:.1f}, v8s {inter['compare']['images_per_s']:.1f} img/s); "
                  f"separate {rows[-1]['separate_speedup']:.3f}", flush=True)
        result = {
            "pair": "yolov8n (MODEL) vs yolov8s (--compare), FP32, random init, nc=3",
            "imgsz": args.imgsz,
            "seconds": args.seconds,
            "threads": inter["threads"],
            "engine": f"{inter['engine']} {inter['engine_version']}",
            "cpu": inter["cpu"],
            "load_avg_1min": os.getloadavg()[0],
            "python": platform.python_version(),
            "runs": rows,
            "interleaved_spread": round(spread([r["interleaved_speedup"] for r in rows]), 4),
            "interleaved_p50_spread": round(spread([r["interleaved_speedup_p50"] for r in rows]), 4),
            "separate_spread": round(spread([r["separate_speedup"] for r in rows]), 4),
        }
        result["within_10pct"] = result["interleaved_spread"] <= 0.10
        print(f"interleaved spread {result['interleaved_spread']:.1%} (p50 ratio {result['interleaved_p50_spread']:.1%}), separate spread {result['separate_spread']:.1%}; "
              f"{inter['cpu']['model']} ({inter['cpu']['isa']}), {inter['threads']} threads, load {result['load_avg_1min']:.1f}")
        if args.json:
            print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Local pipeline overhead: wall time of ``sparse_transfer`` run with kfp.local vs the sum of its steps' compute.

Each step records ``step_seconds`` in its MLflow child run: time spent inside the step function (tracking, cache
lookup, the work). The rest of the wall time is orchestration: a fresh Python process per task, imports (kfp,
mlflow, torch, ultralytics), the local runner's bookkeeping, and the parent run's open/close tasks.

    .venv/bin/python benchmarks/pipeline_overhead.py [--images 256] [--imgsz 256] [--epochs 4] [--json]

The step cache is off (``cache_dir=none``) so every step computes. Numbers depend on the machine and its load
(printed); compare ratios only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("YOLO_OFFLINE", "1")

RECIPE = """
version: 1.1.0
num_epochs: {epochs}
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
pruning_modifiers:
  - !ConstantPruningModifier
    start_epoch: 0.0
    params: ["re:^((?!dfl).)*$"]
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="training images (val = a quarter)")
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from mlflow.tracking import MlflowClient

    from mlflow_server import start_mlflow
    from sparse_core.bench.cpu import cpu_info
    from sparse_core.data.synth import synth_dataset
    from sparse_core.integrations.ultralytics import train
    from pipelines.local import run_local

    with tempfile.TemporaryDirectory(prefix="sparsepipe-overhead-") as tmp:
        root = Path(tmp)
        os.environ["SPARSEPIPE_HOME"] = str(root / "home")
        data = synth_dataset(root / "data", n_train=args.images, n_val=max(4, args.images // 4), imgsz=args.imgsz,
                             seed=0).parent
        base = train("yolov8n.yaml", str(data / "data.yaml"), epochs=1, imgsz=args.imgsz, batch=16, workers=0,
                     project=str(root / "base"), name="dense", plots=False)["weights"]["best"]
        (root / "recipe.yaml").write_text(RECIPE.format(epochs=args.epochs))
        uri, stop = start_mlflow(root / "mlflow", backend="sqlite")
        try:
            load_before = os.getloadavg()
            t0 = time.perf_counter()
            summary = run_local("sparse_transfer", {
                "model": base, "data": str(data), "recipe": str(root / "recipe.yaml"), "imgsz": args.imgsz,
                "batch": 16, "workers": 0, "bench_iterations": 100, "mlflow_uri": uri, "experiment": "overhead",
                "register_name": "overhead", "cache_dir": "none"}, pipeline_root=root / "kfp")
            wall = time.perf_counter() - t0
            load_after = os.getloadavg()
            client = MlflowClient(uri)
            rows = []
            for s in summary["steps"]:
                run = client.get_run(s["run_id"])
                rows.append({"step": s["step"], "compute_s": round(s["seconds"], 2),
                             "run_s": round((run.info.end_time - run.info.start_time) / 1e3, 2)})
        finally:
            stop()
    compute = sum(r["compute_s"] for r in rows)
    result = {
        "pipeline": "sparse_transfer", "images": args.images, "imgsz": args.imgsz, "epochs": args.epochs,
        "wall_s": round(wall, 2), "steps_compute_s": round(compute, 2), "ratio": round(wall / compute, 3),
        "overhead_s": round(wall - compute, 2), "tasks": len(rows) + 2, "steps": rows,
        "cpu": cpu_info().get("model"), "isa": cpu_info().get("isa"), "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"\n{'step':<18} {'compute s':>10} {'mlflow run s':>13}")
        for r in rows:
            print(f"{r['step']:<18} {r['compute_s']:>10.2f} {r['run_s']:>13.2f}")
        print(f"\nwall {wall:.1f} s, steps' compute {compute:.1f} s, ratio {wall / compute:.3f} "
              f"(target <= 1.2); overhead {wall - compute:.1f} s over {len(rows) + 2} tasks")
        print(f"CPU {result['cpu']} ({result['isa']}), load average before {result['loadavg_before']}, "
              f"after {result['loadavg_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

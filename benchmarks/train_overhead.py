"""Epoch time and peak RSS of Ultralytics training with a pruning recipe vs the same run without (issue 4).

Runs dense and pruned trainings alternately (A B A B ...) in fresh subprocesses on one generated data set, so
machine noise hits both alike; reports the median epoch time of each, their ratio (target <= 1.10) and peak RSS.

    .venv/bin/python benchmarks/train_overhead.py [--pairs 2] [--epochs 3] [--imgsz 128] [--images 128]
        [--update-frequency 1.0]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RECIPE = """
version: 1.1.0
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: {epochs}
pruning_modifiers:
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.05
    final_sparsity: 0.8
    start_epoch: 0
    end_epoch: {epochs}
    update_frequency: {freq}
"""


def run(kind: str, data: Path, root: Path, args, i: int) -> tuple[float, float]:
    name = f"{kind}{i}"
    cmd = [sys.executable, "-m", "sparse_core.cli", "train", "--model", "yolov8n.yaml", "--data", str(data),
           "--imgsz", str(args.imgsz), "--batch", "16", "--workers", "0", "--project", str(root), "--name", name,
           "--no-plots", "--epochs", str(args.epochs)]
    if kind == "pruned":
        recipe = root / "gmp.yaml"
        recipe.write_text(RECIPE.format(epochs=args.epochs, freq=args.update_frequency))
        cmd += ["--recipe", str(recipe)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{kind} run failed ({proc.returncode}): {' '.join(cmd)}")
    peak_mb = usage.ru_maxrss / 1024
    rows = list(csv.DictReader((root / name / "results.csv").open()))
    times = [float(r["time"]) for r in rows]  # cumulative seconds at each epoch end
    epoch_times = [b - a for a, b in zip([0.0] + times[:-1], times)][1:]  # drop the first (warm-up) epoch
    return statistics.median(epoch_times), peak_mb


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--imgsz", type=int, default=128)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--update-frequency", type=float, default=1.0, help="GMP mask updates per epoch^-1 (seed 002: 1.0)")
    args = p.parse_args()
    from sparse_core.data.synth import synth_dataset

    root = Path(tempfile.mkdtemp(prefix="train-overhead-"))
    data = synth_dataset(root / "data", n_train=args.images, n_val=16, imgsz=args.imgsz, seed=0)
    res = {"dense": [], "pruned": []}
    peak = {"dense": 0.0, "pruned": 0.0}
    for i in range(args.pairs):
        for kind in ("dense", "pruned"):
            t, mb = run(kind, data, root, args, i)
            res[kind].append(t)
            peak[kind] = max(peak[kind], mb)
            print(f"pair {i} {kind:>6}: {t:.2f} s/epoch", flush=True)
    dense, pruned = statistics.median(res["dense"]), statistics.median(res["pruned"])
    out = {"dense_s_per_epoch": round(dense, 3), "pruned_s_per_epoch": round(pruned, 3),
           "ratio": round(pruned / dense, 3), "target": 1.10, "dense_peak_rss_mb": round(peak["dense"], 1),
           "pruned_peak_rss_mb": round(peak["pruned"], 1), "imgsz": args.imgsz, "images": args.images,
           "epochs": args.epochs, "pairs": args.pairs,
           "update_frequency": args.update_frequency}
    print(f"pruning recipe / dense epoch time: {out['ratio']:.3f} (target <= 1.10); peak RSS dense "
          f"{out['dense_peak_rss_mb']:.0f} MB, pruned {out['pruned_peak_rss_mb']:.0f} MB")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

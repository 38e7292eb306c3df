"""Throughput of ``sparsepipe data prepare`` on a generated COCO set (default 5,000 images at 64 px, 3 classes).

Generates the set once (synth → COCO JSON + images, not timed), then runs the real CLI in a subprocess (COCO →
validated Ultralytics set: parse, check every annotation, decode-check and copy every image, hash, write labels)
and reports images/s and the subprocess' peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, so generation does
not count). Also times ``dataset_hash`` of the output, which lineage/caching recompute. With --json, one JSON
object on the last line.

    .venv/bin/python benchmarks/prepare_throughput.py [--images 5000] [--imgsz 64] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sparse_core.data.hashing import dataset_hash
from sparse_core.data.synth import synth_dataset
from sparse_core.data.writers import write_coco


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--imgsz", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="prepare runs (best and all are reported)")
    ap.add_argument("--workdir", help="where to generate (default: a temp folder, removed afterwards)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="prepare-bench-"))
    try:
        t0 = time.perf_counter()
        n_val = max(1, args.images // 5)
        src = synth_dataset(work / "synth", n_train=args.images - n_val, n_val=n_val, imgsz=args.imgsz, seed=0)
        coco = write_coco(src, work / "coco")
        gen_s = time.perf_counter() - t0
        src_mb = sum(p.stat().st_size for p in (coco / "images").rglob("*") if p.is_file()) / 2**20
        runs = []
        for r in range(args.repeats):
            out = work / f"out{r}"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "sparse_core.cli", "data", "prepare", str(coco),
                                   "--format", "coco", "--out", str(out), "--json"], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            stats = json.loads(proc.stdout.strip().splitlines()[-1])
            runs.append(wall)
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        t0 = time.perf_counter()
        h = dataset_hash(work / "out0")
        hash_s = time.perf_counter() - t0
        assert h == stats["content_hash"]
        images = sum(stats["images"].values())
        result = {
            "images": images, "instances": stats["instances"], "imgsz": args.imgsz,
            "source_mb": round(src_mb, 1), "generate_s": round(gen_s, 2),
            "prepare_s": [round(w, 2) for w in runs], "images_per_s": round(images / min(runs), 1),
            "peak_rss_mb": round(peak_rss_mb, 1), "dataset_hash_s": round(hash_s, 2),
            "hash_images_per_s": round(images / hash_s, 1), "cpus": os.cpu_count(),
        }
        print(f"prepare {images} images ({args.imgsz}px, {src_mb:.1f} MB, {stats['instances']} instances) "
              f"COCO -> Ultralytics: best {min(runs):.2f} s of {len(runs)} = {result['images_per_s']} images/s; "
              f"peak RSS {peak_rss_mb:.1f} MB; dataset_hash {hash_s:.2f} s ({result['hash_images_per_s']} images/s)")
        if args.json:
            print(json.dumps(result))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

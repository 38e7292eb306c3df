"""QAT vs FP32 training cost: step/epoch time and peak memory of the same YOLO model, measured in one run.

Each mode runs in its own subprocess (so peak memory is that mode's alone): build the model (QAT: prepared with
seed 000's QuantizationModifier, the transfer recipe's scheme), then ``--steps`` training steps (forward, Ultralytics
detection loss, backward, SGD step) on random images with a few boxes, after ``--warmup`` untimed steps.

Memory: what training adds on top of the built model and batch (activations kept for backward, gradients, momentum,
allocator caches): on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before the first step; on CPU
the peak resident set (Linux VmHWM, reset via /proc/self/clear_refs) minus the resident set before the first step. Time: median step;
epoch time = median step x ceil(--images / --batch).

    .venv/bin/python benchmarks/qat_memory.py --model yolov8n.yaml --imgsz 320 --batch 8 --steps 10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED000 = ROOT / "tests" / "recipes" / "seed000_yolov8m_pruned80_quant_transfer.yaml"


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run_mode(mode: str, model_cfg: str, imgsz: int, batch: int, steps: int, warmup: int, device: str) -> dict:
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(model_cfg, nc=3, verbose=False)
    model.args = get_cfg()
    if mode == "qat":
        from sparse_core.quantization import prepare
        from sparse_core.recipe import load_recipe

        mod = load_recipe(str(SEED000), {"qat_start_epoch": 0}).of_type("QuantizationModifier")[0]
        prepare(model, mod, "seed000")
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    n_boxes = 3 * batch
    data = {"img": torch.rand(batch, 3, imgsz, imgsz, generator=g).to(device),
            "batch_idx": torch.arange(batch).repeat_interleave(3).float().to(device),
            "cls": torch.randint(0, 3, (n_boxes, 1), generator=g).float().to(device),
            "bboxes": (torch.rand(n_boxes, 4, generator=g) * 0.5 + 0.25).to(device)}

    def step():
        loss, _ = model.loss(data)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()

    cuda = device.startswith("cuda")
    if cuda:  # baseline: model + data, before any activation, gradient or optimizer state exists
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _rss_kb("VmRSS") * 1024
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else _rss_kb("VmHWM") * 1024
    return {"mode": mode, "step_s": statistics.median(times), "peak_bytes": peak, "peak_over_base_bytes": peak - base,
            "base_bytes": base, "params": sum(p.numel() for p in model.parameters())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolov8n.yaml")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--images", type=int, default=128, help="images per epoch for the epoch-time estimate")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.model, args.imgsz, args.batch, args.steps, args.warmup,
                                  args.device)))
        return 0
    results = {}
    for mode in ("fp32", "qat"):
        cmd = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    steps_per_epoch = math.ceil(args.images / args.batch)
    fp32, qat = results["fp32"], results["qat"]
    import torch

    summary = {
        "model": args.model, "imgsz": args.imgsz, "batch": args.batch, "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else _cpu_name(),
        "threads": torch.get_num_threads(),
        "fp32_step_s": round(fp32["step_s"], 4), "qat_step_s": round(qat["step_s"], 4),
        "fp32_epoch_s": round(fp32["step_s"] * steps_per_epoch, 2), "qat_epoch_s": round(qat["step_s"] * steps_per_epoch, 2),
        "time_ratio": round(qat["step_s"] / fp32["step_s"], 2),
        "fp32_peak_mb": round(fp32["peak_over_base_bytes"] / 2**20, 1),
        "qat_peak_mb": round(qat["peak_over_base_bytes"] / 2**20, 1),
        "memory_ratio": round(qat["peak_over_base_bytes"] / max(fp32["peak_over_base_bytes"], 1), 2),
        "images_per_epoch": args.images,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

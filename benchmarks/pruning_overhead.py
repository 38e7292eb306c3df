"""Training-step cost of active pruning masks: YOLOv8n (built from yolov8n.yaml) at 160 px, batch 4, CPU.

Two identical models train side by side, steps interleaved (dense, masked, dense, ...) so machine noise hits both
alike: the dense one plainly, the masked one under a RecipeManager holding 80% GMP masks on every Conv weight
(``manager.update`` each step + the optimizer pre/post-step mask hooks). Prints median step times and the median of
the per-pair time ratios (target <= 1.10) and, with --json, one JSON object on the last line.

    .venv/bin/python benchmarks/pruning_overhead.py [--steps 30] [--imgsz 160] [--batch 4] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

from sparse_core.modifiers import RecipeManager  # noqa: E402
from sparse_core.recipe import load_recipe  # noqa: E402

RECIPE = """
pruning_modifiers:
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.05
    final_sparsity: 0.8
    start_epoch: 0
    end_epoch: 1
    update_frequency: 0.5
"""


def synthetic_batch(batch: int, imgsz: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    n_boxes = 3 * batch
    xy = torch.rand(n_boxes, 2, generator=gen) * 0.6 + 0.2
    wh = torch.rand(n_boxes, 2, generator=gen) * 0.2 + 0.05
    return {
        "img": torch.rand(batch, 3, imgsz, imgsz, generator=gen),
        "cls": torch.randint(0, 80, (n_boxes, 1), generator=gen).float(),
        "bboxes": torch.cat([xy, wh], 1),
        "batch_idx": torch.arange(batch).repeat_interleave(3).float(),
    }


def step(model, opt, batch) -> None:
    opt.zero_grad(set_to_none=True)
    loss, _ = model.loss(batch)
    loss.sum().backward()
    opt.step()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=4)
    # 1 by default: on a shared, loaded machine two spinning OpenMP threads per model make step times swing 10x
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dense = DetectionModel("yolov8n.yaml", verbose=False)
    dense.args = get_cfg()
    masked = copy.deepcopy(dense)
    masked.args = dense.args
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.937, weight_decay=5e-4, nesterov=True)
            for m in (dense, masked)]
    manager = RecipeManager(load_recipe(RECIPE), masked, opts[1], steps_per_epoch=args.steps)
    manager.initialize(1.0)  # past end_epoch: final 80% masks, kept (leave_enabled)
    manager.update(1.0)
    sparsity, _ = manager.sparsity()

    times: dict[str, list[float]] = {"dense": [], "masked": []}
    runs = (("dense", dense, opts[0]), ("masked", masked, opts[1]))
    for i in range(args.warmup + args.steps):
        batch = synthetic_batch(args.batch, args.imgsz, seed=i)
        for name, model, opt in runs if i % 2 == 0 else runs[::-1]:  # alternate who goes first
            t0 = time.perf_counter()
            if name == "masked":
                manager.update(1.0 + i / args.steps)
            step(model, opt, batch)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    after, _ = manager.sparsity()
    # the manager's own per-step work (update + both optimizer hooks), timed alone: less noise-prone than the ratio
    ops = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        manager.update(2.0 + i / args.steps)
        manager._before_step()
        manager._mask_weights()
        ops.append(time.perf_counter() - t0)

    med = {k: statistics.median(v) for k, v in times.items()}
    # median of per-pair ratios: each pair ran back to back on the same batch, so shared-machine load cancels
    ratio = statistics.median(m / d for m, d in zip(times["masked"], times["dense"]))
    result = {
        "model": "yolov8n.yaml", "imgsz": args.imgsz, "batch": args.batch, "steps": args.steps,
        "threads": torch.get_num_threads(), "sparsity": round(sparsity, 4), "sparsity_after": round(after, 4),
        "dense_step_ms": round(med["dense"] * 1e3, 1), "masked_step_ms": round(med["masked"] * 1e3, 1),
        "mask_ops_ms": round(statistics.median(ops) * 1e3, 2), "ratio": round(ratio, 4), "ratio_of_medians": round(med["masked"] / med["dense"], 4), "target": 1.10, "within_target": ratio <= 1.10,
    }
    print(f"YOLOv8n {args.imgsz}px batch {args.batch} CPU ({torch.get_num_threads()} threads), {args.steps} "
          f"interleaved steps: dense {result['dense_step_ms']} ms, masked ({sparsity:.1%} sparse, "
          f"{after:.1%} after training) {result['masked_step_ms']} ms, ratio {ratio:.3f} (target <= 1.10); "
          f"manager work per step {result['mask_ops_ms']} ms")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

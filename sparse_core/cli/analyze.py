"""CLI: ``sparsepipe analyze`` and ``sparsepipe recipe generate`` (the recipe group adds the latter via
``add_generate_parser``)."""

from __future__ import annotations

import argparse
import json

from sparse_core.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="per channel group: accuracy sensitivity and latency share")
    p.add_argument("model", help="trained .pt checkpoint (Ultralytics YOLO detector or segmenter)")
    p.add_argument("--data", required=True, help="Ultralytics data yaml (val subset scored, train subset for BN)")
    p.add_argument("--engine", default="onnxruntime",
                   help="latency engine(s): onnxruntime, openvino, or both comma-separated")
    p.add_argument("--imgsz", type=int, default=640, help="deployment image size for latency (default 640)")
    p.add_argument("--acc-imgsz", type=int, default=None, help="image size for accuracy (default: the training size)")
    p.add_argument("--levels", default="0.25,0.5,0.75", help="fractions of channels removed per group")
    p.add_argument("--val-images", type=int, default=16, help="val images scored per removal")
    p.add_argument("--calib-images", type=int, default=8, help="train images for BN recalibration")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=3.0, help="timing per whole-model latency measurement")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: CPUs available)")
    p.add_argument("--out", default="analysis", help="output folder (analysis.json, plots)")
    p.add_argument("--mlflow", metavar="URI", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI; off if unset)")
    p.add_argument("--experiment", default="sparsepipe")
    p.add_argument("--json", action="store_true", help="one JSON summary as the last stdout line")
    p.set_defaults(func=run_analyze)


def run_analyze(args: argparse.Namespace) -> int:
    from sparse_core.sensitivity.analyze import analyze, parse_engines, parse_levels

    for name in ("val_images", "calib_images", "batch", "imgsz"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: {getattr(args, name)}: expected a positive integer")
    result = analyze(args.model, args.data, args.out, parse_engines(args.engine), args.imgsz, parse_levels(args.levels),
                     args.acc_imgsz, args.val_images, args.calib_images, args.batch, args.seconds, args.threads,
                     args.mlflow, args.experiment)
    if args.json:
        print(json.dumps({"analysis": f"{args.out}/analysis.json", "groups": len(result["groups"]),
                          "dense": result["dense"], "timing": result["timing"],
                          "dense_ms": {e: v["dense_ms"] for e, v in result["latency"].items()}}))
    return 0


def add_generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="per-group structured recipe for a latency target, from an analysis.json")
    p.add_argument("--analysis", required=True, help="analysis.json written by sparsepipe analyze")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-speedup", type=float, help="dense latency / target latency, e.g. 2.0")
    target.add_argument("--target-latency-ms", type=float, help="target latency in ms (one image)")
    p.add_argument("--engine", default=None, help="engine whose latency model to use (default: the analysis' first)")
    p.add_argument("--qat", action="store_true", help="add a QAT stage after the structured stage")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the structured + KD stage")
    p.add_argument("--pruning-end", type=int, default=None, help="epoch pruning ends (default 60%% of --epochs)")
    p.add_argument("--qat-epochs", type=int, default=3)
    p.add_argument("--out", default="recipe.yaml", help="recipe file to write")
    p.add_argument("--json", action="store_true", help="one JSON summary as the last stdout line")
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from sparse_core.sensitivity.generate import generate

    plan = generate(args.analysis, args.out, args.target_speedup, args.target_latency_ms, args.engine, args.qat,
                    args.epochs, args.pruning_end, args.qat_epochs)
    if args.json:
        print(json.dumps(plan))
    else:
        pruned = sum(1 for s in plan["sparsity"].values() if s > 0)
        print(f"{plan['recipe']}: {pruned} of {len(plan['sparsity'])} groups pruned; predicted "
              f"{plan['predicted_ms']:.2f} ms on {plan['engine']} (dense {plan['dense_ms']:.2f}), mAP50-95 drop "
              f"{100 * plan['predicted_map_drop']:.2f} points")
    return 0

"""``sparsepipe train`` and ``sparsepipe val`` (flags compatible with SparseML's ``sparseml.ultralytics.train``)."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("train", help="train a YOLO model with an optional sparsification recipe")
    p.add_argument("--model", help="Ultralytics model yaml, .pt checkpoint or zoo: stub")
    p.add_argument("--data", help="Ultralytics data yaml")
    p.add_argument("--recipe", help="recipe .yaml/.md or zoo: stub")
    p.add_argument("--recipe-args", "--recipe_args", dest="recipe_args", help="JSON overrides of recipe variables")
    p.add_argument("--epochs", type=int, help="epochs when the recipe does not set them")
    p.add_argument("--teacher", "--teacher-weights", "--teacher_weights", dest="teacher",
                   help="distillation teacher: checkpoint .pt, zoo: stub, 'self' or 'disable'")
    p.add_argument("--imgsz", "--img-size", "--image-size", dest="imgsz", type=int, default=640)
    p.add_argument("--batch", "--batch-size", "--batch_size", dest="batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--gradient-accum-steps", "--gradient_accum_steps", dest="gradient_accum_steps", type=int,
                   default=1)
    p.add_argument("--project", "--save_folder", dest="project", default="runs/sparsepipe")
    p.add_argument("--name", default="train")
    p.add_argument("--resume", metavar="CKPT", help="continue an interrupted run from its last.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zoo", help="zoo URI for zoo: stubs (default $SPARSEPIPE_ZOO)")
    p.add_argument("--device", help="cpu, 0, 0,1 ... (default: first GPU if any)")
    p.add_argument("--mlflow", metavar="URI", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI; off if unset)")
    p.add_argument("--experiment", default="sparsepipe", help="MLflow experiment name")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip Ultralytics' plots")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="fully unpickle a local .pt the safe loader refuses (only files you trust: it can run code)")
    yolact = p.add_argument_group("YOLACT-style COCO inputs (seed 003); prepared into an Ultralytics segment set")
    for flag in ("--train_info", "--validation_info", "--train_images", "--validation_images"):
        yolact.add_argument(flag, help=argparse.SUPPRESS if flag != "--train_info" else
                            "with --validation_info, --train_images, --validation_images instead of --data")
    p.set_defaults(func=_train)

    v = sub.add_parser("val", help="evaluate a checkpoint, an ONNX model or a deployment folder")
    v.add_argument("--weights", required=True)
    v.add_argument("--data")
    v.add_argument("--imgsz", type=int)
    v.add_argument("--batch", type=int, default=16)
    v.add_argument("--device")
    v.add_argument("--engine", choices=("onnxruntime", "openvino"), default=None,
                   help="runtime for an exported model: onnxruntime (default) or openvino (mAP of an OpenVINO deployment)")
    v.add_argument("--precision", choices=("f32", "bf16", "f16"), default=None,
                   help="OpenVINO inference precision (default: OpenVINO's own, bf16 on AVX512_BF16/AMX CPUs)")
    v.add_argument("--json", action="store_true")
    v.add_argument("--trust-checkpoint", action="store_true",
                   help="fully unpickle a local .pt the safe loader refuses (only files you trust: it can run code)")
    v.set_defaults(func=_val)


def _yolact_data(args: argparse.Namespace) -> str:
    """COCO JSON + image folders given YOLACT-style -> an Ultralytics segment data set next to the run."""
    from pathlib import Path

    from sparse_core.data.prepare import prepare_dataset
    from sparse_core.errors import UserError

    given = {k: getattr(args, k) for k in ("train_info", "validation_info", "train_images", "validation_images")}
    missing = [f"--{k}" for k, v in given.items() if not v]
    if missing:
        raise UserError(f"YOLACT-style data needs all four of --train_info --validation_info --train_images "
                        f"--validation_images (missing {' '.join(missing)})")
    out = Path(args.project) / f"{args.name}-data"
    if (out / "data.yaml").is_file():
        return str(out / "data.yaml")
    stage = Path(args.project) / f".{args.name}-coco-src"
    for sub in ("annotations", "images"):
        (stage / sub).mkdir(parents=True, exist_ok=True)
    links = {stage / "annotations" / "instances_train.json": given["train_info"],
             stage / "annotations" / "instances_val.json": given["validation_info"],
             stage / "images" / "train": given["train_images"], stage / "images" / "val": given["validation_images"]}
    for link, target in links.items():
        if not Path(target).exists():
            raise UserError(f"{target}: not found")
        if link.is_symlink():
            link.unlink()
        link.symlink_to(Path(target).resolve())
    prepare_dataset(stage, "coco", out, task="segment")
    return str(out / "data.yaml")


def _train(args: argparse.Namespace) -> int:
    from sparse_core.integrations.ultralytics import train
    from sparse_core.safe_load import trusting

    if any(getattr(args, k) for k in ("train_info", "validation_info", "train_images", "validation_images")):
        args.data = _yolact_data(args)
    with trusting([args.model, args.teacher, args.resume], args.trust_checkpoint):
        summary = train(model=args.model, data=args.data, recipe=args.recipe, recipe_args=args.recipe_args,
                        epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, workers=args.workers,
                        gradient_accum_steps=args.gradient_accum_steps, project=args.project, name=args.name,
                        resume=args.resume, seed=args.seed, zoo=args.zoo, plots=args.plots, device=args.device,
                        mlflow=args.mlflow, experiment=args.experiment, teacher=args.teacher)
    _print(summary, args.json)
    return 0


def _val(args: argparse.Namespace) -> int:
    from sparse_core.errors import UserError
    from sparse_core.integrations.ultralytics import val
    from sparse_core.safe_load import trusting

    if args.engine or args.precision:
        if str(args.weights).endswith(".pt"):
            raise UserError(f"--engine/--precision: {args.weights} is a checkpoint; expected an exported .onnx or "
                            "deployment folder (export it with `sparsepipe export`)")
        if not args.data:
            raise UserError("val needs --data D.yaml")
        from sparse_core.onnx_val import val_onnx

        _print(val_onnx(args.weights, args.data, imgsz=args.imgsz, batch=None, engine=args.engine or "onnxruntime",
                        precision=args.precision), args.json)
        return 0
    with trusting([args.weights], args.trust_checkpoint):
        result = val(args.weights, data=args.data, imgsz=args.imgsz, batch=args.batch, device=args.device)
    _print(result, args.json)
    return 0


def _print(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    for key in ("map50", "map50_95", "mask_map50", "mask_map50_95", "sparsity", "epochs", "save_dir"):
        if key in summary:
            value = summary[key]
            print(f"{key:>14}: {value:.4f}" if isinstance(value, float) else f"{key:>14}: {value}")

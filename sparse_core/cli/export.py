"""``sparsepipe export --weights W --out DIR [--imgsz N] [--batch N] [--opset N] [--json]
[--engine onnxruntime|openvino|deepsparse [--float F] [--precision auto|float|int8] [--engine-precision P]]``."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a checkpoint to an ONNX deployment folder",
        description="Write DIR/model.onnx (FP32, or QDQ INT8 for QAT checkpoints), recipe.yaml, data.yaml, export.json.",
    )
    p.add_argument("--weights", required=True, help="sparsepipe/Ultralytics .pt checkpoint")
    p.add_argument("--out", required=True, help="deployment folder to write (replaced atomically if it exists)")
    p.add_argument("--imgsz", type=int, default=None, help="square input size, a multiple of the stride (default: training imgsz)")
    p.add_argument("--batch", type=int, default=1, help="static batch size (default 1)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..21 (default 17)")
    p.add_argument("--no-simplify", dest="simplify", action="store_false", help="skip onnxslim graph simplification")
    p.add_argument("--data", default=None, help="data yaml to score a quantized export on (default: the checkpoint's "
                   "training data): mAP50-95 of PyTorch fake-quant vs onnxruntime vs OpenVINO")
    p.add_argument("--allow-drop", action="store_true", help="keep an export that loses more than 1 point mAP50-95 "
                   "on onnxruntime or OpenVINO (flagged in export.json and MLflow) instead of failing")
    p.add_argument("--mlflow", metavar="URI", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI): log the "
                   "deployment folder into the run that trained the checkpoint")
    p.add_argument("--register", metavar="NAME", help="register the exported model in the MLflow model registry")
    p.add_argument("--alias", help="alias for the registered version (e.g. candidate)")
    p.add_argument("--json", action="store_true", help="print export.json as one JSON line last")
    p.add_argument("--engine", default=None, help="target engine (onnxruntime, openvino, deepsparse): time every "
                   "form of the model on this machine and ship the fastest that holds accuracy (deployment.json "
                   "records the table, the CPU ISA and why; the others stay under candidates/)")
    p.add_argument("--float", dest="float_weights", metavar="F", default=None, help="with --engine and a QAT "
                   "--weights: the float checkpoint QAT started from, a candidate too")
    p.add_argument("--precision", default="auto", help="with --engine: auto (default: fastest within the accuracy "
                   "gate), float or int8 (only that form may ship)")
    p.add_argument("--engine-precision", default=None, help="with --engine openvino: f32, bf16 or f16 (default: "
                   "OpenVINO's own, bf16 on AVX512_BF16/AMX CPUs)")
    p.add_argument("--seconds", type=float, default=5.0, help="with --engine: timed seconds per candidate (default 5)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="fully unpickle a local .pt the safe loader refuses (only files you trust: it can run code)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparse_core.export import export_model
    from sparse_core.safe_load import trusting

    if args.engine is not None:
        return _run_for_engine(args)
    for flag, value in (("--float", args.float_weights), ("--engine-precision", args.engine_precision)):
        if value is not None:
            from sparse_core.errors import UserError

            raise UserError(f"{flag}: given without --engine; expected --engine onnxruntime|openvino|deepsparse")
    with trusting([args.weights], args.trust_checkpoint):
        info = export_model(args.weights, args.out, imgsz=args.imgsz, batch=args.batch, opset=args.opset,
                            simplify=args.simplify, data=args.data, allow_drop=args.allow_drop)
    ins, outs = info["inputs"][0], info["outputs"]
    print(f"exported {args.weights} -> {args.out}/model.onnx ({'QDQ INT8' if info['quantized'] else 'FP32'}, opset {info['opset']})")
    print(f"  input {ins['name']} {ins['shape']}; outputs " + ", ".join(f"{o['name']} {o['shape']}" for o in outs))
    print(f"  size {info['size_bytes'] / 1e6:.2f} MB, gzip {info['size_gzip_bytes'] / 1e6:.2f} MB; conv weight sparsity "
          f"{info['sparsity']:.2%} ({info['zeros']} zeros); parity max abs diff {info['parity_max_abs_diff']:.2e}")
    if info["ort_optimized"]["integer_ops"]:
        print(f"  onnxruntime integer kernels: {info['ort_optimized']['integer_ops']}")
    acc = info.get("accuracy") or {}
    if "map50_95" in acc:
        m = acc["map50_95"]
        print(f"  mAP50-95 PyTorch fake-quant {m['pytorch_fake_quant']:.4f}, onnxruntime {m['onnxruntime']:.4f}, "
              f"OpenVINO ({acc['openvino_precision']}) {m['openvino']:.4f}"
              + ("  FLAGGED: drop over 1 point (--allow-drop)" if acc["flagged"] else ""))
    elif acc:
        print(f"  accuracy check skipped: {acc['skipped']}")
    from sparse_core.errors import UserError
    from sparse_core.tracking.record import record_export

    if args.register and not (args.mlflow or __import__("os").environ.get("MLFLOW_TRACKING_URI")):
        raise UserError("--register needs an MLflow tracking URI (--mlflow URI or MLFLOW_TRACKING_URI)")
    recorded = record_export(args.out, info, args.mlflow, register=args.register, alias=args.alias)
    if recorded.get("registered"):
        reg = recorded["registered"]
        print(f"  registered {reg['name']} version {reg['version']} (run {reg['run_id']})")
    info.update(recorded)
    if args.json:
        print(json.dumps(info))
    return 0


def _run_for_engine(args: argparse.Namespace) -> int:
    """``--engine``: every candidate exported, timed on this machine, the chosen one shipped (``export.choose``)."""
    from sparse_core.errors import UserError
    from sparse_core.export import choose
    from sparse_core.safe_load import trusting

    choose.check_precision(args.precision)
    if args.engine_precision is not None and args.engine != "openvino":
        raise UserError(f"--engine-precision: {args.engine_precision!r} is for --engine openvino; got --engine "
                        f"{args.engine} (onnxruntime and DeepSparse have no precision setting)")
    if not args.seconds > 0:
        raise UserError(f"--seconds: {args.seconds} is invalid; expected a number > 0")
    files = [args.weights] + ([args.float_weights] if args.float_weights else [])
    with trusting(files, args.trust_checkpoint):
        d = choose.export_for_engine(args.weights, args.out, args.engine, float_weights=args.float_weights,
                                     precision=args.precision, engine_precision=args.engine_precision,
                                     data=args.data, allow_drop=args.allow_drop, imgsz=args.imgsz, batch=args.batch,
                                     opset=args.opset, seconds=args.seconds)
    cap = f", oneDNN capped at {d['isa_cap']}" if d["isa_cap"] else ""
    print(f"chose {d['chosen']} for {d['engine']} ({d['engine_precision']}{cap}) on {d['cpu']['model']} "
          f"({d['cpu_isa']}) -> {args.out}/model.onnx")
    print("\n".join(choose.table(d)))
    print(f"why: {d['why']}")
    if args.register:
        if not (args.mlflow or __import__("os").environ.get("MLFLOW_TRACKING_URI")):
            raise UserError("--register needs an MLflow tracking URI (--mlflow URI or MLFLOW_TRACKING_URI)")
        from sparse_core.tracking.registry import register_model

        reg = register_model(args.out, args.register, alias=args.alias, tracking_uri=args.mlflow,
                             tags=choose.version_tags(d))
        print(f"  registered {reg['name']} version {reg['version']} (run {reg['run_id']})")
        d["registered"] = reg
    if args.json:
        print(json.dumps(d))
    return 0

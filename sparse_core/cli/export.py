"""``sparsepipe export --weights W --out DIR [--imgsz N] [--batch N] [--opset N] [--json]``."""

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
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="fully unpickle a local .pt the safe loader refuses (only files you trust: it can run code)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparse_core.export import export_model
    from sparse_core.safe_load import trusting

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

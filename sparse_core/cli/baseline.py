"""``sparsepipe baseline openvino-int8 DENSE.pt --data D --out DIR``: the alternative users already have."""

from __future__ import annotations

import json

from sparse_core.baseline import openvino_int8_baseline


def register(subparsers) -> None:
    """``sparsepipe baseline openvino-int8 DENSE.pt --data D --out DIR``."""
    p = subparsers.add_parser("baseline", help="build the alternatives users already have, as deployment folders")
    sub = p.add_subparsers(dest="baseline_command", metavar="KIND", required=True)
    b = sub.add_parser("openvino-int8", help="Ultralytics' `export format=openvino int8=True`: NNCF PTQ, head float")
    b.add_argument("weights", metavar="DENSE.pt", help="dense FP32 checkpoint (ours or Ultralytics')")
    b.add_argument("--data", required=True, help="Ultralytics data yaml (calibration images from its train split)")
    b.add_argument("--out", required=True, help="deployment folder to write")
    b.add_argument("--imgsz", type=int, default=None, help="input size (default: the checkpoint's training size)")
    b.add_argument("--calib", type=int, default=300, help="calibration images (default 300, as Ultralytics)")
    b.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    b.add_argument("--json", action="store_true", help="print export.json as one JSON line last")
    b.set_defaults(func=_run)


def _run(args) -> int:
    info = openvino_int8_baseline(args.weights, args.data, args.out, imgsz=args.imgsz, calib=args.calib,
                                  seed=args.seed)
    print(f"baseline {args.out}/model.onnx: NNCF INT8 from {args.weights}, {info['calibration_images']} calibration "
          f"images, {info['ignored_scope']} head ops kept float, {info['size_gzip_bytes'] / 1e6:.2f} MB gzip")
    if args.json:
        print(json.dumps(info, default=str))
    return 0

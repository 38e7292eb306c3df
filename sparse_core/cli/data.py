"""``sparsepipe data synth|prepare``."""

from __future__ import annotations

import argparse
import json


def _synth(args: argparse.Namespace) -> int:
    from sparse_core.data.synth import synth_dataset

    path = synth_dataset(args.out, task=args.task, n_train=args.train, n_val=args.val, imgsz=args.imgsz,
                         seed=args.seed, n_classes=args.classes, preset=args.preset)
    print(json.dumps({"data": str(path), "train": args.train, "val": args.val, "imgsz": args.imgsz,
                      "task": args.task, "preset": args.preset}) if args.json else path)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from sparse_core.data.prepare import prepare_dataset

    classes = [c.strip() for c in args.classes.split(",")] if args.classes is not None else None
    stats = prepare_dataset(args.src, args.format, args.out, task=args.task, val_fraction=args.val_fraction,
                            classes=classes, strict=args.strict)
    if args.json:
        print(json.dumps(stats))
    else:
        images = ", ".join(f"{k} {v}" for k, v in stats["images"].items())
        print(f"prepared {args.out}: images {images}; {stats['instances']} instances; "
              f"content hash {stats['content_hash'][:16]}")
    return 0


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="generate or prepare data sets")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    s = sub.add_parser("synth", help="write a synthetic Ultralytics data set (coloured shapes)")
    s.add_argument("out", help="output folder (new or empty; an earlier synth output is replaced)")
    s.add_argument("--task", choices=["detect", "segment"], default="detect")
    s.add_argument("--train", type=int, default=64, help="training images")
    s.add_argument("--val", type=int, default=16, help="validation images")
    s.add_argument("--imgsz", type=int, default=128, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--classes", type=int, default=None,
                   help="number of classes (default: 3 for easy, 12 for hard)")
    s.add_argument("--preset", choices=["easy", "hard"], default="easy",
                   help="easy: coloured shapes (demo, tests); hard: clutter, hard negatives, small/overlapping/"
                   "truncated objects (accuracy claims)")
    s.add_argument("--json", action="store_true", help="print the data yaml path etc. as one JSON object")
    s.set_defaults(func=_synth)

    p = sub.add_parser("prepare", help="validate a YOLO/COCO/VOC data set and write an Ultralytics one")
    p.add_argument("src", help="source: data.yaml or folder (yolo), .json or folder (coco), VOC root (voc)")
    p.add_argument("--format", required=True, choices=["yolo", "coco", "voc"])
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--task", choices=["detect", "segment"], default="detect")
    p.add_argument("--val-fraction", "--val_fraction", type=float, default=0.2, dest="val_fraction",
                   help="share of images for val when the source has no val split")
    p.add_argument("--classes", help="comma-separated class names: order = class ids")
    p.add_argument("--strict", action="store_true", help="stop at the first problem")
    p.add_argument("--json", action="store_true", help="print the stats as one JSON object on the last line")
    p.set_defaults(func=_prepare)

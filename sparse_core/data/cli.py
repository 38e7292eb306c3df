"""``sparsepipe data synth|prepare``."""

from __future__ import annotations

import argparse
import json


def _synth(args: argparse.Namespace) -> int:
    from sparse_core.data.synth import synth_dataset

    path = synth_dataset(args.out, task=args.task, n_train=args.train, n_val=args.val, imgsz=args.imgsz,
                         seed=args.seed, n_classes=args.classes)
    print(path)
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
    s.add_argument("--classes", type=int, default=3, help="number of classes (shape/colour pairs)")
    s.set_defaults(func=_synth)

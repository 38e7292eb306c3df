"""``sparsepipe import sparseml CKPT --out DIR``: a SparseML 1.x checkpoint → one of ours (see importer.py)."""

from __future__ import annotations

import argparse
import json


def _sparseml(args: argparse.Namespace) -> int:
    from sparse_core.sparseml_compat import import_sparseml

    summary = import_sparseml(args.checkpoint, args.out)
    if args.json:
        print(json.dumps(summary))
        return 0
    kind = "pruned + QAT" if summary["quantized"] else "float"
    print(f"imported {summary['source']} -> {args.out}/{summary['checkpoint']} ({kind}, {summary['weights']} "
          f"weights, epoch {summary['epoch']}, sparsity {summary['sparsity']:.2%})")
    if summary["resumable"]:
        print("  continue the carried recipe: "
              f"sparsepipe train --resume {args.out}/{summary['checkpoint']} --data DATA")
    else:
        print(f"  not resumable: {summary['note']}")
    return 0


def register(subparsers) -> None:
    imp = subparsers.add_parser("import", help="import checkpoints from other tools (SparseML 1.x)")
    sub = imp.add_subparsers(dest="import_command", metavar="SOURCE", required=True)
    p = sub.add_parser("sparseml", help="a SparseML Ultralytics checkpoint (source: sparseml) -> our checkpoint",
                       description="Rebuild the model from the checkpoint's model_yaml, apply its recipe's "
                       "structure at its epoch with sparsepipe's modifiers, load the weights, and write "
                       "DIR/weights/last.pt (+ recipe.yaml, import.json). Reads the file as data (torch "
                       "weights_only); SparseML is not needed.")
    p.add_argument("checkpoint", help="SparseML .pt (last.pt/best.pt of sparseml.ultralytics.train, SparseZoo "
                   "training/model.pt)")
    p.add_argument("--out", required=True, help="folder to write (new, empty, or an earlier import)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.set_defaults(func=_sparseml)

"""``sparsepipe zoo publish|fetch|list|import``."""

from __future__ import annotations

import argparse
import json


def _publish(args: argparse.Namespace) -> int:
    from sparse_core.zoo import publish

    manifest = publish(args.src, args.stub, zoo=args.zoo, overwrite=args.overwrite, compress=args.xz)
    if args.json:
        print(json.dumps(manifest))
    else:
        size = sum(f["size"] for f in manifest["files"])
        print(f"published {manifest['stub']}: {len(manifest['files'])} files, {size} bytes "
              f"({', '.join(f['path'] for f in manifest['files'])})")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from sparse_core.zoo import fetch

    path = fetch(args.stub, out=args.out, zoo=args.zoo)
    print(json.dumps({"stub": args.stub, "path": str(path)}) if args.json else path)
    return 0


def _list(args: argparse.Namespace) -> int:
    from sparse_core.zoo import list_stubs
    from sparse_core.zoo.store import zoo_uri

    stubs = list_stubs(args.zoo)
    if args.json:
        print(json.dumps({"zoo": zoo_uri(args.zoo), "stubs": stubs}))
    else:
        print("\n".join(stubs) if stubs else f"(no stubs in {zoo_uri(args.zoo)})")
    return 0


def _import(args: argparse.Namespace) -> int:
    from sparse_core.sparseml_compat.zoo_import import zoo_import

    manifest = zoo_import(args.folder, args.stub, zoo=args.zoo, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(manifest))
    else:
        print(f"imported {args.folder} as {manifest['stub']}: " + ", ".join(
            f"{name} <- {src}" for name, src in manifest["imported_from"].items()))
    return 0


def register(subparsers) -> None:
    zoo = subparsers.add_parser("zoo", help="publish, fetch and list models in the zoo (S3 or a folder)")
    sub = zoo.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)
    zoo_help = "zoo URI: s3://bucket/prefix or a folder (default $SPARSEPIPE_ZOO)"

    p = sub.add_parser("publish", help="upload a run or deployment folder under a stub")
    p.add_argument("src", help="run folder (weights/best.pt) or deployment folder (model.onnx)")
    p.add_argument("stub", help="zoo:DOMAIN/SUB_DOMAIN/ARCHITECTURE/FRAMEWORK/REPO/DATASET/SPARSE_TAG")
    p.add_argument("--zoo", help=zoo_help)
    p.add_argument("--overwrite", action="store_true", help="replace an existing entry")
    p.add_argument("--xz", action="store_true", help="store checkpoints xz-compressed (a zoo kept in git)")
    p.add_argument("--json", action="store_true", help="print the manifest as one JSON object on the last line")
    p.set_defaults(func=_publish)

    f = sub.add_parser("fetch", help="download and verify an entry (cached by sha256)")
    f.add_argument("stub")
    f.add_argument("--out", help="copy the entry here (default: print its path in the cache)")
    f.add_argument("--zoo", help=zoo_help)
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=_fetch)

    imp = sub.add_parser("import", help="import a SparseZoo-layout folder (training/model.pt, deployment/model.onnx, "
                         "recipe/recipe_*.md, model.md) as an entry; its SparseML checkpoint becomes ours")
    imp.add_argument("folder", help="folder as SparseZoo downloads are laid out")
    imp.add_argument("stub", help="stub to publish it under, e.g. the SparseZoo stub the seeds use")
    imp.add_argument("--zoo", help=zoo_help)
    imp.add_argument("--overwrite", action="store_true", help="replace an existing entry")
    imp.add_argument("--json", action="store_true", help="print the manifest as one JSON object on the last line")
    imp.set_defaults(func=_import)

    ls = sub.add_parser("list", help="list the stubs in the zoo")
    ls.add_argument("--zoo", help=zoo_help)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)

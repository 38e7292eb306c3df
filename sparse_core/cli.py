"""The ``sparsepipe`` console script.

Each subcommand lives in its own module exposing ``register(subparsers)``; that module adds its parser and sets
``func`` (called with the parsed args, returns an exit code). Modules are imported lazily so ``sparsepipe --help``
stays fast and a broken optional dependency only breaks its own command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Ultralytics reads this at import time: keep it offline (no update checks, hub calls or downloads).
os.environ.setdefault("YOLO_OFFLINE", "1")

from sparse_core.errors import UserError  # noqa: E402

# subcommand name -> module that registers it
COMMANDS = {
    "recipe": "sparse_core.recipe.cli",
    "train": "sparse_core.integrations.ultralytics.cli",
    "val": "sparse_core.integrations.ultralytics.cli",
    "export": "sparse_core.export.cli",
    "benchmark": "sparse_core.bench.cli",
    "data": "sparse_core.data.cli",
    "zoo": "sparse_core.zoo.cli",
    "models": "sparse_core.tracking.cli",
    "pipeline": "sparse_core.pipeline_cli",
    "cluster": "sparse_core.cluster",
    "baseline": "sparse_core.baseline",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsepipe", description="Sparsify YOLO models; run as KFP pipelines.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = [a for a in argv if not a.startswith("-")][:1]
    modules = sorted(set(COMMANDS.values())) if not wanted or wanted[0] not in COMMANDS else [COMMANDS[wanted[0]]]
    for mod_name in modules:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as err:  # command not built yet in this checkout
            if err.name and (err.name == mod_name or mod_name.startswith(err.name)):
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"sparsepipe {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"sparsepipe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``sparsepipe`` console script.

This package is the whole command line of ``sparse_core``: one module per command (``recipe``, ``train`` (+ ``val``),
``export``, ``benchmark``, ``data``, ``zoo``, ``models``, ``sparseml`` (``import``), ``baseline``), each exposing
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed args, returns an exit
code). The library modules they call never parse arguments. Other packages add commands through
``sparsepipe.commands`` entry points (name = a module with ``register``): ``pipeline`` and ``cluster`` come from
``pipelines/`` that way (they need kfp and kubernetes, which ``sparse_core`` never imports, nor names). Modules are
imported lazily so ``sparsepipe --help`` stays fast and a broken optional dependency only breaks its own command.

One error path for every command (``run_command``): bad input (a ``UserError``, an argparse error, a user path that
does not exist) is one stderr line and exit 2; anything else is an internal error: one stderr line naming a log
file that holds the traceback, and exit 1 (``--debug`` or ``SPARSEPIPE_DEBUG=1`` prints the traceback instead).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import os
import re
import sys
import traceback
from pathlib import Path

# Ultralytics reads this at import time: keep it offline (no update checks, hub calls or downloads).
os.environ.setdefault("YOLO_OFFLINE", "1")

from sparse_core.errors import UserError  # noqa: E402

# subcommand name -> module that registers it; more come from the ENTRY_POINTS group (see _command_modules)
COMMANDS = {
    "recipe": "sparse_core.cli.recipe",
    "train": "sparse_core.cli.train",
    "val": "sparse_core.cli.train",
    "export": "sparse_core.cli.export",
    "benchmark": "sparse_core.cli.benchmark",
    "data": "sparse_core.cli.data",
    "zoo": "sparse_core.cli.zoo",
    "models": "sparse_core.cli.models",
    "import": "sparse_core.cli.sparseml",
    "baseline": "sparse_core.cli.baseline",
    "analyze": "sparse_core.cli.analyze",
}
ENTRY_POINTS = "sparsepipe.commands"  # pyproject.toml: [project.entry-points."sparsepipe.commands"] name = "module"
# OS errors on a path the user named are bad input, not a bug in sparsepipe
_USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one stderr line (argparse prints usage + error: 2+ lines)."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _command_modules() -> dict[str, str]:
    """Subcommand -> module that registers it: ``COMMANDS``, then the installed ``sparsepipe.commands`` entry
    points (each names a module; the package that declares it owns the command)."""
    return {**COMMANDS, **{ep.name: ep.module for ep in importlib.metadata.entry_points(group=ENTRY_POINTS)}}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="sparsepipe", description="Sparsify YOLO models; run as KFP pipelines.")
    parser.add_argument("--debug", action="store_true", help="print tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = [a for a in argv if not a.startswith("-")][:1]
    commands = _command_modules()
    modules = sorted(set(commands.values())) if not wanted or wanted[0] not in commands else [commands[wanted[0]]]
    for mod_name in modules:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as err:  # command not built yet in this checkout
            if err.name and (err.name == mod_name or mod_name.startswith(err.name)):
                continue
            raise
        mod.register(sub)
    return parser


def error_log_dir() -> Path:
    home = os.environ.get("SPARSEPIPE_HOME") or "~/.sparsepipe"
    return Path(home).expanduser() / "logs"


def _write_traceback(command: str) -> Path | None:
    """The current exception's traceback in a log file (None if even that cannot be written)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    try:
        folder = error_log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"error-{command}-{stamp}.log"
        path.write_text(traceback.format_exc())
        return path
    except OSError:
        return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(err: BaseException) -> str:
    """The message's first line without terminal colour codes (Ultralytics colours its errors)."""
    text = _ANSI.sub("", str(err)).strip()
    return text.splitlines()[0] if text else ""


def run_command(func, args: argparse.Namespace, prog: str) -> int:
    """Call a command and map every outcome to an exit code and at most one stderr line."""
    debug = getattr(args, "debug", False) or os.environ.get("SPARSEPIPE_DEBUG") == "1"
    try:
        return int(func(args) or 0)
    except UserError as err:  # its own text: one line, or one line per problem where a check lists them all
        print(f"{prog}: error: {_ANSI.sub('', str(err)).strip() or type(err).__name__}", file=sys.stderr)
        return err.exit_code
    except _USER_OS_ERRORS as err:
        where = f"{err.filename}: " if err.filename is not None else ""
        print(f"{prog}: error: {where}{err.strerror or _first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: one line here, the traceback in a file
        if debug:
            traceback.print_exc()
            return 1
        log = _write_traceback(prog.split()[-1])
        where = f"traceback in {log}" if log else "traceback not saved"
        print(f"{prog}: internal error: {type(err).__name__}: {_first_line(err)[:300]} ({where}; "
              f"--debug prints it)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error already printed as one line (2)
        return int(exit_.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(args.func, args, f"sparsepipe {args.command}")


if __name__ == "__main__":
    sys.exit(main())

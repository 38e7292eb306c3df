"""Reading ``.pt`` files without running code from them (see docs/security.md).

A checkpoint is a pickle, and a pickle can call any Python function. Every ``.pt`` sparsepipe reads goes through
``load_pt``: ``torch.load(weights_only=True)`` with an allow-list of what Ultralytics/sparsepipe checkpoints hold:

- ``nn.Module`` subclasses defined in ``torch.nn``, ``torch.ao`` (QAT modules, fake-quant, observers),
  ``ultralytics.nn`` and ``sparse_core`` (quantization, structured, distillation). They are registered behind a proxy
  that only allocates (``cls.__new__``): the unpickler may rebuild a module from its saved ``__dict__`` but never
  run its ``__init__`` with arguments chosen by the file (an Ultralytics model ``__init__`` would ``eval`` a yaml);
- a few data types: Ultralytics' ``IterableSimpleNamespace`` (train args), numpy scalars/dtypes, ``pathlib``
  paths, ``getattr`` limited to a module's bound ``forward``/``type``, and the two forward hooks our QAT modules
  register (``HOOKS``).

Anything else (``os.system``, ``builtins.eval``, an unknown class) is refused before a byte is unpickled. A local
file the user names with ``--trust-checkpoint`` may still be read by full unpickling (``trusting``); a file from a
zoo, S3 or an MLflow registry never is: callers only ever trust the paths typed on the command line.

Ultralytics reads checkpoints itself (trainer setup, resume, validator); ``guard_ultralytics`` routes its loader
through ``load_pt`` so no path escapes the allow-list.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Iterator

import torch

from sparse_core.errors import UserError

MODULE_PREFIXES = ("torch.nn.", "torch.ao.", "ultralytics.nn.", "sparse_core.quantization.", "sparse_core.structured.",
                   "sparse_core.distillation.")
HOOKS = ("sparse_core.quantization.modules._quantize_input", "sparse_core.quantization.modules._quantize_output")
TRUST_FLAG = "--trust-checkpoint"
_TRUSTED: contextvars.ContextVar[frozenset] = contextvars.ContextVar("sparsepipe_trusted", default=frozenset())
_WARNED: set[Path] = set()  # one warning line per trusted file and process


class UnsafeCheckpoint(UserError):
    """The file needs full unpickling (it references code outside the allow-list)."""


def _restricted_getattr(obj, name):
    """``getattr`` as pickles of Ultralytics models use it: a module's bound ``forward`` (Ultralytics) or ``type``
    (QAT checkpoints saved before sparsepipe stopped copying it), nothing else; the unpickler never calls them."""
    if isinstance(obj, torch.nn.Module) and name in ("forward", "forward_fuse", "type"):
        return getattr(type(obj), name).__get__(obj)
    raise pickle.UnpicklingError(f"getattr({type(obj).__name__}, {name!r}) is not allowed in a checkpoint")


@functools.cache
def _new_only(cls: type) -> type:
    """A stand-in registered under ``cls``'s name: NEWOBJ and REDUCE both yield a bare ``cls`` instance."""
    return type(cls.__name__, (), {"__new__": lambda _proxy, *args, **kwargs: cls.__new__(cls)})


@functools.cache
def _data_globals() -> dict[str, Any]:
    import pathlib

    import numpy as np
    from ultralytics.utils import IterableSimpleNamespace

    scalar = np.float64(0).__reduce__()[0]
    out = {f"{c.__module__}.{c.__qualname__}": c for c in (IterableSimpleNamespace, np.dtype)}
    out.update({"numpy.core.multiarray.scalar": scalar, "numpy._core.multiarray.scalar": scalar,
                "builtins.getattr": _restricted_getattr, "ultralytics.yolo.utils.IterableSimpleNamespace":
                IterableSimpleNamespace})
    out.update({f"numpy.dtypes.{t.__name__}": t for t in {type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}})
    for name in HOOKS:  # forward hooks of QAT modules (pickled with the module)
        module, _, attr = name.rpartition(".")
        out[name] = getattr(importlib.import_module(module), attr)
    out.update({f"{m}.{c}": pathlib.PosixPath for m in ("pathlib", "pathlib._local")
                for c in ("PosixPath", "WindowsPath")})
    return out


def _resolve(name: str) -> list | None:
    """safe_globals entries for one global the file names, or None when it is not on the allow-list."""
    if name in _data_globals():
        return [(_data_globals()[name], name)]
    module, _, attr = name.rpartition(".")
    if not module.startswith(MODULE_PREFIXES):
        return None
    try:
        obj = getattr(importlib.import_module(module), attr, None)
    except Exception:  # noqa: BLE001 - no such module (or one that fails to import): not on the list
        return None
    if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == module):
        return None
    # the real class under a name no GLOBAL opcode can spell (it holds a newline): BUILD accepts its instances
    return [(_new_only(obj), name), (obj, f"sparsepipe\nbuild\n{name}")]


def refused_globals(path: str | os.PathLike) -> list[str]:
    """Names a checkpoint references that the allow-list refuses (reads the pickle opcodes, runs nothing)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except ValueError:  # not a torch.save zip (legacy format): only full unpickling could read it
        return ["<legacy non-zip format>"]
    return sorted(n for n in names if _resolve(n) is None)


def _safe_load(path: Path) -> Any:
    entries = []
    for name in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)):
        entries += _resolve(name)
    with torch.serialization.safe_globals(entries):
        return torch.load(path, map_location="cpu", weights_only=True)


def preflight(path: str | os.PathLike) -> bool:
    """Whether ``load_pt(path)`` will read ``path`` safely (True) or fully unpickle it because it is trusted (False);
    UserError when it would refuse it. Reads the pickle opcodes only: callers check inputs before any work starts."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        refused = refused_globals(path)
    except Exception as err:  # noqa: BLE001 - a truncated zip, random bytes...
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {str(err)[:120]})") from None
    if refused and path.resolve() not in _TRUSTED.get():
        raise UnsafeCheckpoint(
            f"{path}: refused: reading it needs full unpickling, which can run code from the file (it references "
            f"{', '.join(refused[:3])}{' ...' if len(refused) > 3 else ''}); if it is your own local file and you "
            f"trust it, pass {TRUST_FLAG}")
    return not refused


def load_pt(path: str | os.PathLike) -> Any:
    """``torch.load`` of ``path`` under the allow-list; full unpickling only for a path inside ``trusting``."""
    path = Path(path)
    safe = preflight(path)
    try:
        if safe:
            return _safe_load(path)
        if path.resolve() not in _WARNED:
            _WARNED.add(path.resolve())
            print(f"warning: {path}: loading with full unpickling ({TRUST_FLAG}): code in this file can run",
                  file=sys.stderr)
        return torch.load(path, map_location="cpu", weights_only=False)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {str(err)[:120]})") from None


def check_safe(path: str | os.PathLike, label: str) -> None:
    """Refuse a fetched checkpoint (zoo, S3, registry) that only full unpickling could read; reads opcodes only."""
    try:
        refused = refused_globals(path)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{label}: {Path(path).name} is not a readable PyTorch checkpoint ({type(err).__name__})") \
            from None
    if refused:
        raise UnsafeCheckpoint(f"{label}: refused checkpoint {Path(path).name}: it references {', '.join(refused[:3])}"
                               " (code outside the checkpoint allow-list); fetched files are never fully unpickled")


@contextlib.contextmanager
def trusting(paths, enabled: bool = True) -> Iterator[None]:
    """Within the block, these local files (only these, only existing files) may be fully unpickled."""
    files = [Path(p).resolve() for p in paths if enabled and p and not str(p).startswith(("zoo:", "s3://", "models:"))
             and Path(p).is_file()]
    token = _TRUSTED.set(_TRUSTED.get() | frozenset(files))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def guard_ultralytics() -> None:
    """Make Ultralytics' own checkpoint reads (trainer, resume, validator, strip_optimizer) use ``load_pt``, and its
    model-yaml parser build without ``eval`` (its restricted mode)."""
    import ultralytics.nn.tasks as tasks
    import ultralytics.utils.torch_utils as torch_utils

    if getattr(tasks.torch_safe_load, "sparsepipe_guard", False):
        return

    def torch_safe_load(weight, safe_only=None):
        ckpt = load_pt(weight)
        return (ckpt if isinstance(ckpt, dict) else {"model": getattr(ckpt, "model", ckpt)}), weight

    def torch_load(f, *args, **kwargs):
        return load_pt(f)

    torch_safe_load.sparsepipe_guard = True
    tasks.torch_safe_load = torch_safe_load
    torch_utils.torch_load = torch_load
    tasks.SAFE_LOAD = True  # model yamls: activation parsed without eval(), only known layer classes

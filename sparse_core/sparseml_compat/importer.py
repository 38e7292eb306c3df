"""``import_sparseml(ckpt, out)``: a SparseML checkpoint → one of our checkpoints, the way SparseML itself loads it.

SparseML rebuilds the model from ``model_yaml``, applies the recipe's structure at ``epoch`` and loads the state
dict. We do the same with our own modifiers: a ``RecipeManager`` over the carried recipe is initialized at the
checkpoint's epoch (QAT modules built by our QuantizationHandler, pruning executors positioned), the state is mapped
from SparseML's names (``names.our_name``) and loaded strictly, and each pruning mask is the weight's nonzeros (what
SparseML's masks leave behind). The written file is an Ultralytics checkpoint with a ``sparsepipe`` entry (see
``sparse_core.checkpoint``): the recipe, the manager state, ``quantized``, and ``sparseml_source`` lineage. An
unfinished checkpoint also carries the fp32 train state and the optimizer (mapped to our param-group order), so
``sparsepipe train --resume OUT/weights/last.pt`` continues the carried recipe from the next epoch.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from sparse_core.atomic import atomic_dir
from sparse_core.checkpoint import save_atomic
from sparse_core.data.hashing import file_sha256
from sparse_core.errors import UserError
from sparse_core.sparseml_compat import mismatch, names
from sparse_core.sparseml_compat.reader import SparseMLCheckpoint, read_checkpoint

WEIGHTS = "weights/last.pt"


def build_model(ck: SparseMLCheckpoint) -> torch.nn.Module:
    """The float Ultralytics model of ``model_yaml`` (detect or segment head)."""
    from sparse_core.integrations.ultralytics import offline

    offline.make_offline()
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    cfg = copy.deepcopy(ck.model_yaml)
    head = str(cfg.get("head", [[None]])[-1])
    cls = SegmentationModel if "Segment" in head else DetectionModel
    try:
        return cls(cfg=cfg, verbose=False).float()
    except Exception as err:  # noqa: BLE001 - a yaml naming modules this Ultralytics lacks
        raise UserError(f"{ck.path}: field 'model_yaml': Ultralytics cannot build it ({type(err).__name__}: "
                        f"{str(err)[:150]})") from None


def structure_epoch(ck: SparseMLCheckpoint, recipe) -> float:
    """SparseML applies the structure at ``epoch`` (the last finished epoch); a finished recipe at its end."""
    if ck.epoch >= 0:
        return float(ck.epoch)
    return float(recipe.num_epochs() or 0.0) if recipe is not None else 0.0


def rebuild(ck: SparseMLCheckpoint, state: dict[str, torch.Tensor]):
    """(model, recipe, manager state) with ``state`` loaded into the recipe's structure at the checkpoint's epoch."""
    import sparse_core.quantization  # noqa: F401  (registers the QuantizationModifier handler)
    from sparse_core.modifiers import RecipeManager
    from sparse_core.recipe import load_recipe

    model = build_model(ck)
    text = ck.carried_recipe()
    recipe = load_recipe(text) if text else None
    if recipe is None:
        names.load_mapped(model, state, str(ck.path))
        return model, None, None
    manager = RecipeManager(recipe, model, optimizer=None, steps_per_epoch=1)
    manager.initialize(epoch=structure_epoch(ck, recipe))
    saved = manager.state_dict()  # writes masks computed on the random init: overwritten by the load below
    mods = recipe.of_type("QuantizationModifier")
    names.load_mapped(model, state, str(ck.path), why=lambda module: mismatch.recipe_fields(module, model, mods))
    params = dict(model.named_parameters())
    for pruner in saved["pruners"]:
        if pruner.get("masks") is not None:
            pruner["masks"] = {n: params[n].detach() != 0 for n in pruner["names"]}
    manager.load_state_dict(saved)
    if _scheme_generation(manager):
        names.shift_zero_points(model, str(ck.path))
    state_out = manager.state_dict()
    manager.finalize()
    return model, recipe, state_out


def _scheme_generation(manager) -> bool:
    """True when QAT was built by a scheme-generation QuantizationModifier (SparseML's int8 fake quants)."""
    return any(getattr(h, "report", None) is not None and h.report.generation == "scheme" for _, h in manager.handlers)


def _train_args(ck: SparseMLCheckpoint, recipe, out: Path) -> dict:
    """SparseML's train_args restricted to what this Ultralytics accepts, pointed at ``out``."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    args = {k: v for k, v in ck.train_args.items() if k in DEFAULT_CFG_DICT and k not in ("cfg", "tracker")}
    epochs = recipe.num_epochs() if recipe is not None else None
    args.update(model=str(out / WEIGHTS), save_dir=str(out), resume=False, exist_ok=True,
                epochs=math.ceil(epochs) if epochs else args.get("epochs", 100), amp=False)
    args.setdefault("task", "segment" if "Segment" in str(ck.model_yaml.get("head")) else "detect")
    return args


def _lineage(ck: SparseMLCheckpoint, optimizer_note: str) -> dict:
    return {"path": str(ck.path.resolve()), "sha256": file_sha256(ck.path), "epoch": ck.epoch,
            "weights": ck.state_key, "version": ck.version, "date": ck.date,
            "train_args": {k: ck.train_args.get(k) for k in ("model", "data", "recipe", "recipe_args", "imgsz")},
            "optimizer": optimizer_note or "mapped"}


def _meta(ck, recipe, manager_state, model, args, lineage) -> dict[str, Any]:
    from sparse_core.quantization.modules import is_quantized

    return {
        "recipe": ck.carried_recipe(), "recipe_path": None, "recipe_args": {},
        "recipe_resolved": recipe.to_yaml() if recipe is not None else None,
        "recipe_sha256": recipe.sha256 if recipe is not None else None,
        "recipe_epoch": float(ck.epoch + 1) if ck.epoch >= 0 else structure_epoch(ck, recipe),
        "manager": manager_state, "quantized": is_quantized(model), "imgsz": args.get("imgsz"),
        "task": args["task"], "seed": int(args.get("seed") or 0), "base": str(ck.path),
        "sparseml_source": lineage, "sparsity_history": [],
    }


def import_sparseml(path: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Import ``path`` into the folder ``out`` (``weights/last.pt``, ``recipe.yaml``, ``import.json``); returns the
    summary written to ``import.json``."""
    ck = read_checkpoint(path)
    out = Path(out).absolute()
    model, recipe, manager_state = rebuild(ck, ck.state)
    args = _train_args(ck, recipe, out)
    model.args, model.names = args, getattr(model, "names", None) or {}
    optimizer, note, train_state = None, "checkpoint is finished (epoch -1): not resumable", None
    if ck.epoch >= 0:
        optimizer, note = names.map_optimizer(ck.optimizer, build_model(ck))
        live, _, _ = rebuild(ck, ck.model_state)
        if optimizer is not None:
            train_state = {"model": live.state_dict(), "ema": model.state_dict(), "optimizer": optimizer}
    meta = _meta(ck, recipe, manager_state, model, args, _lineage(ck, note))
    if train_state is not None:
        meta["train_state"] = train_state
    from ultralytics import __version__ as ul_version

    ckpt = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "version": ul_version, "epoch": ck.epoch,
            "best_fitness": ck.best_fitness, "model": None, "ema": model, "updates": ck.ema_updates or 0,
            "optimizer": optimizer, "train_args": args, "sparsepipe": meta}
    summary = _summary(ck, model, meta, train_state is not None, note)
    with atomic_dir(out, replace_if=lambda p: (p / "import.json").is_file()) as tmp:
        save_atomic(ckpt, tmp / WEIGHTS)
        if meta["recipe"]:
            (tmp / "recipe.yaml").write_text(meta["recipe"])
        (tmp / "import.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _summary(ck, model, meta, resumable: bool, note: str) -> dict[str, Any]:
    from sparse_core.sparsity import weight_sparsity

    overall, _ = weight_sparsity(model)
    return {"source": str(ck.path), "checkpoint": WEIGHTS, "epoch": ck.epoch, "recipe_epoch": meta["recipe_epoch"],
            "quantized": meta["quantized"], "weights": ck.state_key, "sparsity": overall, "resumable": resumable,
            "note": "" if resumable else note}


def resolve_sparseml(path: str | os.PathLike) -> Path:
    """The ``--model``/``--weights`` hook: a SparseML checkpoint → our import of it (cached by the file's sha256
    under the sparsepipe cache); any other path is returned unchanged."""
    from sparse_core.sparseml_compat.reader import is_sparseml_checkpoint

    path = Path(path)
    if path.suffix != ".pt" or not is_sparseml_checkpoint(path):
        return path
    from sparse_core.zoo.cache import cache_root

    out = cache_root().parent / "sparseml-imports" / file_sha256(path)[:16]
    if not (out / "import.json").is_file():
        import_sparseml(path, out)
    return out / WEIGHTS

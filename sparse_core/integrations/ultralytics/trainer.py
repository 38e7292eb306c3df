"""Recipe-driven training on the maintained Ultralytics trainer, through its callbacks (no fork).

One mixin serves every family (YOLOv3u/v5u/v8, detect and segment) because they all train through
``BaseTrainer``. What it adds:

- a ``RecipeManager`` built once Ultralytics has created its model, optimizer and EMA
  (``on_pretrain_routine_end``), stepped every batch with the fractional epoch;
- masks re-applied after every optimizer step (optimizer post-step hook, before Ultralytics updates its EMA) and
  to the EMA copy whenever they change, so ``best.pt`` (saved from the EMA) is exactly as sparse as the model;
- per-epoch reseeding of the data order and augmentation RNGs, and the full fp32 training state in ``last.pt``,
  so ``--resume`` after a crash continues the recipe bit-for-bit;
- atomic checkpoint writes carrying the recipe (see ``sparse_core.checkpoint``).
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparse_core import progress
from sparse_core.checkpoint import save_atomic
from sparse_core.safe_load import guard_ultralytics, load_pt
from sparse_core.integrations.ultralytics import offline  # noqa: F401  (sets YOLO_OFFLINE before ultralytics)
from sparse_core.integrations.ultralytics import qat  # QuantizationModifier wiring (EMA, AMP) — issue 3/8
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.utils.torch_utils import unwrap_model

guard_ultralytics()  # Ultralytics' own checkpoint reads (setup, resume, strip_optimizer) go through load_pt

LR_MODIFIERS = ("LearningRateFunctionModifier", "SetLearningRateModifier", "LearningRateModifier")


@dataclass
class SparseRun:
    """What the trainer needs beyond Ultralytics' own args."""

    recipe: Any = None  # sparse_core.recipe.Recipe | None
    seed: int = 0
    resume_meta: dict = field(default_factory=dict)  # sparsepipe entry of the checkpoint being resumed
    meta: dict = field(default_factory=dict)  # extra lineage stored in every checkpoint (base, data_hash, ...)
    callbacks: list = field(default_factory=list)  # (event, fn) pairs added to the trainer (tracking, ...)
    teacher: Any = None  # distillation teacher: checkpoint path, zoo: stub, "self", "disable" or None


class SparseTrainerMixin:
    """Adds the recipe lifecycle to an Ultralytics trainer class."""

    def __init__(self, *args, sparse: SparseRun, **kwargs):
        super().__init__(*args, **kwargs)
        self.sparse = sparse
        self.manager = None
        self.sparsity_history: list[tuple[float, float]] = list(sparse.resume_meta.get("sparsity_history", []))
        self._batch_i = 0
        for event, fn in (
            ("on_pretrain_routine_end", _setup_recipe),
            ("on_train_epoch_start", _epoch_start),
            ("on_train_batch_start", _batch_start),
            ("on_train_epoch_end", _epoch_end),
            ("on_train_end", _train_end),
            *sparse.callbacks,
            ("on_fit_epoch_end", progress.on_fit_epoch_end),  # last: the epoch is saved and recorded when it says so
        ):
            self.add_callback(event, fn)

    def get_model(self, cfg=None, weights=None, verbose=True):
        """A structurally thinned checkpoint trains as saved (its yaml no longer matches its widths)."""
        from sparse_core.structured.training import training_model

        model = training_model(self, weights)
        return model if model is not None else super().get_model(cfg=cfg, weights=weights, verbose=verbose)

    def _load_checkpoint_state(self, ckpt):
        """QAT / distillation resume: the recipe rebuilds the model and optimizer shape first, then ``_setup_recipe``
        loads the exact fp32 state; Ultralytics' own (strict, fp16) load would not match yet."""
        if not (self.resume and qat.needs_structure_first(self.sparse.resume_meta)):
            return super()._load_checkpoint_state(ckpt)
        self.best_fitness = ckpt.get("best_fitness")
        self.stopper.__dict__.update(ckpt.get("stopper") or {})
        if self.ema:
            self.ema.updates = ckpt.get("updates") or 0

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def sparse_meta(self, full_state: bool) -> dict:
        recipe = self.sparse.recipe
        meta = {
            **self.sparse.meta,
            "recipe": recipe.original_text if recipe else None,
            "recipe_path": recipe.path if recipe else None,
            "recipe_args": recipe.args if recipe else {},
            "recipe_resolved": recipe.to_yaml() if recipe else None,
            "recipe_sha256": recipe.sha256 if recipe else None,
            "recipe_epoch": self.manager.epoch if self.manager else float(self.epoch + 1),
            "manager": self.manager.state_dict() if self.manager else None,
            "quantized": bool(getattr(self.manager, "quantized", False)),
            "imgsz": self.args.imgsz,
            "task": self.args.task,
            "seed": self.sparse.seed,
            "sparsity_history": self.sparsity_history,
        }
        if full_state:  # exact resume: fp32 model/EMA/optimizer (Ultralytics keeps only fp16 copies)
            meta["train_state"] = {
                "model": {k: v.detach().clone() for k, v in unwrap_model(self.model).state_dict().items()},
                "ema": {k: v.detach().clone() for k, v in self.ema.ema.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
            }
        return meta

    def save_model(self):
        """Let Ultralytics write its checkpoint to temp paths, add our entry, then rename into place."""
        last, best = self.last, self.best
        tmpdir = Path(tempfile.mkdtemp(prefix=".save-", dir=self.wdir if self.wdir.exists() else None))
        self.last, self.best = tmpdir / last.name, tmpdir / best.name
        try:
            saved = super().save_model()
            for tmp, final in ((self.last, last), (self.best, best)):
                if tmp.exists():
                    ckpt = load_pt(tmp)
                    ckpt["sparsepipe"] = self.sparse_meta(full_state=final == last)
                    save_atomic(ckpt, final)
            return saved
        finally:
            self.last, self.best = last, best
            for f in tmpdir.glob("*"):
                f.unlink()
            tmpdir.rmdir()


def _setup_recipe(trainer) -> None:
    """Build the manager on the live model/optimizer; on resume restore the exact fp32 state and masks."""
    state = trainer.sparse.resume_meta.get("train_state") if trainer.resume else None
    structure_first = bool(state) and qat.needs_structure_first(trainer.sparse.resume_meta)
    if state and not structure_first:
        _load_train_state(trainer, state)
    recipe = trainer.sparse.recipe
    if recipe is None:
        return
    import sparse_core.distillation  # noqa: F401  (registers the distillation handlers, issue 3/8)
    from sparse_core.modifiers import RecipeManager

    trainer.manager = RecipeManager(
        recipe, unwrap_model(trainer.model), trainer.optimizer, steps_per_epoch=len(trainer.train_loader)
    )
    trainer.manager.teacher = trainer.sparse.teacher  # read by the distillation handlers
    trainer.manager.trainer = trainer
    trainer.manager.initialize(epoch=float(trainer.start_epoch))
    qat.after_manager_step(trainer)
    if structure_first:
        _load_train_state(trainer, state)
    if trainer.resume and trainer.sparse.resume_meta.get("manager"):
        trainer.manager.load_state_dict(trainer.sparse.resume_meta["manager"])
    trainer.manager.apply_masks()
    trainer.manager.apply_masks(trainer.ema.ema)


def _load_train_state(trainer, state: dict) -> None:
    unwrap_model(trainer.model).load_state_dict(state["model"])
    trainer.ema.ema.load_state_dict(state["ema"])
    trainer.optimizer.load_state_dict(state["optimizer"])


def _epoch_start(trainer) -> None:
    """Same data order and augmentations for epoch k whether or not the run was interrupted before it."""
    seed = trainer.sparse.seed * 100_003 + trainer.epoch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    loader = trainer.train_loader
    if getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(seed)
        if hasattr(loader, "reset"):
            loader.reset()
    trainer._batch_i = 0


def _batch_start(trainer) -> None:
    if trainer._batch_i == 0:  # the epoch's first batch: from here on, a stop costs this epoch
        progress.emit(event="epoch_start", epoch=int(trainer.epoch) + 1, epochs=int(trainer.epochs),
                      name=str(trainer.args.name))
    if trainer.manager is None:
        trainer._batch_i += 1
        return
    nb = max(len(trainer.train_loader), 1)
    if trainer.manager.update(trainer.epoch + trainer._batch_i / nb):
        trainer.manager.apply_masks(trainer.ema.ema)
    qat.after_manager_step(trainer)  # QAT start: EMA restructured, AMP off
    trainer._batch_i += 1


def _epoch_end(trainer) -> None:
    qat.epoch_end(trainer)  # EMA gets the live quantization grid before validation/saving
    model = unwrap_model(trainer.model)
    if trainer.manager is not None:
        overall, _ = trainer.manager.sparsity(model)
    else:
        from sparse_core.sparsity import weight_sparsity

        overall, _ = weight_sparsity(model)
    trainer.sparsity_history.append((float(trainer.epoch + 1), float(overall)))
    if trainer.sparse.recipe is not None and trainer.epoch <= settled_epoch(trainer.sparse.recipe):
        # best.pt must be a model in its final form (pruned to target, quantized): until the recipe has settled,
        # every epoch replaces best.pt, and fitness comparison starts from the first settled epoch.
        trainer.best_fitness = None


SETTLING = {"GMPruningModifier": "end_epoch", "MagnitudePruningModifier": "end_epoch",
            "GlobalMagnitudePruningModifier": "end_epoch", "QuantizationModifier": "start_epoch"}


def settled_epoch(recipe) -> float:
    """Index of the first epoch that trains the final form (masks at target, quantization on): best.pt is
    chosen among that epoch and later ones."""
    ends = [getattr(m, SETTLING[m.type_name], None) for m in recipe.of_type(*SETTLING)]
    ends = [float(e) for e in ends if e is not None and float(e) >= 0]
    return math.ceil(max(ends)) if ends else -1


def _train_end(trainer) -> None:
    """Finalize the recipe and drop the resume-only fp32 state from the finished checkpoints."""
    if trainer.manager is not None:
        trainer.manager.finalize()
    for path in (trainer.last, trainer.best):
        if path.exists():
            ckpt = load_pt(path)
            meta = ckpt.get("sparsepipe") or {}
            if "train_state" in meta:
                meta.pop("train_state")
                save_atomic(ckpt, path)
    from sparse_core.structured.training import thin_trained_checkpoints

    thin_trained_checkpoints(trainer)  # mask_type: filter recipes: remove the zeroed channels (no-op otherwise)


class SparseDetectionTrainer(SparseTrainerMixin, DetectionTrainer):
    """Detection (YOLOv3u, YOLOv5u, YOLOv8 ...) with a recipe."""


class SparseSegmentationTrainer(SparseTrainerMixin, SegmentationTrainer):
    """Instance segmentation (``-seg`` models, the YOLACT replacement) with a recipe."""


TRAINERS = {"detect": SparseDetectionTrainer, "segment": SparseSegmentationTrainer}

"""What the Ultralytics trainer must do when a QuantizationModifier changes the model mid-run.

When QAT starts (at a batch start, or at setup when resuming past the QAT start) the live model has been
prepared in place by the handler. Then:

- the EMA copy gets the same structure (``prepare_copy`` on the EMA itself, so its averaged weights are kept) and
  the live model's quantization state; the EMA's observers stay off and are re-synced at every epoch end, before
  Ultralytics validates and saves it — so ``best.pt``/``last.pt`` hold the live quantization grid;
- after every optimizer step the live quantization state is copied into the EMA (before Ultralytics averages
  it), since observers change buffer shapes;
- masks are applied to the new EMA (parameter names are unchanged, so they apply by name);
- AMP is turned off (fake quantization under fp16 autocast rounds scale/zero-point; SparseML disabled it too);
- the optimizer is kept: preparation keeps every Parameter object (checked), so its param groups (order, lr,
  weight decay), momentum and the manager's mask hooks remain valid — rebuilding it would only lose momentum.
"""

from __future__ import annotations

import torch
from ultralytics.utils.torch_utils import unwrap_model

import sparse_core.quantization  # noqa: F401  (registers the QuantizationModifier handler)


def quant_handlers(manager) -> list:
    from sparse_core.quantization import QuantizationHandler

    if manager is None:
        return []
    return [h for _, h in manager.handlers if isinstance(h, QuantizationHandler)]


def after_manager_step(trainer) -> None:
    """Call after ``manager.initialize``/``update``: propagate a QAT start to the trainer's EMA and AMP."""
    for handler in quant_handlers(trainer.manager):
        if handler.take_structure_change():
            _on_qat_start(trainer, handler)


def _on_qat_start(trainer, handler) -> None:
    from sparse_core.quantization import sync_quant_state

    if getattr(trainer, "world_size", 1) > 1:
        from sparse_core.errors import NotSupportedYet

        raise NotSupportedYet("QAT that starts mid-run is not supported with multi-GPU (DDP) training yet")
    model = unwrap_model(trainer.model)
    if trainer.ema is not None:
        handler.prepare_copy(trainer.ema.ema)
        trainer.ema.ema.to(next(model.parameters()).device)
        sync_quant_state(model, trainer.ema.ema)
        trainer.manager.apply_masks(trainer.ema.ema)
        # Observers resize scale/zero-point buffers (per-tensor [1] -> per-channel [C]) on the live model; copy
        # them into the EMA after every step, before Ultralytics averages the EMA, so the shapes always match.
        trainer.optimizer.register_step_post_hook(
            lambda *_: trainer.ema is not None and sync_quant_state(model, trainer.ema.ema))
    if trainer.amp:
        trainer.amp = False
        trainer.scaler = torch.amp.GradScaler(enabled=False)


def epoch_end(trainer) -> None:
    """Before Ultralytics validates/saves the EMA: give it the live model's quantization grid."""
    if trainer.ema is None or not any(h.started for h in quant_handlers(trainer.manager)):
        return
    from sparse_core.quantization import sync_quant_state

    sync_quant_state(unwrap_model(trainer.model), trainer.ema.ema)


def needs_structure_first(meta: dict) -> bool:
    """Resuming a checkpoint whose model/optimizer shape the recipe builds (QAT structure, distillation
    projections): Ultralytics' own state load must wait until the recipe rebuilt that shape."""
    manager = meta.get("manager") or {}
    handlers = manager.get("handlers") or []
    return bool(meta.get("quantized")) or any(h.get("projection") for h in handlers if isinstance(h, dict))

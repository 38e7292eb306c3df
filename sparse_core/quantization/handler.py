"""RecipeManager handler executing a QuantizationModifier: QAT from start_epoch, observers off at
disable_quantization_observer_epoch, BN statistics frozen at freeze_bn_stats_epoch.

The handler changes only the model the manager holds. Whoever owns copies of it (the Ultralytics trainer's EMA)
polls ``take_structure_change()`` after ``initialize``/``update`` and runs ``prepare_copy`` on them.
"""

from __future__ import annotations

import logging

from sparse_core.quantization import prepare as qp
from sparse_core.quantization.modules import freeze_bn_stats
from sparse_core.recipe.schemas import QuantizationModifier

LOGGER = logging.getLogger("sparsepipe.quantization")
_EPS = 1e-9


class QuantizationHandler:
    """State: started / observers_disabled / bn_frozen, saved in the manager's state_dict for exact resume."""

    def __init__(self, mod: QuantizationModifier, manager, where: str):
        self.mod, self.manager, self.where = mod, manager, where
        self.started = self.observers_disabled = self.bn_frozen = False
        self.report: qp.Report | None = None
        self._changed = False

    @property
    def start(self) -> float:
        return max(self.mod.start_epoch, 0.0)

    def initialize(self, epoch: float) -> None:
        self.update(epoch)

    def update(self, epoch: float) -> bool:
        """Advance to ``epoch``; True when the model structure changed (the manager then rebuilds its masks)."""
        changed = False
        if not self.started and epoch + _EPS >= self.start:
            self._prepare()
            changed = True
        if self.started:
            self._flags(epoch)
        return changed

    def _prepare(self) -> None:
        model = self.manager.model
        before = list(model.parameters())
        self.report = qp.prepare(model, self.mod, self.where)
        model.to(before[0].device)  # new fake-quant modules are built on the CPU; parameters keep their identity
        qp.check_same_parameters(before, model)
        self.started = self._changed = True
        self.manager.quantized = True  # read by the trainer's checkpoint metadata
        counts = self.report.counts()
        LOGGER.info("%s: QAT prepared (%s scheme): %s", self.where, self.report.generation, counts)
        for field, names in self.report.unmatched.items():
            LOGGER.warning("%s: %s: %d name(s) match no module of this model and were skipped: %s", self.where,
                           field, len(names), ", ".join(names))

    def _flags(self, epoch: float) -> None:
        m = self.mod
        if (not self.observers_disabled and m.disable_quantization_observer_epoch is not None
                and epoch + _EPS >= m.disable_quantization_observer_epoch):
            qp.disable_observers(self.manager.model)
            self.observers_disabled = True
        if not self.bn_frozen and m.freeze_bn_stats_epoch is not None and epoch + _EPS >= m.freeze_bn_stats_epoch:
            freeze_bn_stats(self.manager.model)
            self.bn_frozen = True

    def take_structure_change(self) -> bool:
        """True once after the model was prepared (copies of it must be prepared too)."""
        changed, self._changed = self._changed, False
        return changed

    def prepare_copy(self, model) -> None:
        """Give a copy of the original float model (an EMA) the same QAT structure; its observers stay off."""
        qp.prepare(model, self.mod, self.where)
        qp.disable_observers(model)
        if self.bn_frozen:
            freeze_bn_stats(model)

    def finalize(self) -> None:
        """The model stays fake-quantized (export turns it into QDQ); nothing to undo."""

    def state_dict(self) -> dict:
        return {"started": self.started, "observers_disabled": self.observers_disabled, "bn_frozen": self.bn_frozen}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the structure exists once QAT started; the flags are the saved ones (the observers' enable
        buffers come back with the model state), and the next ``update`` applies whatever is due at its epoch —
        exactly when the uninterrupted run applied it."""
        if state.get("started") and not self.started:
            self._prepare()
        self.observers_disabled = bool(state.get("observers_disabled"))
        self.bn_frozen = bool(state.get("bn_frozen"))
        if self.bn_frozen:  # a plain attribute of the QAT ConvBn2d, not part of the model state
            freeze_bn_stats(self.manager.model)

"""RecipeManager handlers for DistillationModifier / OutputDistillationModifier (output KD) and
PerLayerDistillationModifier (feature imitation), sharing one teacher forward per batch.

Integration: the student's Ultralytics criterion (``model.criterion``) is wrapped by ``DistillCriterion``; after
the task loss it runs the teacher once on the batch images (no grad) and lets every active term combine its loss
with the task loss — SparseML's formulas, so recipe gains mean what they meant there:

- output KD: ``(1 - hardness) * task + hardness * gain * KD`` (gain defaults to 1; SparseML had no gain here);
- per-layer: ``task + gain * sum_i mse(project_i(student_i), teacher_i)`` (normalised by the teacher's mean square).

The extra loss is appended as one more element of the loss vector the trainer sums, so Ultralytics' loss items
(box/cls/dfl) are unchanged. Projections (1x1 conv, no bias, per layer) are trained in an extra optimizer param
group appended after Ultralytics' groups (recipe ``param_groups`` indices keep their meaning) and saved in the
manager state. Student hooks are re-attached if QAT swaps a distilled module for its quantized form.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from sparse_core.distillation import losses
from sparse_core.distillation.teacher import load_teacher
from sparse_core.errors import NotSupportedYet, UserError

LOGGER = logging.getLogger("sparsepipe.distillation")
_EPS = 1e-9


def _window(mod, epoch: float) -> bool:
    start, end = max(mod.start_epoch, 0.0), mod.end_epoch
    return epoch + _EPS >= start and (end < 0 or epoch + _EPS < end)


class Distiller:
    """One per manager: the teacher, the wrapped criterion and the terms (handlers) that add losses."""

    def __init__(self, manager, where: str):
        self.manager = manager
        self.student = manager.model
        self.teacher = load_teacher(getattr(manager, "teacher", None), self.student, where)
        self.terms: list = []
        self.last: dict[str, float] = {}

    @staticmethod
    def of(manager, where: str) -> "Distiller":
        if getattr(manager, "_distiller", None) is None:
            manager._distiller = Distiller(manager, where)
        return manager._distiller

    def install(self) -> None:
        """Wrap the student's criterion (again if something replaced it)."""
        crit = getattr(self.student, "criterion", None)
        if isinstance(crit, DistillCriterion):
            return
        if crit is None:
            crit = self.student.init_criterion()
        self.student.criterion = DistillCriterion(crit, self)

    def combine(self, loss: torch.Tensor, preds, batch: dict) -> torch.Tensor:
        active = [t for t in self.terms if t.active]
        if self.teacher is None or not active:
            return loss
        with torch.no_grad():
            teacher_preds = self.teacher(batch["img"])
        extra = []
        for term in active:
            loss, add = term.apply(loss, preds, teacher_preds)
            extra.append(add)
        return torch.cat([loss.reshape(-1), torch.stack([e.reshape(()) for e in extra]).sum().reshape(1)])


class DistillCriterion:
    """The task criterion followed by the distillation terms (see module docstring)."""

    def __init__(self, base, distiller: Distiller):
        self.base, self.distiller = base, distiller

    def __call__(self, preds, batch):
        loss, items = self.base(preds, batch)
        return self.distiller.combine(loss, preds, batch), items

    def update(self):
        if hasattr(self.base, "update"):
            self.base.update()


class _Term:
    """A loss term of the shared Distiller (one per distillation modifier), on inside the modifier's epochs."""

    mod: Any
    distiller: Distiller | None
    active: bool

    def _join(self, epoch: float) -> None:
        """Add this term to the distiller and set whether it is active at ``epoch``."""
        self.distiller.terms.append(self)
        self.distiller.install()
        self.update(epoch)

    def _in_window(self, epoch: float) -> bool:
        self.active = self.distiller is not None and self.distiller.teacher is not None and _window(self.mod, epoch)
        return self.active


class OutputDistillationHandler(_Term):
    """DistillationModifier / OutputDistillationModifier: KL between head outputs at ``temperature``."""

    def __init__(self, mod, manager, where: str):
        if mod.distill_output_keys or mod.teacher_input_keys:
            raise NotSupportedYet(f"{where}: distill_output_keys / teacher_input_keys are not supported for YOLO "
                                  "models (the whole head output is distilled from the same images)")
        self.mod, self.manager, self.where = mod, manager, where
        self.active = False
        self.distiller: Distiller | None = None

    def initialize(self, epoch: float) -> None:
        self.distiller = Distiller.of(self.manager, self.where)
        if self.distiller.teacher is None:
            LOGGER.info("%s: --teacher disable: output distillation off", self.where)
            return
        self._join(epoch)

    def update(self, epoch: float) -> bool:
        if self._in_window(epoch):
            self.distiller.install()
        return False

    def apply(self, loss: torch.Tensor, preds, teacher_preds) -> tuple[torch.Tensor, torch.Tensor]:
        head = self.manager.model.model[-1]
        kd = losses.yolo_kd(preds, teacher_preds, self.mod.temperature, int(getattr(head, "reg_max", 1)))
        gain = 1.0 if self.mod.gain is None else float(self.mod.gain)
        h = float(self.mod.hardness)
        self.distiller.last["output_kd"] = float(kd.detach())
        return loss * (1.0 - h), h * gain * kd

    def finalize(self) -> None:
        """The distiller (shared with per-layer terms) is the trainer's to remove; nothing of this term's own."""

    def state_dict(self) -> dict:
        return {"type": "output"}

    def load_state_dict(self, state: dict) -> None:
        """Stateless: whether it is active follows from the epoch at the next ``update``."""


class _Cache:
    """Forward hook storing a layer's output while its term is active."""

    def __init__(self, store: dict, name: str, term):
        self.store, self.name, self.term = store, name, term

    def __call__(self, module, args, output):
        if self.term.active or self.term.probing:
            self.store[self.name] = output


class PerLayerDistillationHandler(_Term):
    """PerLayerDistillationModifier: feature imitation between named student/teacher layers."""

    def __init__(self, mod, manager, where: str):
        self.mod, self.manager, self.where = mod, manager, where
        s, t = mod.student_layer_names, mod.teacher_layer_names
        self.student_names = list(s if s is not None else (t or []))
        self.teacher_names = list(t if t is not None else self.student_names)
        self.active = self.probing = False
        self.distiller: Distiller | None = None
        self.student_out: dict[str, torch.Tensor] = {}
        self.teacher_out: dict[str, torch.Tensor] = {}
        self.hooked: dict[str, tuple[nn.Module, object]] = {}
        self.projections: nn.ModuleDict | None = None
        self._saved_projection: dict | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def initialize(self, epoch: float) -> None:
        self.distiller = Distiller.of(self.manager, self.where)
        teacher = self.distiller.teacher
        if teacher is None:
            LOGGER.info("%s: --teacher disable: per-layer distillation off", self.where)
            return
        if not self.student_names:
            self.student_names = _conv_layers(self.manager.model)
            self.teacher_names = _conv_layers(teacher)
        if len(self.student_names) != len(self.teacher_names):
            raise UserError(f"{self.where}: {len(self.student_names)} student layers but {len(self.teacher_names)} "
                            "teacher layers; set student_layer_names and teacher_layer_names to pairs")
        self._check_names(self.manager.model, self.student_names, "student_layer_names")
        self._check_names(teacher, self.teacher_names, "teacher_layer_names")
        self._hook_student()
        for name in self.teacher_names:
            teacher.get_submodule(name).register_forward_hook(_Cache(self.teacher_out, name, self))
        self._build_projections()
        self._join(epoch)

    def update(self, epoch: float) -> bool:
        if self._in_window(epoch):
            self._hook_student()  # QAT may have replaced a hooked block
            self.distiller.install()
        else:
            self.student_out.clear()
            self.teacher_out.clear()
        return False

    def finalize(self) -> None:
        for module, handle in self.hooked.values():
            handle.remove()
        self.hooked.clear()

    # -- helpers ---------------------------------------------------------------------------------------------
    def _check_names(self, model: nn.Module, names: list[str], field: str) -> None:
        have = dict(model.named_modules())
        missing = [n for n in names if n not in have]
        if missing:
            raise UserError(f"{self.where}: {field}: {len(missing)} layer(s) not in the model: "
                            f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")

    def _hook_student(self) -> None:
        model = self.manager.model
        for name in self.student_names:
            module = model.get_submodule(name)
            old = self.hooked.get(name)
            if old is not None and old[0] is module:
                continue
            if old is not None:
                old[1].remove()
            self.hooked[name] = (module, module.register_forward_hook(_Cache(self.student_out, name, self)))

    @torch.no_grad()
    def _build_projections(self) -> None:
        """1x1 conv per pair (student channels -> teacher channels), shapes from one probe forward."""
        student, teacher = self.manager.model, self.distiller.teacher
        stride = int(max(getattr(student, "stride", torch.tensor([32])).max(), 32))
        channels = student.yaml.get("channels", 3) if isinstance(getattr(student, "yaml", None), dict) else 3
        device = next(student.parameters()).device
        x = torch.zeros(1, channels, 2 * stride, 2 * stride, device=device)
        training = student.training
        observing = _pause_observers(student)
        self.probing = True
        try:
            student.eval()
            student(x)
            teacher(x)
        finally:
            self.probing = False
            student.train(training)
            _resume_observers(observing)
        pairs = list(zip(self.student_names, self.teacher_names))
        shapes = {s: (self.student_out[s].shape, self.teacher_out[t].shape) for s, t in pairs}
        self.student_out.clear()
        self.teacher_out.clear()
        if not self.mod.project_features:
            bad = [s for s, (a, b) in shapes.items() if a[1:] != b[1:]]
            if bad:
                raise UserError(f"{self.where}: project_features is false but student/teacher outputs differ for "
                                f"{', '.join(bad[:5])}; set project_features: true or pair layers of equal shape")
            return
        proj = nn.ModuleDict()
        for s, (a, b) in shapes.items():
            key = s.replace(".", "/")
            if len(a) == 4:
                proj[key] = nn.Conv2d(a[1], b[1], kernel_size=1, bias=False)
            else:
                proj[key] = nn.Linear(a[-1], b[-1], bias=False)
        self.projections = proj.to(device)
        if self._saved_projection is not None:
            self.projections.load_state_dict(self._saved_projection)
        self._add_param_group()

    def _add_param_group(self) -> None:
        opt = self.manager.optimizer
        if opt is None:
            return
        ref = opt.param_groups[0]
        lr = ref.get("initial_lr", ref["lr"])
        group = {"params": list(self.projections.parameters()), "lr": ref["lr"], "initial_lr": lr,
                 "weight_decay": 0.0, "param_group": "distillation"}
        if "momentum" in ref:
            group["momentum"] = ref["momentum"]
        opt.add_param_group(group)
        scheduler = getattr(getattr(self.manager, "trainer", None), "scheduler", None)
        if scheduler is not None and hasattr(scheduler, "base_lrs") and len(scheduler.base_lrs) < len(opt.param_groups):
            scheduler.base_lrs.append(lr)  # Ultralytics' LambdaLR scales every group from its base lr
            if hasattr(scheduler, "lr_lambdas"):
                scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])

    def apply(self, loss: torch.Tensor, preds, teacher_preds) -> tuple[torch.Tensor, torch.Tensor]:
        total = loss.new_zeros(())
        for s, t in zip(self.student_names, self.teacher_names):
            out = self.student_out.get(s)
            ref = self.teacher_out.get(t)
            if out is None or ref is None:
                raise RuntimeError(f"{self.where}: layer {s if out is None else t} produced no output this step")
            if self.projections is not None:
                out = self.projections[s.replace(".", "/")](out.float())
            total = total + losses.feature_mse(out, ref, self.mod.normalize, self.mod.epsilon)
        self.student_out.clear()
        self.teacher_out.clear()
        self.distiller.last["per_layer"] = float(total.detach())
        return loss, float(self.mod.gain) * total

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        proj = self.projections
        return {"type": "per_layer", "projection": {k: v.detach().cpu().clone() for k, v in proj.state_dict().items()}
                if proj is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("projection") or None
        if saved and self.projections is not None:
            self.projections.load_state_dict(saved)
        else:
            self._saved_projection = saved


def _conv_layers(model: nn.Module) -> list[str]:
    """SparseML's default layer set when no names are given: every Conv2d / Linear."""
    return [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]


def _pause_observers(model: nn.Module) -> list:
    from torch.ao.quantization import FakeQuantizeBase

    paused = [m for m in model.modules() if isinstance(m, FakeQuantizeBase) and bool(m.observer_enabled[0])]
    for m in paused:
        m.disable_observer()
    return paused


def _resume_observers(paused: list) -> None:
    for m in paused:
        m.enable_observer()

"""The distillation teacher named by ``--teacher``, with SparseML's words: a checkpoint path or ``zoo:`` stub,
``self`` (a frozen copy of the student as it is when the recipe starts) or ``disable`` (run the recipe without
distillation). A recipe with distillation modifiers and no ``--teacher`` is an error, never a silent no-op.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sparse_core.errors import UserError

DISABLE, SELF = "disable", "self"


def load_teacher(spec: str | None, student: nn.Module, where: str) -> nn.Module | None:
    """Teacher module (eval, frozen, on the student's device), or None for ``disable``."""
    if spec is None:
        raise UserError(f"{where}: the recipe distils from a teacher but no --teacher was given; expected "
                        "--teacher PATH.pt | zoo:STUB | self, or --teacher disable to train without distillation")
    if spec == DISABLE:
        return None
    if spec == SELF:
        teacher = copy.deepcopy(student)
        teacher.criterion = None
    else:
        from sparse_core.checkpoint import checkpoint_model, load_checkpoint

        teacher = copy.deepcopy(checkpoint_model(load_checkpoint(spec)))
    device = next(student.parameters()).device
    teacher = teacher.to(device).float().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    from torch.ao.quantization import FakeQuantizeBase

    for m in teacher.modules():  # a quantized teacher must not move its grid on our data
        if isinstance(m, FakeQuantizeBase):
            m.disable_observer()
    return teacher


def resolve_spec(spec: str | None, zoo: str | None = None) -> str | None:
    """Turn a ``zoo:`` stub into a local checkpoint path; other values pass through (checked for existence)."""
    if spec is None or spec in (DISABLE, SELF):
        return spec
    if spec.startswith("zoo:"):
        from sparse_core.zoo import resolve_model

        return str(resolve_model(spec, zoo=zoo))
    from pathlib import Path

    if not Path(spec).is_file():
        raise UserError(f"--teacher {spec}: not found; expected a checkpoint path, a zoo: stub, 'self' or 'disable'")
    from sparse_core.checkpoint import load_checkpoint

    load_checkpoint(spec)  # a bad or code-carrying teacher is refused now, not after the trainer has set up
    return spec


def teacher_device(teacher: nn.Module) -> torch.device:
    return next(teacher.parameters()).device

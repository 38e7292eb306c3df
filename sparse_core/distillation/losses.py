"""Distillation losses for YOLO heads and intermediate features.

Output KD (``yolo_kd``) compares the raw head predictions of student and teacher, as SparseML's KD did with its
softmax-KL at temperature T (times T²), but per head part so each term is a proper divergence:

- class logits are independent sigmoids (YOLOv8-style heads): binary KL between sigmoid(t/T) and sigmoid(s/T);
- box logits with DFL (``reg_max`` > 1) are 4 distributions over ``reg_max`` bins: KL of their softmaxes at T;
  without DFL the box regressions are compared with MSE.

Both are averaged over anchors (and classes / box sides) and images, so the value does not grow with image size.

Feature imitation (``feature_mse``) is SparseML's PerLayerDistillationModifier loss: mean squared difference,
divided by the teacher's mean square when ``normalize`` (plus epsilon).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparse_core.errors import UserError


def head_outputs(preds) -> dict:
    """The raw prediction dict of an Ultralytics head in any mode (train: dict; eval: (decoded, dict))."""
    if isinstance(preds, tuple) and len(preds) == 2 and isinstance(preds[1], dict):
        preds = preds[1]
    if isinstance(preds, dict) and "one2many" in preds:
        preds = preds["one2many"]
    if not isinstance(preds, dict) or "scores" not in preds or "boxes" not in preds:
        raise UserError("output distillation: the model's head returns no 'boxes'/'scores' predictions; expected an "
                        "Ultralytics detection or segmentation head (YOLOv3u/v5u/v8 style)")
    return preds


def _binary_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(teacher)
    # KL(p || q) for Bernoulli = BCE(q_logits, p) - H(p)
    return F.binary_cross_entropy_with_logits(student, p, reduction="none") - F.binary_cross_entropy_with_logits(
        teacher, p, reduction="none")


def yolo_kd(student_preds, teacher_preds, temperature: float, reg_max: int) -> torch.Tensor:
    """Output KD between two YOLO heads' raw predictions (see module docstring)."""
    s, t = head_outputs(student_preds), head_outputs(teacher_preds)
    if s["scores"].shape != t["scores"].shape or s["boxes"].shape != t["boxes"].shape:
        raise UserError(f"output distillation: student head predicts scores {tuple(s['scores'].shape)} / boxes "
                        f"{tuple(s['boxes'].shape)} but the teacher {tuple(t['scores'].shape)} / "
                        f"{tuple(t['boxes'].shape)}; expected a teacher with the same classes, reg_max and strides")
    temp = float(temperature)
    ss, ts = s["scores"].float() / temp, t["scores"].float().detach() / temp
    cls = _binary_kl(ss, ts).mean()
    sb, tb = s["boxes"].float(), t["boxes"].float().detach()
    if reg_max > 1:
        b, _, a = sb.shape
        log_q = F.log_softmax(sb.view(b, 4, reg_max, a) / temp, dim=2)
        log_p = F.log_softmax(tb.view(b, 4, reg_max, a) / temp, dim=2)
        box = (log_p.exp() * (log_p - log_q)).sum(2).mean()
    else:
        box = F.mse_loss(sb / temp, tb / temp)
    return (cls + box) * temp**2


def feature_mse(student: torch.Tensor, teacher: torch.Tensor, normalize: bool, epsilon: float) -> torch.Tensor:
    teacher = teacher.detach().float()
    mse = (student.float() - teacher).square().mean()
    if normalize:
        mse = mse / (teacher.square().mean() + epsilon)
    return mse

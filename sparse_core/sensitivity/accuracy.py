"""Accuracy of a YOLO model with one group's channels removed: val loss and mAP50-95 on a small fixed subset.

Ultralytics' own ``DetectionValidator`` / ``SegmentationValidator`` does the matching and the mAP (its
preprocess, postprocess, update_metrics, get_stats); the loop is ours so the data loaders are built once and
reused for every (group, level) instead of once per validation call. BatchNorm statistics are recalibrated on a
few training batches after each removal (the channels a removed group fed change every BN below it); the dense
reference gets the same recalibration, so a drop measures the removal, not the recalibration.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader, Subset

from sparse_core.errors import UserError


@dataclass
class Subsets:
    """Fixed loaders: ``calib`` (train split, no augmentation) for BN statistics, ``val`` for loss and mAP."""

    calib: DataLoader
    val: DataLoader
    validator: object


def _loader(dataset, n: int, batch: int) -> DataLoader:
    idx = list(range(min(n, len(dataset))))
    return DataLoader(Subset(dataset, idx), batch_size=batch, shuffle=False, num_workers=0,
                      collate_fn=dataset.collate_fn)


def build_subsets(model: torch.nn.Module, data: str, imgsz: int, val_images: int, calib_images: int,
                  batch: int = 8) -> Subsets:
    """Loaders over the first ``val_images`` val and ``calib_images`` train images (letterboxed, no augmentation)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.models.yolo.segment import SegmentationValidator

    task = getattr(model, "task", None) or ("segment" if type(model).__name__ == "SegmentationModel" else "detect")
    if task not in ("detect", "segment"):
        raise UserError(f"analyze: task '{task}' is not supported; expected a detection or segmentation model")
    try:
        info = check_det_dataset(data)
    except Exception as err:
        why = str(err).splitlines()[0][:150]
        raise UserError(f"--data: {data}: not a usable Ultralytics data yaml ({why})") from None
    cfg = get_cfg(overrides={"task": task, "imgsz": imgsz, "data": data, "plots": False, "verbose": False,
                             "rect": False, "batch": batch, "workers": 0, "save_json": False})
    stride = int(max(getattr(model, "stride", torch.tensor([32]))))
    sets = {}
    for split in ("train", "val"):
        sets[split] = build_yolo_dataset(cfg, info[split], batch, info, mode="val", stride=stride)
    cls = SegmentationValidator if task == "segment" else DetectionValidator
    validator = cls(args=dict(cfg))
    validator.data, validator.device = info, torch.device("cpu")
    validator.args.half = False
    val = _loader(sets["val"], val_images, batch)
    validator.dataloader = val
    return Subsets(_loader(sets["train"], calib_images, batch), val, validator)


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, calib: DataLoader) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) on ``calib``."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(bn.momentum, bn.training) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.eval()
    for bn in bns:
        bn.train()
    for batch in calib:
        model(batch["img"].float() / 255)
    for bn, (momentum, training) in zip(bns, saved):
        bn.momentum = momentum
        bn.train(training)
    model.eval()


def _criterion_ready(model: torch.nn.Module) -> None:
    from ultralytics.cfg import get_cfg

    if not isinstance(getattr(model, "args", None), (dict, SimpleNamespace)) or not hasattr(model.args, "box"):
        model.args = get_cfg()  # loss gains (box, cls, dfl) at Ultralytics' defaults
    model.criterion = None


@torch.no_grad()
def evaluate(model: torch.nn.Module, subsets: Subsets) -> dict[str, float]:
    """{'val_loss', 'map50_95', 'map50'} of ``model`` (eval mode, FP32) on the val subset."""
    v = subsets.validator
    model.eval()
    _criterion_ready(model)
    v.init_metrics(model)
    loss = 0.0
    for batch in subsets.val:
        batch = v.preprocess(batch)
        preds = model(batch["img"])
        loss += float(model.loss(batch, preds)[0].sum())
        v.update_metrics(v.postprocess(preds), batch)
    stats = v.get_stats()
    key = "metrics/mAP50-95(M)" if "metrics/mAP50-95(M)" in stats else "metrics/mAP50-95(B)"
    return {"val_loss": loss / max(len(subsets.val.dataset), 1), "map50_95": float(stats[key]),
            "map50": float(stats[key.replace("50-95", "50")])}


def removal_score(model: torch.nn.Module, subsets: Subsets, prune) -> dict[str, float]:
    """Metrics of a copy of ``model`` after ``prune(copy)`` and BN recalibration (``prune`` may be a no-op)."""
    m = copy.deepcopy(model)
    prune(m)
    recalibrate_bn(m, subsets.calib)
    return evaluate(m, subsets)

"""Does the exported INT8 model score what the PyTorch fake-quant model scored? mAP50-95 of the checkpoint
(PyTorch), of the ONNX file on onnxruntime, and of the same file on OpenVINO at its default precision (what a
deployment gets), on the training data's val split, all through Ultralytics' metric code.

A drop of more than ``MAX_DROP`` (1 point mAP50-95) on either engine fails the export, or with ``allow_drop`` is
flagged in export.json (and MLflow): an engine that fuses Q/DQ differently than the fake-quant model rounds, or
quantizes a head op it should not, shows up here rather than in the field.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sparse_core.errors import UserError

MAX_DROP = 0.01  # mAP50-95, absolute (1 point)


def resolve_data(data: str | os.PathLike | None, ckpt: dict) -> Path | None:
    """The data yaml to score on: ``data`` if given (must exist), else the checkpoint's training data if present."""
    if data:
        path = Path(data)
        if not path.is_file():
            raise UserError(f"--data: {path} not found; expected the data yaml the model was trained on")
        return path
    trained = (ckpt.get("train_args") or {}).get("data")
    return Path(trained) if isinstance(trained, str) and Path(trained).is_file() else None


def measure(ckpt: dict, folder: Path, data: Path, imgsz: int, allow_drop: bool, max_drop: float = MAX_DROP) -> dict[str, Any]:
    """mAPs and drops; raises RuntimeError past ``max_drop`` unless ``allow_drop`` (then ``flagged`` is True)."""
    from sparse_core.integrations.ultralytics.run import val
    from sparse_core.onnx_val import val_onnx

    from sparse_core.safe_load import trusting

    with tempfile.TemporaryDirectory(prefix="sparsepipe-acc-") as tmp:
        pt = Path(tmp) / "model.pt"
        torch.save(ckpt, pt)  # the validator loads a file; the dict may be an in-memory checkpoint
        with trusting([pt]):  # written just now from the checkpoint already loaded (and vetted) by export
            torch_map = val(str(pt), data=str(data), imgsz=imgsz, batch=1, device="cpu")["map50_95"]
    ort = val_onnx(folder, data)
    ov = val_onnx(folder, data, engine="openvino")
    drops = {"onnxruntime": round(torch_map - ort["map50_95"], 6), "openvino": round(torch_map - ov["map50_95"], 6)}
    worst = max(drops, key=drops.get)
    result = {
        "data": str(data),
        "map50_95": {"pytorch_fake_quant": torch_map, "onnxruntime": ort["map50_95"], "openvino": ov["map50_95"]},
        "openvino_precision": ov.get("inference_precision"),
        "drop": drops,
        "max_drop": max_drop,
        "flagged": drops[worst] > max_drop,
    }
    if result["flagged"] and not allow_drop:
        raise RuntimeError(
            f"exported model loses {drops[worst] * 100:.2f} points mAP50-95 on {worst} against the PyTorch fake-quant "
            f"model ({torch_map:.4f} -> {result['map50_95'][worst]:.4f}, limit {max_drop * 100:.1f}); "
            "rerun with --allow-drop to keep it flagged in export.json")
    return result

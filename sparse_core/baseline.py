"""The Ultralytics user's alternative, built in: ``yolo export format=openvino int8=True`` as a deployment folder.

What Ultralytics does (``ultralytics/engine/exporter.py``, OpenVINO INT8): NNCF post-training quantization with
``preset=MIXED`` (symmetric weights, asymmetric activations), ~300 calibration images from the train split, and an
ignored scope that keeps the head's post-processing in float (Add/Sub/Mul/Div of the box decode, the DFL, Sigmoid).
Here the same recipe runs on our FP32 ONNX export with NNCF's ONNX backend, so the result is a QDQ ``model.onnx``
that ``sparsepipe val``/``benchmark`` take like any deployment folder and OpenVINO compiles to INT8 kernels.
The ignored scope is ``sparse_core.export.openvino_int8.head_scope`` (built from the ONNX graph, see there); that
module also writes the same quantization as OpenVINO IR for the speed benchmark.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sparse_core.errors import UserError
from sparse_core.export.openvino_int8 import head_scope

def letterbox(path: Path, imgsz: int) -> np.ndarray:
    """Ultralytics' val preprocessing: keep aspect, pad with grey 114, RGB, /255, NCHW float32."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = imgsz / max(im.size)
        w, h = max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))
        canvas = Image.new("RGB", (imgsz, imgsz), (114, 114, 114))
        canvas.paste(im.resize((w, h), Image.BILINEAR), ((imgsz - w) // 2, (imgsz - h) // 2))
    return (np.asarray(canvas, np.float32) / 255.0).transpose(2, 0, 1)[None]


def calibration_images(data_yaml: str | os.PathLike, n: int, seed: int = 0) -> list[Path]:
    """``n`` training images, a seeded sample (Ultralytics takes the first batches of a shuffled loader)."""
    import yaml

    from sparse_core.data.yolo import split_images

    data_yaml = Path(data_yaml)
    cfg = yaml.safe_load(data_yaml.read_text()) or {}
    root = Path(cfg.get("path") or data_yaml.parent)
    root = root if root.is_absolute() else (data_yaml.parent / root)
    images = sorted(split_images(root, cfg.get("train") or [], f"{data_yaml}: train"))
    if not images:
        raise UserError(f"{data_yaml}: field 'train' holds no images; the baseline calibrates on the train split")
    pick = np.random.default_rng(seed).permutation(len(images))[:n]
    return [images[i] for i in sorted(pick)]


def _dataset(images: list[Path], imgsz: int, input_name: str) -> Iterator[dict[str, np.ndarray]]:
    for path in images:
        yield {input_name: letterbox(path, imgsz)}


def openvino_int8_baseline(weights: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
                           imgsz: int | None = None, calib: int = 300, seed: int = 0) -> dict[str, Any]:
    """Write the NNCF-PTQ INT8 deployment folder of a dense checkpoint; returns its export.json."""
    import nncf
    import onnx

    from sparse_core.atomic import atomic_dir
    from sparse_core.export import export_model
    from sparse_core.integrations.ultralytics.run import _check_data

    _check_data(data)
    if calib < 1:
        raise UserError(f"--calib {calib}: expected a positive number of calibration images")
    out = Path(out)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="sparsepipe-baseline-") as tmp:
        fp32 = export_model(weights, Path(tmp) / "fp32", imgsz=imgsz)
        if fp32["quantized"]:
            raise UserError(f"{weights}: already quantized (QAT); the baseline quantizes a dense FP32 checkpoint")
        proto = onnx.load(str(Path(tmp) / "fp32" / "model.onnx"))
        input_name = proto.graph.input[0].name
        images = calibration_images(data, calib, seed)
        ignored = head_scope(proto)
        dataset = nncf.Dataset(list(_dataset(images, fp32["imgsz"], input_name)))
        quantized = nncf.quantize(proto, dataset, preset=nncf.QuantizationPreset.MIXED,
                                  subset_size=len(images), ignored_scope=nncf.IgnoredScope(names=ignored))
        with atomic_dir(out, replace_if=lambda p: (p / "export.json").is_file()) as dst:
            for name in ("data.yaml", "recipe.yaml"):
                shutil.copy2(Path(tmp) / "fp32" / name, dst / name)
            onnx.save(quantized, str(dst / "model.onnx"))
            from sparse_core.export import graph

            info = {**fp32, "model": "model.onnx", "source": str(weights), "quantized": True,
                    "baseline": "openvino-int8",
                    "method": "NNCF post-training quantization (preset MIXED), head decode/DFL/Sigmoid kept float "
                              "(Ultralytics' `export format=openvino int8=True` recipe on the ONNX graph)",
                    "calibration_images": len(images), "calibration_seed": seed, "ignored_scope": len(ignored),
                    "nncf_version": nncf.__version__, **graph.file_sizes(dst / "model.onnx"),
                    "sha256": graph.sha256(dst / "model.onnx"), "node_types": graph.node_histogram(quantized),
                    "seconds": round(time.time() - t0, 1)}
            for key in ("ort_optimized", "parity_max_abs_diff", "parity_note", "weight_quantize_folded"):
                info.pop(key, None)
            (dst / "export.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info


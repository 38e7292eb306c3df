"""OpenVINO INT8 by NNCF post-training quantization: what Ultralytics' ``export format=openvino int8=True`` gives
our users, built here from a deployment's FP32 ONNX file so the benchmark can put it beside our QAT (PQ) export.

The ignored scope keeps the head's box decode and DFL in float (a fully INT8 YOLO head loses accuracy and broke an
engine in our tests). It is built from the node names of the graph at hand: Ultralytics' own rule is written for
its IR names, and copied onto ONNX names its prefix split is empty and matches every op.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

DECODE_OPS = ("Add", "Sub", "Mul", "Div", "Sigmoid", "Exp", "ReduceMax", "ReduceSum", "Concat", "Reshape", "Split",
              "Slice", "Softmax", "MatMul", "Transpose")


def head_scope(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes after the head's prediction convs: the DFL and the box/score decode (they stay float)."""
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    head = convs[-1].strip("/").split("/")[0] if convs else ""  # e.g. model.22
    out = []
    for n in proto.graph.node:
        parts = n.name.strip("/").split("/")
        if parts[0] != head or n.op_type not in DECODE_OPS:
            continue
        if "/dfl/" in n.name or len(parts) == 2:  # DFL, or an op of the head itself (not inside a cv2/cv3 branch)
            out.append(n.name)
    return out


def ptq(onnx_path: str | os.PathLike, out_xml: str | os.PathLike, images: list[np.ndarray]) -> dict:
    """NNCF-quantize ``onnx_path`` for OpenVINO on ``images`` (NCHW float32, the model's input shape); writes IR."""
    import nncf
    import openvino as ov

    proto = onnx.load(str(onnx_path), load_external_data=False)
    ignored = head_scope(proto)
    model = ov.convert_model(str(onnx_path))
    quantized = nncf.quantize(model, nncf.Dataset(images), preset=nncf.QuantizationPreset.MIXED,
                              subset_size=len(images), ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))
    Path(out_xml).parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return {"ignored_nodes": len(ignored), "calibration_images": len(images), "nncf": nncf.__version__}


"""Will INT8 pay on this engine and CPU? Asked before paying for QAT, in seconds.

The float checkpoint gets the QAT recipe's fake quantization (``quantization.prepare``, the same scheme the QAT
step would apply, per-tensor weights for DeepSparse) and a few calibration batches with the observers on: a
post-training INT8 model whose exported graph is the QAT model's (same Q/DQ placement, same engine forms), only
its weights and scales differ, and speed does not depend on either. Export writes it and its engine forms; the
float export and they are timed interleaved on the target by ``choose``. INT8 "pays" when its fastest form
beats the float model by more than ``choose.NOISE``. Accuracy is not the question here (QAT recovers it; export
and ``choose`` gate the trained model).
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sparse_core.errors import UserError

CALIBRATION_BATCHES = 4

DEFAULT_QAT = {"ignore": ["Upsample", "Concat"]}  # the scheme QAT recipes here use when the caller has none


def _modifier(mod, engine: str):
    from sparse_core.quantization.scheme import for_engine
    from sparse_core.recipe.schemas import QuantizationModifier

    mod = mod if mod is not None else QuantizationModifier(**DEFAULT_QAT)
    return for_engine(mod, engine)


def _calibration(data: str | os.PathLike | None, imgsz: int) -> list[np.ndarray]:
    """Letterboxed training images when ``data`` is given, else uniform noise (speed does not depend on it)."""
    if data:
        from sparse_core.baseline import calibration_images, letterbox

        return [letterbox(p, imgsz) for p in calibration_images(data, CALIBRATION_BATCHES)]
    rng = np.random.default_rng(0)
    return [rng.random((1, 3, imgsz, imgsz), dtype=np.float32) for _ in range(CALIBRATION_BATCHES)]


def ptq_checkpoint(ckpt: dict, mod, engine: str, imgsz: int, data=None) -> dict:
    """A copy of ``ckpt`` whose model carries ``mod``'s fake quantization, calibrated and frozen; the training
    data is dropped from it so export does not run its (slow, here meaningless) accuracy gate."""
    import torch

    from sparse_core.checkpoint import checkpoint_model
    from sparse_core.quantization.prepare import disable_observers, prepare

    model = copy.deepcopy(checkpoint_model(ckpt)).float().eval()
    prepare(model, _modifier(mod, engine), "probe")
    with torch.no_grad():
        for x in _calibration(data, imgsz):
            model(torch.from_numpy(x))
    disable_observers(model)
    meta = {**(ckpt.get("sparsepipe") or {}), "quantized": True}
    return {**ckpt, "model": model, "ema": None, "sparsepipe": meta,
            "train_args": {**(ckpt.get("train_args") or {}), "data": None}}


def probe(weights: str | os.PathLike, engine: str, mod=None, engine_precision: str | None = None,
          data: str | os.PathLike | None = None, imgsz: int | None = None, threads: int | None = None,
          seconds: float = 3.0) -> dict[str, Any]:
    """Time the float model of ``weights`` against its post-training INT8 forms on ``engine``; ``mod``: the QAT
    stage's QuantizationModifier (None: the default scheme). Returns ``int8_pays``, ``speedup`` (fastest INT8
    form / float), the table and the seconds it took."""
    import time

    from sparse_core.checkpoint import load_checkpoint
    from sparse_core.export import choose
    from sparse_core.export.export import export_model

    t0 = time.time()
    ckpt = load_checkpoint(weights) if not isinstance(weights, dict) else weights
    with tempfile.TemporaryDirectory(prefix="sparsepipe-probe-") as tmp:
        flt = export_model(ckpt, Path(tmp) / "float", imgsz=imgsz)
        if flt["quantized"]:
            raise UserError(f"{weights}: already quantized; the probe starts from the float model QAT would train")
        export_model(ptq_checkpoint(ckpt, mod, engine, flt["imgsz"], data), Path(tmp) / "int8", imgsz=flt["imgsz"])
        decision = choose.choose({"float": Path(tmp) / "float", "int8": Path(tmp) / "int8"}, engine,
                                 engine_precision, threads=threads, seconds=seconds)
    rows = decision["candidates"]
    flt_speed = max(r["images_per_s"] for r in rows if not r["int8"])
    best = max((r for r in rows if r["int8"]), key=lambda r: r["images_per_s"])
    speedup = float(best["images_per_s"] / flt_speed)
    return {"engine": engine, "engine_precision": decision["engine_precision"], "cpu_isa": decision["cpu_isa"],
            "int8_pays": bool(speedup > 1 + choose.NOISE), "speedup": round(speedup, 4), "best_int8": best["name"],
            "candidates": rows, "seconds": round(time.time() - t0, 1)}

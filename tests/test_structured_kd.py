"""The shipped structured-pruning recipes with knowledge distillation (``structured_kd_50``/``_75`` then
``structured_kd_qat``) run as a user runs them, shortened: a dense YOLOv8n is the teacher of structured GMP (the
model comes out thinned, distillation handlers active), then of INT8 QAT on the thinned checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sparse_core.checkpoint import checkpoint_model, load_checkpoint, sparsepipe_meta
from sparse_core.data.synth import synth_dataset
from sparse_core.integrations.ultralytics import train
from sparse_core.recipe import load_recipe
from sparse_core.recipes import path as recipe_path
from sparse_core.structured.thin import THINNED_ATTR

os.environ.setdefault("YOLO_OFFLINE", "1")
IMGSZ = 64


@pytest.mark.parametrize("name,final", [("structured_kd_50.yaml", 0.5), ("structured_kd_75.yaml", 0.75)])
def test_shipped_kd_recipes_load_with_their_costs(name, final):
    rec = load_recipe(str(recipe_path(name)))
    (gmp,) = rec.of_type("GMPruningModifier")
    assert gmp.mask_type == "filter" and gmp.final_sparsity == final
    assert {m.type_name for m in rec.modifiers} >= {"DistillationModifier", "PerLayerDistillationModifier",
                                                     "SetLearningRateModifier", "LearningRateFunctionModifier"}
    (cosine,) = rec.of_type("LearningRateFunctionModifier")
    assert cosine.start_epoch == gmp.end_epoch  # LR held while channels go, annealed during recovery


@pytest.mark.parametrize("name", ["structured_kd_50.yaml", "structured_kd_75.yaml", "structured_kd_qat.yaml"])
def test_recipe_check_accepts_shipped_kd_recipes(name):
    out = subprocess.run([sys.executable, "-m", "sparse_core.cli", "recipe", "check", str(recipe_path(name))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-500:]


def test_structured_kd_then_qat_kd_with_dense_teacher(tmp_path):
    # 32 images = 4 steps an epoch: QAT starts at epoch 0.1, which must not be the first step (see the recipe)
    data = synth_dataset(tmp_path / "data", n_train=32, n_val=4, imgsz=IMGSZ, seed=3)
    common = dict(data=str(data), imgsz=IMGSZ, batch=8, workers=0, project=tmp_path, plots=False)
    teacher = train(model="yolov8n.yaml", epochs=1, name="dense", **common)["weights"]["last"]

    stage1 = train(model=teacher, teacher=teacher, recipe=str(recipe_path("structured_kd_50.yaml")),
                   recipe_args={"num_epochs": 2, "pruning_start_epoch": 0, "pruning_end_epoch": 1}, name="kd50",
                   **common)
    report = json.loads((tmp_path / "kd50" / "structured.json").read_text())
    assert report["last"]["channels_removed"] > 0 and report["last"]["macs_ratio"] < 0.5
    ckpt = load_checkpoint(stage1["weights"]["last"])
    assert getattr(checkpoint_model(ckpt), THINNED_ATTR)
    meta = sparsepipe_meta(ckpt)
    assert meta["teacher"] == teacher and stage1["epochs"] == 2

    stage2 = train(model=stage1["weights"]["last"], teacher=teacher, recipe=str(recipe_path("structured_kd_qat.yaml")),
                   recipe_args={"num_epochs": 2}, name="kd50qat", **common)
    meta = sparsepipe_meta(load_checkpoint(stage2["weights"]["last"]))
    assert meta["quantized"] is True and meta["teacher"] == teacher
    model = checkpoint_model(load_checkpoint(stage2["weights"]["last"]))
    assert getattr(model, THINNED_ATTR)  # QAT trained the thinned model, not one rebuilt from its yaml

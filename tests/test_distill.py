"""Distillation: loss formulas, --teacher semantics, and seed 002's recipe shape (per-layer GMP + per-layer
distillation + legacy QAT) end to end on yolov5nu through the real Ultralytics trainer with a teacher checkpoint.

Seed 002's recipe is used verbatim except for its three YOLOv5 head names (``model.24.m.N``): yolov5nu has the
YOLOv8 head, whose class convs are ``model.24.cv3.N.2``; the backbone/neck names are the same in both.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from sparse_core.checkpoint import checkpoint_model, load_checkpoint, sparsepipe_meta
from sparse_core.data.synth import synth_dataset
from sparse_core.distillation import losses
from sparse_core.errors import UserError
from sparse_core.integrations.ultralytics import train
from sparse_core.modifiers import RecipeManager
from sparse_core.recipe import load_recipe

os.environ.setdefault("YOLO_OFFLINE", "1")
IMGSZ = 64
SEED002 = Path(__file__).parent / "recipes" / "seed002_yolov5s_pruned75_quant.yaml"
SHORT = {"num_epochs": 6, "quantization_epochs": 2, "pruning_start_epoch": 0, "pruning_end_epoch": 3}
KD = """
modifiers:
  - !EpochRangeModifier
    end_epoch: 2
  - !DistillationModifier
    hardness: 0.75
    temperature: 3.0
  - !PerLayerDistillationModifier
    gain: 0.5
    student_layer_names: [model.2, model.4.cv1]
"""


def seed002_for_yolov5u() -> str:
    return re.sub(r"model\.24\.m\.(\d)", r"model.24.cv3.\1.2", SEED002.read_text())


def student():
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    model.args = get_cfg()
    return model


def batch(n: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"img": torch.rand(n, 3, IMGSZ, IMGSZ, generator=g), "batch_idx": torch.tensor([0.0, 1.0]),
            "cls": torch.tensor([[0.0], [1.0]]), "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.4, 0.6, 0.2, 0.4]])}


def manager_for(teacher, text: str = KD):
    model = student()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mgr = RecipeManager(load_recipe(text), model, opt)
    mgr.teacher = teacher
    import sparse_core.distillation  # noqa: F401  (registers the handlers)

    return model, opt, mgr


def test_kd_formulas():
    g = torch.Generator().manual_seed(1)
    a = {"boxes": torch.randn(2, 64, 10, generator=g), "scores": torch.randn(2, 3, 10, generator=g)}
    b = {"boxes": torch.randn(2, 64, 10, generator=g), "scores": torch.randn(2, 3, 10, generator=g)}
    assert float(losses.yolo_kd(a, a, 2.0, 16)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.yolo_kd(a, b, 2.0, 16)) > 0
    assert float(losses.yolo_kd((None, a), b, 1.0, 16)) == pytest.approx(float(losses.yolo_kd(a, b, 1.0, 16)))
    t = torch.full((2, 4), 2.0)
    assert float(losses.feature_mse(torch.zeros(2, 4), t, True, 0.0)) == pytest.approx(1.0)
    assert float(losses.feature_mse(torch.zeros(2, 4), t, False, 0.0)) == pytest.approx(4.0)
    with pytest.raises(UserError, match="same classes"):
        losses.yolo_kd(a, {"boxes": b["boxes"], "scores": b["scores"][:, :2]}, 1.0, 16)


def test_teacher_required_or_explicitly_disabled():
    _, _, mgr = manager_for(None)
    with pytest.raises(UserError, match="no --teacher was given.*--teacher disable"):
        mgr.initialize(0.0)
    model, opt, mgr = manager_for("disable")
    mgr.initialize(0.0)
    assert getattr(model, "criterion", None) is None and len(opt.param_groups) == 1  # nothing installed


def test_self_teacher_adds_weighted_terms_and_trains_projections():
    model, opt, mgr = manager_for("self")
    mgr.initialize(0.0)
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["param_group"] == "distillation"
    model.train()
    loss, items = model.loss(batch())
    assert loss.shape == (4,) and set(items) == {"box_loss", "cls_loss", "dfl_loss"}  # items untouched
    base, _ = model.criterion.base(model(batch()["img"]), batch())
    distiller = mgr._distiller
    kd, per_layer = distiller.last["output_kd"], distiller.last["per_layer"]
    assert kd > 0 and per_layer > 0
    assert torch.allclose(loss[:3], 0.25 * base, rtol=1e-4)  # (1 - hardness) * task
    assert float(loss[3].detach()) == pytest.approx(0.75 * kd + 0.5 * per_layer, rel=1e-4)  # hardness*KD + gain*layers
    loss.sum().backward()
    proj = opt.param_groups[1]["params"]
    assert len(proj) == 2 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj)
    state = mgr.state_dict()["handlers"][1]
    assert set(state["projection"]) == {"model/2.weight", "model/4/cv1.weight"}
    mgr.update(2.0)  # past EpochRange end (-1 = forever for the modifiers): still active
    assert distiller.terms[0].active


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synth_dataset(tmp_path_factory.mktemp("d"), n_train=16, n_val=8, imgsz=IMGSZ, seed=4, n_classes=2)


@pytest.fixture(scope="module")
def seed002_run(data, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("s002")
    teacher = train(model="yolov5nu.yaml", data=str(data), epochs=1, imgsz=IMGSZ, batch=8, workers=0,
                    project=root, name="teacher", plots=False)["weights"]["last"]
    recipe = root / "seed002_yolov5u.yaml"
    recipe.write_text(seed002_for_yolov5u())
    kwargs = dict(model="yolov5nu.yaml", data=str(data), recipe=str(recipe), recipe_args=SHORT, teacher=teacher,
                  imgsz=IMGSZ, batch=8, workers=0, project=root, plots=False)
    return {"summary": train(name="student", **kwargs), "teacher": teacher, "recipe": recipe, "kwargs": kwargs}


def test_seed002_shape_end_to_end_on_yolov5u(seed002_run):
    summary, teacher, recipe = seed002_run["summary"], seed002_run["teacher"], seed002_run["recipe"]
    ckpt = load_checkpoint(summary["weights"]["last"])
    meta = sparsepipe_meta(ckpt)
    assert meta["quantized"] is True and meta["teacher"] == teacher
    per_layer, quant = meta["manager"]["handlers"]
    assert len(per_layer["projection"]) == 54  # one projection per distilled layer pair
    assert quant == {"started": True, "observers_disabled": False, "bn_frozen": True}
    # GMP reached every group's final sparsity and QAT (from epoch 4) kept it exactly
    rec = load_recipe(str(recipe), SHORT)
    params = dict(checkpoint_model(ckpt).named_parameters())
    for mod in rec.of_type("GMPruningModifier"):
        for name, target in mod.selector_sparsities():
            p = params[name]
            assert int((p == 0).sum()) == round(target * p.numel()), name
    from torch.ao.quantization import FakeQuantizeBase

    model = checkpoint_model(ckpt)
    acts = [m for m in model.modules() if type(m).__name__ == "SiLU"]
    assert acts and all(isinstance(getattr(a, "input_quant", None), FakeQuantizeBase) for a in acts)
    assert summary["epochs"] == 6


def test_cli_teacher_flag_bad_path_exits_2(data, tmp_path):
    import subprocess
    import sys

    recipe = tmp_path / "kd.yaml"
    recipe.write_text(KD)
    out = subprocess.run([sys.executable, "-m", "sparse_core.cli", "train", "--model", "yolov8n.yaml", "--data",
                          str(data), "--recipe", str(recipe), "--teacher", str(tmp_path / "missing.pt"),
                          "--imgsz", "64", "--project", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-500:]
    assert "--teacher" in out.stderr and "missing.pt: not found" in out.stderr and "Traceback" not in out.stderr


class Interrupt(Exception):
    """Raised from a callback to stop training right after a checkpoint was written."""


def test_resume_during_distillation_is_exact(seed002_run):
    def stop(trainer):
        if trainer.epoch == 2:  # pruning and per-layer distillation (with its projection param group) running
            raise Interrupt

    with pytest.raises(Interrupt):
        train(name="interrupted", callbacks=[("on_model_save", stop)], **seed002_run["kwargs"])
    last = Path(seed002_run["summary"]["save_dir"]).parent / "interrupted" / "weights" / "last.pt"
    resumed = train(resume=str(last), workers=0)
    a = checkpoint_model(load_checkpoint(resumed["weights"]["last"])).state_dict()
    b = checkpoint_model(load_checkpoint(seed002_run["summary"]["weights"]["last"])).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]

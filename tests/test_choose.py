"""The deployment chosen by measurement (``export.choose``), the INT8 probe (``export.probe``) and per-tensor QAT for
DeepSparse, on real exports of a random-weight yolov8n at 64 px (speed and graph form do not depend on weights).

No timing is asserted: the rule is checked against the table the run itself measured.
"""

from __future__ import annotations

import json
import os

import onnx
import pytest
import torch

from sparse_core.errors import UserError
from sparse_core.export import choose, probe

os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """float.pt (random yolov8n, nc=3) and q.pt (its post-training INT8 form: the QAT scheme's fake quant,
    calibrated on the data set), plus the tiny data set."""
    from ultralytics.nn.tasks import DetectionModel

    from sparse_core.data.synth import synth_dataset

    tmp = tmp_path_factory.mktemp("choose")
    data = synth_dataset(tmp / "data", n_train=4, n_val=4, imgsz=64, seed=1, n_classes=3)
    torch.manual_seed(0)
    ck = {"model": DetectionModel("yolov8n.yaml", nc=3, verbose=False), "train_args": {"imgsz": 64}}
    torch.save(ck, tmp / "float.pt")
    torch.save(probe.ptq_checkpoint(ck, None, "deepsparse", 64, data), tmp / "q.pt")
    return tmp, data


@pytest.fixture(scope="module")
def chosen(ckpts):
    tmp, data = ckpts
    out = tmp / "deploy"
    d = choose.export_for_engine(tmp / "q.pt", out, "openvino", float_weights=tmp / "float.pt", data=data,
                                 seconds=0.3, allow_drop=True)
    return out, d


def test_chosen_deployment_folder(chosen):
    """Every form timed and scored; the chosen file is model.onnx (its sha in deployment.json), the exports stay
    under candidates/, and the pick follows the rule on the measured table."""
    from sparse_core.export.graph import deployment_model, sha256

    out, d = chosen
    rows = {r["name"]: r for r in d["candidates"]}
    assert {"float", "int8", "int8-openvino-form"} <= set(rows)
    assert all(r["images_per_s"] > 0 and r["map50_95"] is not None for r in rows.values())
    assert json.loads((out / "deployment.json").read_text()) == d
    src = out / "candidates" / d["source"] / d["file"]
    assert sha256(out / "model.onnx") == sha256(src) == d["sha256"]
    assert (out / "candidates" / "float" / "model.onnx").is_file() and (out / "candidates" / "int8" / "model.onnx").is_file()
    assert deployment_model(out, "openvino") == out / "model.onnx"  # the choice, not the folder's engine form
    ok = [r for r in rows.values() if r["accuracy_ok"]]
    best, flt = max(ok, key=lambda r: r["images_per_s"]), rows["float"]
    if best["int8"] and best["images_per_s"] > flt["images_per_s"] * (1 + choose.NOISE):
        assert d["chosen"] == best["name"] and d["form"] == "int8"
    else:
        assert d["chosen"] == "float" and d["form"] == "float"
    assert rows[d["chosen"]]["images_per_s"] >= flt["images_per_s"]
    tags = choose.version_tags(d)
    assert tags["sparsepipe.engine"] == "openvino" and tags["sparsepipe.form"] == d["form"]
    assert set(json.loads(tags["sparsepipe.candidates"])) == set(rows)


def test_pick_rule():
    """INT8 ships only when it beats float by more than the noise and holds accuracy."""
    def row(name, ips, int8, ok=True):
        return {"name": name, "images_per_s": ips, "int8": int8, "accuracy_ok": ok, "accuracy_note": "x"}

    assert choose._pick([row("float", 100, False), row("int8", 102, True)])[0]["name"] == "float"
    assert choose._pick([row("float", 100, False), row("int8", 110, True)])[0]["name"] == "int8"
    assert choose._pick([row("float", 100, False), row("int8", 150, True, ok=False)])[0]["name"] == "float"
    with pytest.raises(UserError, match="no candidate holds accuracy"):
        choose._pick([row("int8", 150, True, ok=False)])


def test_candidates_by_engine_and_precision(chosen):
    out, _ = chosen
    folders = {"float": out / "candidates" / "float", "int8": out / "candidates" / "int8"}
    names = [c.name for c in choose.candidates(folders, "openvino", amx=True)]
    assert names == ["float", "int8", "int8-vnni", "int8-openvino-form", "int8-openvino-form-vnni"]
    assert [c.name for c in choose.candidates(folders, "onnxruntime", amx=True)] == ["float", "int8"]
    assert [c.name for c in choose.candidates(folders, "deepsparse", amx=False)] == ["float", "int8",
                                                                                     "int8-deepsparse-form"]
    assert [c.name for c in choose.candidates(folders, "onnxruntime", "float")] == ["float"]
    with pytest.raises(UserError, match="--precision float"):
        choose.candidates({"int8": folders["int8"]}, "onnxruntime", "float")
    with pytest.raises(UserError, match="--precision"):
        choose.candidates(folders, "onnxruntime", "fp8")


def test_probe_predicts_from_its_own_table(ckpts):
    tmp, _ = ckpts
    r = probe.probe(tmp / "float.pt", "onnxruntime", seconds=0.3)
    rows = r["candidates"]
    assert [x["name"] for x in rows] == ["float", "int8"] and rows[1]["int8"]
    assert r["speedup"] == pytest.approx(rows[1]["images_per_s"] / rows[0]["images_per_s"], rel=1e-3)
    assert r["int8_pays"] == (r["speedup"] > 1 + choose.NOISE)


def test_deepsparse_gets_per_tensor_weights(ckpts, tmp_path):
    """for_engine('deepsparse') makes every conv's weight scale a scalar, the form DeepSparse compiles natively;
    other engines keep per-channel weights."""
    from sparse_core.export import export_model
    from sparse_core.quantization.scheme import for_engine
    from sparse_core.recipe.schemas import QuantizationModifier

    mod = QuantizationModifier(ignore=["Upsample", "Concat"])
    assert for_engine(mod, "onnxruntime") is mod
    assert for_engine(mod, "deepsparse").weight_strategy == "tensor"
    assert for_engine(QuantizationModifier(weight_strategy="channel"), "deepsparse").weight_strategy == "channel"
    tmp, _ = ckpts
    info = export_model(tmp / "q.pt", tmp_path / "q")  # q.pt was prepared for DeepSparse
    assert info["deepsparse"]["per_tensor_weights"] is True
    ck = torch.load(tmp / "float.pt", weights_only=False)
    info = export_model(probe.ptq_checkpoint(ck, None, "openvino", 64), tmp_path / "pc")
    assert info["deepsparse"]["per_tensor_weights"] is False
    ds = onnx.load(str(tmp_path / "q" / "model.deepsparse.onnx"))
    assert sum(n.op_type == "QLinearConv" for n in ds.graph.node) > 0


def test_cli_export_engine_bad_input(ckpts, tmp_path, capsys):
    from sparse_core.cli import main

    tmp, _ = ckpts
    cases = [(["--engine", "tflite"], "--engine"), (["--engine", "openvino", "--precision", "fp8"], "--precision"),
             (["--engine", "onnxruntime", "--engine-precision", "f32"], "--engine-precision"),
             (["--float", str(tmp / "float.pt")], "--float"),
             (["--engine", "onnxruntime", "--float", str(tmp / "float.pt")], "--float")]
    for extra, flag in cases:
        out = tmp_path / "never"
        assert main(["export", "--weights", str(tmp / "float.pt"), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0] and not out.exists()


QAT_RECIPE = """version: 1.1.0
num_epochs: 2
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: 2
quantization_modifiers:
  - !QuantizationModifier
    start_epoch: 1
    ignore: ['Upsample', 'Concat']
"""


def test_decide_precision_step_cuts_or_adapts_the_qat_stage(ckpts, tmp_path):
    """float: QAT cut from recipe.full.yaml (qat then passes through); int8 on DeepSparse: per-tensor weights;
    auto: the probe's table decides and precision.json says why."""
    from sparse_core import steps
    from sparse_core.recipe import load_recipe

    tmp, _ = ckpts
    src = tmp_path / "trained"
    src.mkdir()
    (src / "model.pt").symlink_to(tmp / "float.pt")
    (src / "recipe.full.yaml").write_text(QAT_RECIPE)
    skip = steps.decide_precision(str(src), str(tmp_path / "f"), engine="onnxruntime", precision="float")
    assert skip["qat"] == "skip" and (tmp_path / "f" / "model.pt").is_file()
    assert not load_recipe(str(tmp_path / "f" / "recipe.full.yaml"), staged=True).of_type("QuantizationModifier")
    run = steps.decide_precision(str(src), str(tmp_path / "d"), engine="deepsparse", precision="int8")
    mods = load_recipe(str(tmp_path / "d" / "recipe.full.yaml"), staged=True).of_type("QuantizationModifier")
    assert run["qat"] == "run" and mods[0].weight_strategy == "tensor"
    auto = steps.decide_precision(str(src), str(tmp_path / "a"), engine="onnxruntime", precision="auto", imgsz=64)
    assert auto["qat"] == ("run" if auto["probe"]["int8_pays"] else "skip")
    assert json.loads((tmp_path / "a" / "precision.json").read_text()) == auto
    with pytest.raises(UserError, match="precision"):
        steps.decide_precision(str(src), str(tmp_path / "x"), precision="fp16")


def test_choose_deployment_step_and_registry_tags(chosen, tmp_path):
    """The step behind the pipelines: the QAT export plus the float sparse_train output, chosen on onnxruntime;
    the version tags registration adds come from the folder's deployment.json."""
    from sparse_core import steps

    out, _ = chosen
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "model.pt").symlink_to(out.parent / "float.pt")
    d = steps.choose_deployment(str(out / "candidates" / "int8"), str(tmp_path / "chosen"), engine="onnxruntime",
                                float_model=str(trained), seconds=0.3)
    assert {r["name"] for r in d["candidates"]} == {"float", "int8"} and d["engine"] == "onnxruntime"
    assert steps.chosen_tags(tmp_path / "chosen")["sparsepipe.chosen"] == d["chosen"]
    assert steps.chosen_tags(out / "candidates" / "int8") == {}

"""Coming from SparseML (issue 19), on checkpoints SparseML 1.8 itself wrote (tests/fixtures/sparseml, made by
make_fixtures.sh; SparseML is not needed here): the imported pruned and pruned+QAT YOLOv8n give SparseML's outputs
and per-layer sparsity, training continues with the carried recipe, our ONNX of the QAT checkpoint matches
SparseML's ONNX on onnxruntime, and seed 000's train command runs from `zoo import`ed SparseZoo-layout folders."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_core.checkpoint import checkpoint_model, load_checkpoint, sparsepipe_meta
from sparse_core.errors import UserError
from sparse_core.quantization.modules import fake_quant_modules
from sparse_core.sparseml_compat import import_sparseml, is_sparseml_checkpoint, read_checkpoint
from sparse_core.sparseml_compat.names import our_name

FIX = Path(__file__).parent / "fixtures" / "sparseml"
NAMES = ("pruned", "pruned_quant", "pruned_final")
SEED000_MODEL = "zoo:cv/detection/yolov8-n/pytorch/ultralytics/coco/pruned49-none"
SEED000_RECIPE = "zoo:cv/detection/yolov8-n/pytorch/ultralytics/voc/pruned49_quant-none"


@pytest.fixture(scope="module")
def sml(tmp_path_factory) -> dict[str, Path]:
    """The SparseML checkpoints, decompressed byte for byte (committed as .pt.xz)."""
    root = tmp_path_factory.mktemp("sparseml")
    out = {}
    for name in NAMES:
        out[name] = root / f"{name}.pt"
        out[name].write_bytes(lzma.decompress((FIX / f"{name}.pt.xz").read_bytes()))
    return out


@pytest.fixture(scope="module")
def imported(sml, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imported")
    return {name: (import_sparseml(path, root / name), root / name)[1] for name, path in sml.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from sparse_core.data.synth import synth_dataset

    return synth_dataset(tmp_path_factory.mktemp("data") / "set", n_train=16, n_val=8, imgsz=64, n_classes=2)


def _inputs() -> tuple[np.ndarray, torch.Tensor]:
    x = np.load(FIX / "inputs_uint8.npy")
    return x, torch.from_numpy(x).float() / 255


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    model = model.eval()
    model.apply(torch.ao.quantization.disable_observer)  # as the fixture's SparseML outputs were computed
    with torch.no_grad():
        return model(x)[0].numpy()


def _finest_step(model: torch.nn.Module) -> float:
    """One quantization step of the finest activation grid in the model (smallest per-tensor scale)."""
    return min(float(fq.scale.min()) for n, fq in fake_quant_modules(model).items() if "weight_fake_quant" not in n)


def _layer_sparsity(model: torch.nn.Module) -> dict[str, float]:
    return {n: float((p == 0).float().mean()) for n, p in model.named_parameters() if p.dim() == 4}


def _run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "YOLO_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "sparse_core.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=900)


def test_reader_reads_data_only(sml, imported):
    ck = read_checkpoint(sml["pruned_quant"])
    assert (ck.epoch, ck.state_key, ck.quantized) == (1, "model", True)  # SparseML disabled the EMA for QAT
    assert read_checkpoint(sml["pruned"]).state_key == "ema"
    assert read_checkpoint(sml["pruned_final"]).finished
    # SparseML's str(manager) writes Python reprs: backslashes doubled, 'null' strings; the carried recipe undoes it
    assert "conv\\\\.weight" in ck.recipe and '"re:^((?!dfl).)*conv\\\\.weight$"' in ck.carried_recipe()
    assert "'null'" in ck.recipe and "'null'" not in ck.carried_recipe()
    ours = imported["pruned"] / "weights" / "last.pt"  # a pickled module: never unpickled by the reader
    assert all(is_sparseml_checkpoint(p) for p in sml.values()) and not is_sparseml_checkpoint(ours)
    with pytest.raises(UserError, match="cannot be read as data"):
        read_checkpoint(ours)


@pytest.mark.parametrize("name", ["pruned", "pruned_final"])
def test_float_outputs_and_sparsity_match_sparseml(imported, name):
    model = checkpoint_model(load_checkpoint(imported[name] / "weights" / "last.pt"))
    _, x = _inputs()
    diff = np.abs(_outputs(model, x) - np.load(FIX / "expected_outputs.npz")[f"{name}_torch"]).max()
    assert diff <= 1e-3, f"{name}: max abs diff {diff:.3g} vs SparseML's outputs"
    expected = json.loads((FIX / "expected.json").read_text())["sparsity"][name]
    assert _layer_sparsity(model) == expected  # identical per layer (same names: float model)


def test_qat_outputs_state_and_sparsity_match_sparseml(sml, imported):
    ckpt = load_checkpoint(imported["pruned_quant"] / "weights" / "last.pt")
    model = checkpoint_model(ckpt)
    _, x = _inputs()
    step = _finest_step(model)
    diff = np.abs(_outputs(model, x) - np.load(FIX / "expected_outputs.npz")["pruned_quant_torch"]).max()
    assert diff <= step, f"max abs diff {diff:.3g} exceeds one quantization step {step:.3g}"
    expected = json.loads((FIX / "expected.json").read_text())["sparsity"]["pruned_quant"]
    assert _layer_sparsity(model) == {our_name(k): v for k, v in expected.items()}
    # every SparseML fake quant landed in ours: same scale; asymmetric zero points moved from int8 to uint8 range
    state, ours = read_checkpoint(sml["pruned_quant"]).state, model.state_dict()
    scales = {our_name(k): v for k, v in state.items() if k.endswith(".scale")}
    assert scales and all(torch.equal(ours[k], v) for k, v in scales.items())
    shifted = [k for k, v in state.items() if k.endswith(".zero_point") and not torch.equal(ours[our_name(k)], v)]
    assert shifted and all(torch.equal(ours[our_name(k)], state[k] + 128) for k in shifted)
    meta = sparsepipe_meta(ckpt)
    assert meta["quantized"] and meta["recipe_epoch"] == 2.0 and meta["manager"]["handlers"][0]["started"]
    assert meta["sparseml_source"]["epoch"] == 1 and len(meta["sparseml_source"]["sha256"]) == 64
    assert "train_state" in meta and ckpt["optimizer"]["param_groups"][0]["param_group"] == "weight"


@pytest.mark.parametrize("name", ["pruned", "pruned_quant"])
def test_training_continues_with_the_carried_recipe(sml, data, tmp_path, name):
    from sparse_core.integrations.ultralytics import train

    src = tmp_path / "run"
    r = _run("import", "sparseml", str(sml[name]), "--out", str(src))  # resume trains on in this folder
    assert r.returncode == 0 and "sparsepipe train --resume" in r.stdout, r.stderr[-2000:]
    last = src / "weights" / "last.pt"
    before = checkpoint_model(load_checkpoint(last))
    summary = train(resume=str(last), data=str(data), workers=0)
    assert summary["epochs"] == 3  # the carried recipe's 3 epochs: the one left (index 2) was trained
    after_ckpt = load_checkpoint(src / "weights" / "last.pt")
    after = checkpoint_model(after_ckpt)
    assert _layer_sparsity(after) == _layer_sparsity(before)  # sparsity held
    moved = max(float((a.detach() - b.detach()).abs().max()) for a, b in zip(after.parameters(), before.parameters()))
    assert moved > 0  # it trained
    meta = sparsepipe_meta(after_ckpt)
    assert meta["sparseml_source"]["epoch"] == 1  # lineage kept
    if name == "pruned_quant":
        assert meta["quantized"] and fake_quant_modules(after)
        handler = meta["manager"]["handlers"][0]
        assert handler["started"] and handler["observers_disabled"] and handler["bn_frozen"]  # epoch 2 of the recipe


def test_our_onnx_of_the_qat_checkpoint_matches_sparseml_onnx(sml, tmp_path, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setenv("SPARSEPIPE_CACHE", str(tmp_path / "cache"))
    from sparse_core.export import export_model

    # --weights with SparseML's own file: the transparent hook imports it first
    info = export_model(str(sml["pruned_quant"]), tmp_path / "deploy", imgsz=64)
    assert info["quantized"]
    x8, x = _inputs()

    def run(path: Path) -> np.ndarray:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        feed = x8 if inp.type == "tensor(uint8)" else x.numpy()  # SparseML's QAT ONNX takes uint8 0..255
        return np.concatenate([sess.run(None, {inp.name: feed[i : i + 1]})[0] for i in range(len(x8))])

    theirs = run(FIX / "deployment_pruned_quant" / "model.onnx")
    assert np.array_equal(theirs, np.load(FIX / "expected_outputs.npz")["pruned_quant_onnx"])
    model = checkpoint_model(load_checkpoint(_imported_path(sml)))
    step = _finest_step(model)
    diff = np.abs(run(tmp_path / "deploy" / "model.onnx") - theirs).max()
    assert diff <= step, f"ONNX max abs diff {diff:.3g} exceeds one quantization step {step:.3g}"


def _imported_path(sml) -> Path:
    from sparse_core.sparseml_compat import resolve_sparseml

    return resolve_sparseml(sml["pruned_quant"])  # cached: the same import the export used


def _sparsezoo_folder(root: Path, checkpoint: Path | None, deployment: Path, recipe: Path, title: str) -> Path:
    """A folder laid out as SparseZoo downloads are, from the fixture pieces."""
    (root / "recipe").mkdir(parents=True)
    if checkpoint is not None:
        (root / "training").mkdir()
        shutil.copyfile(checkpoint, root / "training" / "model.pt")
    shutil.copytree(deployment, root / "deployment")
    (root / "recipe" / "recipe_original.md").write_text(f"---\n{recipe.read_text()}---\n\n# {title}\n")
    (root / "model.md").write_text(f"---\ndomain: cv\nsub_domain: detection\n---\n# {title}\n")
    return root


def test_zoo_import_then_seed000_train_command(sml, data, tmp_path):
    zoo, env = tmp_path / "zoo", {"SPARSEPIPE_ZOO": str(tmp_path / "zoo"), "SPARSEPIPE_CACHE": str(tmp_path / "c")}
    pruned = _sparsezoo_folder(tmp_path / "dl-pruned", sml["pruned_final"], FIX / "deployment_pruned_final",
                               FIX / "recipe_pruned.yaml", "YOLOv8n pruned (fixture)")
    transfer = _sparsezoo_folder(tmp_path / "dl-transfer", None, FIX / "deployment_pruned_quant",
                                 FIX / "recipe_transfer.yaml", "YOLOv8n pruned-quantized transfer (fixture)")
    for folder, stub in ((pruned, SEED000_MODEL), (transfer, SEED000_RECIPE)):
        r = _run("zoo", "import", str(folder), stub, "--json", env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        manifest = json.loads(r.stdout.strip().splitlines()[-1])
        assert all(len(f["sha256"]) == 64 for f in manifest["files"]) and "model.md" in manifest["imported_from"]
    assert (zoo / SEED000_MODEL[4:] / "model.pt").is_file() and (zoo / SEED000_RECIPE[4:] / "model.onnx").is_file()
    # seed 000 (custom data set form), only `sparseml.ultralytics.train` -> `sparsepipe train`; shortened with
    # --recipe_args, 64 px images and no loader workers
    r = _run("train", "--model", SEED000_MODEL, "--recipe", SEED000_RECIPE, "--data", str(data),
             "--recipe_args",
             '{"num_epochs": 2, "qat_start_epoch": 1, "observer_freeze_epoch": 2, "bn_freeze_epoch": 2}',
             "--batch", "8", "--imgsz", "64", "--workers", "0", "--no-plots", "--json", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2
    start = json.loads((FIX / "expected.json").read_text())["sparsity"]["pruned_final"]
    final = load_checkpoint(summary["weights"]["last"])
    assert sparsepipe_meta(final)["quantized"]
    assert sparsepipe_meta(final)["sparseml_source"]["epoch"] == -1  # lineage: the SparseZoo checkpoint it came from
    assert _layer_sparsity(checkpoint_model(final)) == start  # ConstantPruningModifier held SparseML's zeros


def test_bad_input_is_one_line_and_writes_nothing(sml, imported, tmp_path):
    out = tmp_path / "out"
    r = _run("import", "sparseml", str(imported["pruned"] / "weights" / "last.pt"), "--out", str(out))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "cannot be read as data" in r.stderr
    assert not out.exists()
    # a checkpoint whose model_yaml does not fit its weights: the mismatch is named, nothing is written
    from sparse_core.sparseml_compat.reader import _numpy_globals

    with torch.serialization.safe_globals(_numpy_globals()):
        ckpt = torch.load(sml["pruned"], map_location="cpu", weights_only=True)
    ckpt["model_yaml"]["nc"] = 5
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    r = _run("import", "sparseml", str(bad), "--out", str(out))
    assert r.returncode == 2 and ("does not match" in r.stderr or "shape" in r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_model_and_weights_take_a_sparseml_checkpoint_directly(sml, data, tmp_path):
    """The --model / --weights hook: SparseML's file is imported once (cached by sha256) and used from there."""
    env = {"SPARSEPIPE_CACHE": str(tmp_path / "cache")}
    r = _run("val", "--weights", str(sml["pruned_final"]), "--data", str(data), "--imgsz", "64", "--json", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    cached = Path(json.loads(r.stdout.strip().splitlines()[-1])["weights"])
    assert cached.parent.parent.parent.name == "sparseml-imports" and cached.is_file()
    stamp = cached.stat().st_mtime_ns
    r = _run("train", "--model", str(sml["pruned_final"]), "--data", str(data), "--epochs", "1", "--imgsz", "64",
             "--batch", "8", "--workers", "0", "--no-plots", "--json", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert cached.stat().st_mtime_ns == stamp  # reused, not imported again
    last = load_checkpoint(json.loads(r.stdout.strip().splitlines()[-1])["weights"]["last"])
    source = sparsepipe_meta(last)["sparseml_source"]
    assert source["sha256"] == hashlib.sha256(sml["pruned_final"].read_bytes()).hexdigest()


# Issue 30: QAT checkpoints whose QuantizationModifier scopes quantization (made by make_fixtures.sh --forms, finished
# 2-epoch GMP + QAT runs): seed 002's legacy `submodules` form (head left in float), a legacy `exclude_module_types`
# form, and seed 000's scheme form with the whole head `ignore`d by name. SparseML fuses Conv+BN across the whole
# model, so the blocks it left in float carry its fused-float names (`conv.0`, `conv.1.bn`).
FORMS = ("submodules", "exclude_types", "ignore_head")


@pytest.fixture(scope="module")
def form_ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sparseml-forms")
    out = {}
    for form in FORMS:
        out[form] = root / f"qat_{form}.pt"
        out[form].write_bytes(lzma.decompress((FIX / f"qat_{form}.pt.xz").read_bytes()))
    return out


def _box_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of the box rows (xywh, pixels) of two (N, 4 + classes, anchors) outputs."""
    return float(np.abs(a[:, :4] - b[:, :4]).mean())


def _onnx_outputs(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Our QDQ export on onnxruntime and on OpenVINO (f32, so the CPU's bf16 default does not blur the comparison)."""
    import onnxruntime as ort
    import openvino as ov

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return {"onnxruntime": np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]),
            "openvino": np.concatenate([compiled(x[i : i + 1])[0] for i in range(len(x))])}


@pytest.mark.parametrize("form", FORMS)
def test_scoped_qat_imports_exports_like_sparseml(form_ckpts, tmp_path, form):
    import onnx

    from sparse_core.export import export_model
    from sparse_core.sparseml_compat.mismatch import quantized_modules
    from sparse_core.sparseml_compat.names import fused_float

    meta = json.loads((FIX / "expected_qat_forms.json").read_text())[form]
    expected = np.load(FIX / "expected_qat_forms.npz")
    import_sparseml(form_ckpts[form], tmp_path / "imported")
    weights = tmp_path / "imported" / "weights" / "last.pt"
    model = checkpoint_model(load_checkpoint(weights))
    _, x = _inputs()
    ours = _outputs(model, x)
    theirs = expected[f"{form}_torch"]
    bound = 2 * meta["onnx_box_diff"] + 0.1  # SparseML's own ONNX vs its PyTorch model, x2, + 0.1 px
    assert _box_diff(ours, theirs) <= bound
    assert np.abs(ours - theirs).max() <= _finest_step(model)
    target = model.state_dict()
    assert _layer_sparsity(model) == {fused_float(our_name(k), target): v for k, v in meta["sparsity"].items()}
    # the same modules quantized: SparseML's fake quants (its state names) are exactly ours
    sml = quantized_modules(fused_float(our_name(k), target) for k in meta["fake_quant_keys"])
    mine = quantized_modules(n + ".scale" for n in fake_quant_modules(model))
    assert sml == mine and sml
    head = {m for m in mine if m.startswith("model.22.")}
    if form == "exclude_types":  # prediction convs (type Conv2d) excluded: input quantized only; branches quantized
        assert mine["model.22.cv2.0.2"] == {"input"} and mine["model.22.cv3.2.0.conv"] >= {"input", "weight"}
        assert not any(m.startswith("model.22.dfl") for m in mine)
    else:  # outside submodules / ignored: the whole head in float
        assert not head
    info = export_model(str(weights), tmp_path / "deploy", imgsz=64)
    assert info["quantized"]
    onnx_path = tmp_path / "deploy" / "model.onnx"
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    for engine, y in _onnx_outputs(onnx_path, x.numpy()).items():
        assert _box_diff(y, theirs) <= bound, f"{engine}: mean box diff {_box_diff(y, theirs):.3g} > {bound:.3g}"


def test_scoped_qat_mismatch_names_modules_and_recipe_fields(form_ckpts, tmp_path):
    """A recipe that does not fit the checkpoint (model.21 dropped from `submodules`): one line naming the modules
    SparseML quantized and the field that explains them, not only the first differing keys."""
    from sparse_core.recipe import load_recipe
    from sparse_core.sparseml_compat.mismatch import recipe_fields
    from sparse_core.sparseml_compat.reader import _numpy_globals

    with torch.serialization.safe_globals(_numpy_globals()):
        ckpt = torch.load(form_ckpts["submodules"], map_location="cpu", weights_only=True)
    assert "'model.21', " in ckpt["recipe"]
    ckpt["recipe"] = ckpt["recipe"].replace("'model.21', ", "")
    bad, out = tmp_path / "bad.pt", tmp_path / "out"
    torch.save(ckpt, bad)
    r = _run("import", "sparseml", str(bad), "--out", str(out))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not out.exists(), r.stderr
    assert "quantized only in the checkpoint 8: model.21.cv1.act (input; SiLU: outside submodules" in r.stderr
    assert "model.21.cv1.conv (input/weight; Conv2d: outside submodules)" in r.stderr
    assert "quantized only in the rebuilt model" not in r.stderr
    # sparsepipe's own rule is named too: a SparseML recipe that quantized the DFL box decode cannot be rebuilt
    import_sparseml(form_ckpts["submodules"], tmp_path / "ok")
    model = checkpoint_model(load_checkpoint(tmp_path / "ok" / "weights" / "last.pt"))
    mods = load_recipe(read_checkpoint(form_ckpts["submodules"]).carried_recipe()).of_type("QuantizationModifier")
    why = recipe_fields("model.22.dfl.conv", model, mods)
    assert why.startswith("Conv2d: outside submodules") and "DFL box decode: sparsepipe keeps it in float" in why

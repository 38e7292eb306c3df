"""SparseML recipes keep strings (and lists, null, bools) in variables and ``eval()`` them by name, as
``sparseml.recipe_template`` writes them (``mask_type: unstructured`` on top, ``mask_type: eval(mask_type)`` in a
modifier). Such recipes resolve, check, train; arithmetic on a string is one clean ``file:line`` error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_core.errors import UserError
from sparse_core.recipe import load_recipe
from sparse_core.recipe.safe_eval import EvalError, safe_eval

STRING_VARS = """\
version: 1.1.0
num_epochs: {epochs}
lr_func: cosine
init_lr: 0.001
final_lr: 0.0001
mask_type: unstructured
global_sparsity: True
quantization_submodules: null
first_layer: model.1.conv.weight
more_layers: ["re:model\\\\.2\\\\..*conv\\\\.weight", model.3.conv.weight]
num_pruning_active_epochs: {prune_end}
_num_pruning_epochs: eval(num_pruning_active_epochs + 0.5)
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
  - !LearningRateFunctionModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
    lr_func: eval(lr_func)
    init_lr: eval(init_lr)
    final_lr: eval(final_lr)
pruning_modifiers:
  - !GMPruningModifier
    params: [eval(first_layer), model.4.cv1.conv.weight]
    init_sparsity: 0.05
    final_sparsity: 0.5
    start_epoch: 0.0
    end_epoch: eval(num_pruning_active_epochs)
    update_frequency: 0.25
    mask_type: eval(mask_type)
    global_sparsity: eval(global_sparsity)
  - !GMPruningModifier
    params: eval(more_layers)
    init_sparsity: 0.05
    final_sparsity: 0.5
    start_epoch: 0.0
    end_epoch: eval(num_pruning_active_epochs)
    update_frequency: 0.25
    mask_type: eval(mask_type)
"""
QUANT = """\
quantization_modifiers:
  - !QuantizationModifier
    start_epoch: eval(_num_pruning_epochs)
    submodules: eval(quantization_submodules)
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sparse_core.cli", "recipe", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def fields(out: dict, index: int) -> dict:
    return out["modifiers"][index]["fields"]


def test_string_variables_resolve_check_and_override(tmp_path):
    path = tmp_path / "strings.yaml"
    path.write_text(STRING_VARS.format(epochs=4.0, prune_end=2.0) + QUANT)
    proc = cli("check", str(path), "--model", "yolov8n.yaml", "--strict", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["variables"]["mask_type"] == "unstructured" and out["variables"]["quantization_submodules"] is None
    assert out["variables"]["_num_pruning_epochs"] == 2.5
    assert fields(out, 1)["lr_func"] == "cosine"
    assert fields(out, 2)["params"] == ["model.1.conv.weight", "model.4.cv1.conv.weight"]
    assert fields(out, 2)["mask_type"] == "unstructured" and fields(out, 2)["global_sparsity"] is True
    assert fields(out, 3)["params"] == ["re:model\\.2\\..*conv\\.weight", "model.3.conv.weight"]
    assert out["modifiers"][3]["matches"]["params"]["re:model\\.2\\..*conv\\.weight"] > 0
    assert fields(out, 4) == {"start_epoch": 2.5, "submodules": None}  # null: the whole model

    # --recipe-args replaces a string variable like any other
    over = cli("check", str(path), "--recipe-args", '{"mask_type": "block4", "lr_func": "linear"}', "--json")
    assert over.returncode == 0, over.stderr
    out = json.loads(over.stdout.strip().splitlines()[-1])
    assert fields(out, 2)["mask_type"] == "block4" == fields(out, 3)["mask_type"] and fields(out, 1)["lr_func"] == "linear"

    bad = cli("check", str(path), "--recipe-args", '{"mask_type": "diagonal"}')
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and "Traceback" not in bad.stderr
    assert f"{path}:31: GMPruningModifier: mask_type: " in lines[0] and "'diagonal'" in lines[0], lines[0]


@pytest.mark.parametrize("old,new,message", [
    ("eval(num_pruning_active_epochs + 0.5)", "eval(mask_type + 0.5)",
     r":12: _num_pruning_epochs: variable 'mask_type' is 'unstructured', not a number"),
    ("end_epoch: eval(num_epochs)\n  - !Learning", "end_epoch: eval(lr_func)\n  - !Learning",
     r":16: EpochRangeModifier: end_epoch: .*number.*\(got 'cosine'\)"),
    ("lr_func: eval(lr_func)", "lr_func: eval(lr_func == 'cosine')", r":20: lr_func: 'lr_func == 'cosine'' is not allowed"),
    ("mask_type: eval(mask_type)\n    global", "mask_type: eval(mask_typo)\n    global",
     r":31: mask_type: unknown variable 'mask_typo'"),
])
def test_string_misuse_is_one_line_with_file_and_line(tmp_path, old, new, message):
    text = STRING_VARS.format(epochs=4.0, prune_end=2.0)
    assert old in text
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace(old, new, 1))
    proc = cli("check", str(path))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    import re

    assert re.search(re.escape(str(path)) + message, lines[0]), lines[0]


def test_eval_of_a_name_gives_the_variable_as_it_is():
    values = {"mask": "unstructured", "layers": ["a", "b"], "none": None, "flag": True, "n": 3}.__getitem__
    assert safe_eval("mask", values) == "unstructured" and safe_eval(" layers ", values) == ["a", "b"]
    assert safe_eval("none", values) is None and safe_eval("flag", values) is True and safe_eval("n * 2", values) == 6
    assert safe_eval("round(2.345, ndigits=2)", values) == 2.35
    for bad in ["mask + 'x'", "flag + 1", "layers[0]", "n if flag else 1", "n > 2", "round(1, 10**9)", "int(1e300)"]:
        with pytest.raises(EvalError):
            safe_eval(bad, values)


def test_string_variables_from_the_python_api_and_markdown(tmp_path):
    md = tmp_path / "r.md"
    md.write_text("<!-- a card -->\n---\n" + STRING_VARS.format(epochs=2.0, prune_end=1.0) + "---\n# prose\n")
    recipe = load_recipe(md, {"mask_type": "block"})
    assert [m.mask_type for m in recipe.of_kind("pruning")] == ["block", "block"]
    assert "mask_type: block" in recipe.to_yaml()
    with pytest.raises(UserError, match=r"r\.md:\d+: EpochRangeModifier: end_epoch"):
        load_recipe(md, {"num_epochs": "many"})


@pytest.mark.slow
def test_string_variable_recipe_trains_one_epoch(tmp_path):
    """One epoch at 64 px on generated data: the evaluated strings reach the trainer (pruned to the target)."""
    from sparse_core.data.synth import synth_dataset
    from sparse_core.integrations.ultralytics import train

    data = synth_dataset(tmp_path / "data", task="detect", n_train=16, n_val=4, imgsz=64, seed=3)
    recipe = tmp_path / "strings.yaml"
    recipe.write_text(STRING_VARS.format(epochs=1.0, prune_end=0.5))
    summary = train(model="yolov8n.yaml", data=str(data), recipe=str(recipe), imgsz=64, batch=4, workers=0,
                    project=tmp_path, name="strings", plots=False)
    assert summary["epochs"] == 1
    layers = summary["layer_sparsity"]
    by_list = {n: f for n, f in layers.items() if n.startswith(("model.2.", "model.3."))}  # params: eval(more_layers)
    assert by_list and all(abs(f - 0.5) <= 0.01 for f in by_list.values()), by_list
    # params: [eval(first_layer), ...] with global_sparsity: eval(global_sparsity) -> 0.5 over the two together
    assert layers["model.1.conv.weight"] > 0.2 and layers["model.4.cv1.conv.weight"] > 0.2, layers
    assert Path(summary["weights"]["last"]).is_file()

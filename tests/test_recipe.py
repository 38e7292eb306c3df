"""Recipe engine on the seed recipes (verbatim) and a seed-001-style Markdown recipe: CLI check, recipe_args,
round trip, stage split, summary, and the safe evaluator."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sparse_core.errors import UserError
from sparse_core.recipe import load_recipe, parse_recipe_args
from sparse_core.recipe.safe_eval import EvalError, safe_eval

RECIPES = os.path.join(os.path.dirname(__file__), "recipes")
SEED000 = os.path.join(RECIPES, "seed000_yolov8m_pruned80_quant_transfer.yaml")
SEED002 = os.path.join(RECIPES, "seed002_yolov5s_pruned75_quant.yaml")
SEED001_MD = os.path.join(RECIPES, "seed001_style_yolov8n_pruned_quantized.md")
SEED000_ARGS = '{"num_epochs":15,"qat_start_epoch":10,"observer_freeze_epoch":12,"bn_freeze_epoch":12}'


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # tiny work: no thread contention
    return subprocess.run([sys.executable, "-m", "sparse_core.cli", "recipe", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def check_json(*args: str) -> dict:
    proc = cli("check", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def by_type(mods: list[dict], name: str) -> list[dict]:
    return [m for m in mods if m["type"] == name]


def test_seed000_checks_and_recipe_args_resolve_as_the_seed_describes():
    plain = check_json(SEED000)
    assert [m["type"] for m in plain["modifiers"]] == [
        "EpochRangeModifier", "LearningRateFunctionModifier", "ConstantPruningModifier", "QuantizationModifier"]
    assert plain["epochs"] == 56

    # seed 000: --recipe_args '{"num_epochs":15, "qat_start_epoch": 10, ...}' → 15 epochs, QAT over the last 5
    for flag in ("--recipe_args", "--recipe-args"):
        out = check_json(SEED000, flag, SEED000_ARGS)
        mods = out["modifiers"]
        assert out["epochs"] == 15 and out["args"] == json.loads(SEED000_ARGS)
        assert by_type(mods, "EpochRangeModifier")[0]["fields"] == {"start_epoch": 0.0, "end_epoch": 15.0}
        lr = by_type(mods, "LearningRateFunctionModifier")[0]["fields"]
        assert lr == {"lr_func": "cosine", "init_lr": 1e-6, "final_lr": 1e-8, "start_epoch": 10.0, "end_epoch": 15.0}
        assert by_type(mods, "ConstantPruningModifier")[0]["fields"] == {"start_epoch": 0.0,
                                                                         "params": ["re:^((?!dfl).)*$"]}
        quant = by_type(mods, "QuantizationModifier")[0]["fields"]
        assert (quant["start_epoch"], quant["disable_quantization_observer_epoch"], quant["freeze_bn_stats_epoch"]) \
            == (10.0, 12.0, 12.0)
        assert quant["ignore"] == ["Upsample", "Concat", "model.22.dfl.conv"] and len(quant["scheme_overrides"]) == 46
        assert quant["scheme_overrides"]["model.7.conv"] == {
            "input_activations": None, "output_activations": {"num_bits": 8, "symmetric": False}}


def test_seed000_selectors_all_match_yolov8m_strict():
    out = check_json(SEED000, "--model", "yolov8m.yaml", "--strict")
    quant = by_type(out["modifiers"], "QuantizationModifier")[0]["matches"]
    assert out["warnings"] == [] and len(quant["scheme_overrides"]) == 46
    assert all(n > 0 for n in quant["scheme_overrides"].values()) and quant["ignore"]["Upsample"] == 2
    const = by_type(out["modifiers"], "ConstantPruningModifier")[0]["matches"]["params"]
    assert const["re:^((?!dfl).)*$"] == out["model"]["prunable"] - 1  # every conv weight but the DFL one


def test_seed002_checks_with_evaluated_values():
    out = check_json(SEED002)
    mods = out["modifiers"]
    assert len(mods) == 16 and out["epochs"] == 250
    lrs = by_type(mods, "LearningRateFunctionModifier")
    assert [(m["start_epoch"], m["end_epoch"]) for m in lrs] == [(3, 240), (0, 3), (0, 3), (240, 250)]
    assert lrs[1]["fields"]["param_groups"] == [0, 1] and lrs[2]["fields"]["init_lr"] == 0.1
    gmps = by_type(mods, "GMPruningModifier")
    assert [m["fields"]["final_sparsity"] for m in gmps] == [0.424, 0.4838, 0.5374, 0.5854, 0.6284, 0.7325, 0.7602,
                                                            0.8453, 0.9002]
    assert all(m["fields"]["init_sparsity"] == 0.05 and (m["start_epoch"], m["end_epoch"]) == (4, 150) for m in gmps)
    distill = by_type(mods, "PerLayerDistillationModifier")[0]
    assert distill["group"] == "knowledge_disitillation_modifiers" and distill["line"] == 190
    assert distill["fields"]["gain"] == 0.01 and distill["end_epoch"] == 240
    assert len(distill["fields"]["student_layer_names"]) == 54
    quant = by_type(mods, "QuantizationModifier")[0]["fields"]
    assert (quant["start_epoch"], quant["disable_quantization_observer_epoch"], quant["freeze_bn_stats_epoch"]) == (
        240, 242, 241)
    text = cli("check", SEED002)  # the human-readable table
    assert text.returncode == 0 and "knowledge_disitillation_modifiers" in text.stdout and text.stdout.endswith("ok\n")


def test_seed001_style_markdown_recipe():
    out = check_json(SEED001_MD, "--model", "yolov8n.yaml", "--strict")
    mods = out["modifiers"]
    assert [m["line"] for m in mods] == [34, 39, 44, 57, 62, 67, 79, 90]  # file lines, licence comment included
    assert out["variables"]["num_epochs"] == 6.0 and out["variables"]["mask_type"] == "unstructured"
    step = by_type(mods, "LearningRateModifier")[0]["fields"]
    assert step["lr_kwargs"] == {"step_size": 1, "gamma": 0.985} and step["end_epoch"] == 5
    assert sum(by_type(mods, "GMPruningModifier")[0]["matches"]["params"].values()) == 6


def test_round_trip_and_stage_split():
    for path, args in [(SEED000, SEED000_ARGS), (SEED000, None), (SEED002, None), (SEED001_MD, None)]:
        recipe = load_recipe(path, args)
        text = recipe.to_yaml()
        again = load_recipe(text)
        assert again.variables == recipe.variables and again.modifiers == recipe.modifiers
        assert [(m.group, m.type_name) for m in again.modifiers] == [(m.group, m.type_name) for m in recipe.modifiers]
        assert again.to_yaml() == text and "eval(" not in text

    seed002 = load_recipe(SEED002)
    sparse, qat = seed002.split("sparse"), seed002.split("qat")
    assert not sparse.of_type("QuantizationModifier") and sparse.num_epochs() == 240
    assert [m.start_epoch for m in sparse.of_type("LearningRateFunctionModifier")] == [3, 0, 0]
    assert len(sparse.of_type("GMPruningModifier")) == 9 and sparse.of_type("PerLayerDistillationModifier")
    assert [m.type_name for m in qat.modifiers] == ["EpochRangeModifier", "LearningRateFunctionModifier"] + [
        "ConstantPruningModifier"] * 9 + ["QuantizationModifier"]
    assert qat.of_type("ConstantPruningModifier")[8].params == ["model.21.conv.weight"]
    assert all(m.start_epoch == 240 for m in qat.of_type("ConstantPruningModifier"))
    assert load_recipe(qat.to_yaml()).modifiers == qat.modifiers
    with pytest.raises(UserError, match="no QuantizationModifier"):
        load_recipe(SEED002).split("sparse").split("qat")

    resolved = cli("resolve", SEED000, "--recipe_args", SEED000_ARGS, "--stage", "qat")
    assert resolved.returncode == 0 and load_recipe(resolved.stdout).qat_start_epoch() == 10


def test_summary_is_flat_for_mlflow():
    summary = load_recipe(SEED000, SEED000_ARGS).summary()
    assert summary["epochs"] == 15 and summary["quant.start_epoch"] == 10
    assert summary["prune.type"] == "ConstantPruningModifier" and summary["lr.init_lr"] == 1e-6
    assert all(isinstance(v, (int, float, str, bool)) for v in summary.values())
    summary = load_recipe(SEED002).summary()
    assert summary["prune.final_sparsity"] == 0.424 and summary["prune.8.final_sparsity"] == 0.9002
    assert summary["distill.gain"] == 0.01 and summary["lr.3.lr_func"] == "cosine"


def test_raw_text_tags_version_and_args():
    text = "version: 1.1.0\nepochs: 4\nmodifiers:\n  - !EpochRangeModifier\n    end_epoch: eval(max(epochs, 2) * 2)\n"
    recipe = load_recipe(text, {"epochs": 5})
    assert recipe.path is None and recipe.version == "1.1.0" and recipe.num_epochs() == 10
    assert recipe.modifiers[0].group == "modifiers" and recipe.modifiers[0].line == 4
    assert parse_recipe_args('{"a": 1}') == {"a": 1} and parse_recipe_args(None) == {} and parse_recipe_args({"b": 2})
    with pytest.raises(UserError, match="expected an object"):
        parse_recipe_args("[1, 2]")


def test_safe_eval_allows_arithmetic_only():
    names = {"a": 10, "b": 4}.__getitem__
    assert safe_eval("a - b * 2 + (a // 3) % 2 ** 2 - -1", names) == 10 - 8 + (3 % 4) + 1
    assert safe_eval("min(a, b) + max(1.5, b) + round(2.6) + int(3.9) + float(a) / abs(-4)", names) == 4 + 4 + 3 + 3 + 2.5
    for bad in ["a.__class__", "(lambda: 1)()", "'x' * 3", "[1, 2]", "open('f')", "a if b else 1", "2 ** 100000",
                "__import__('os')", "True + 1"]:
        with pytest.raises(EvalError):
            safe_eval(bad, names)
    with pytest.raises(EvalError, match="unknown variable 'c'"):
        safe_eval("a + c", names)


def test_check_against_a_checkpoint(tmp_path):
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from sparse_core.checkpoint import save_atomic

    torch.manual_seed(0)
    ckpt = save_atomic({"model": DetectionModel("yolov8n.yaml", verbose=False), "epoch": 3}, tmp_path / "last.pt")
    out = check_json(SEED000, "--model", str(ckpt))  # yolov8m names on a yolov8n: warnings, still exit 0
    assert out["model"]["prunable"] == 64
    assert any("scheme_overrides: 'model.12.m.1.cv1.conv' matches nothing" in w for w in out["warnings"])
    assert not any("model.12.m.0.cv1.conv'" in w for w in out["warnings"])


def test_markdown_recipe_text_without_a_path_loads_the_same():
    """Checkpoints store the original text; a Markdown recipe must load from it as from the file."""
    with open(SEED001_MD, encoding="utf-8") as fh:
        text = fh.read()
    for raw in (text, text[text.index("---"):]):  # with and without the leading HTML comment
        recipe = load_recipe(raw)
        assert recipe.path is None and recipe.modifiers == load_recipe(SEED001_MD).modifiers
    assert load_recipe("---\n" + open(SEED000).read()).variables["num_epochs"] == 56  # YAML with a '---' start

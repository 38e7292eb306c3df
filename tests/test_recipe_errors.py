"""Bad recipes through the real CLI: exit code 2, one stderr line naming file, line and field, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

GOOD_GMP = """\
version: 1.1.0
num_epochs: 10
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
pruning_modifiers:
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.05
    final_sparsity: 0.8
    start_epoch: 1
    end_epoch: 8
    update_frequency: 0.5
"""


QUANT = "  - !QuantizationModifier\n    start_epoch: 8\n"  # appended: one more entry of pruning_modifiers


def gmp_with(old: str, new: str) -> str:
    assert old in GOOD_GMP
    return GOOD_GMP.replace(old, new)


# (case id, file name, recipe text or None for "do not create", extra CLI args, regex the stderr line must match)
CASES = [
    ("unknown-modifier", "r.yaml", gmp_with("!GMPruningModifier", "!GMPPruningModifier"), [],
     r"r\.yaml:8: unknown modifier 'GMPPruningModifier' \(known: .*GMPruningModifier"),
    ("unknown-field", "r.yaml", gmp_with("    final_sparsity: 0.8", "    final_sparsty: 0.8"), [],
     r"r\.yaml:11: GMPruningModifier: unknown field 'final_sparsty' \(allowed: .*final_sparsity"),
    ("bad-eval-syntax", "r.yaml", gmp_with("eval(num_epochs)", "eval(num_epochs -)"), [],
     r"r\.yaml:6: end_epoch: cannot parse eval\(num_epochs -\)"),
    ("unknown-variable", "r.yaml", gmp_with("eval(num_epochs)", "eval(num_epoch * 2)"), [],
     r"r\.yaml:6: end_epoch: unknown variable 'num_epoch'"),
    ("eval-not-arithmetic", "r.yaml", gmp_with("eval(num_epochs)", "eval(__import__('os').getcwd())"), [],
     r"r\.yaml:6: end_epoch: .*is not allowed \(allowed: numbers"),
    ("eval-division-by-zero", "r.yaml", gmp_with("eval(num_epochs)", "eval(num_epochs / 0)"), [],
     r"r\.yaml:6: end_epoch: eval\(num_epochs / 0\): division by zero"),
    ("end-before-start", "r.yaml", gmp_with("end_epoch: 8", "end_epoch: 0.5"), [],
     r"r\.yaml:13: GMPruningModifier: end_epoch: end_epoch 0.5 is before start_epoch 1"),
    ("final-sparsity-1", "r.yaml", gmp_with("final_sparsity: 0.8", "final_sparsity: 1.0"), [],
     r"r\.yaml:11: GMPruningModifier: final_sparsity: sparsity 1 is outside \[0, 1\)"),
    ("init-sparsity-negative", "r.yaml", gmp_with("init_sparsity: 0.05", "init_sparsity: -0.1"), [],
     r"r\.yaml:10: GMPruningModifier: init_sparsity: sparsity -0.1 is outside \[0, 1\)"),
    ("malformed-yaml", "r.yaml", gmp_with("    params: __ALL_PRUNABLE__", "    params: [__ALL_PRUNABLE__"), [],
     r"r\.yaml:\d+: malformed YAML"),
    ("empty-file", "r.yaml", "", [], r"r\.yaml:1: recipe is empty"),
    ("missing-file", "nope.yaml", None, [], r"nope\.yaml: recipe file not found"),
    ("regex-does-not-compile", "r.yaml", gmp_with("params: __ALL_PRUNABLE__", "params: ['re:model\\.(2']"), [],
     r"r\.yaml:9: GMPruningModifier: params: regex 're:model\\\.\(2' does not compile"),
    ("wrong-type", "r.yaml", gmp_with("update_frequency: 0.5", "update_frequency: often"), [],
     r"r\.yaml:14: GMPruningModifier: update_frequency: .*number.*\(got 'often'\)"),
    ("missing-required-field", "r.yaml", gmp_with("    final_sparsity: 0.8\n", ""), [],
     r"r\.yaml:8: GMPruningModifier: missing required field 'final_sparsity'"),
    ("bad-inter-func", "r.yaml", gmp_with("update_frequency: 0.5", "update_frequency: 0.5\n    inter_func: quadratic"),
     [], r"r\.yaml:15: GMPruningModifier: inter_func: .*'linear', 'cubic' or 'inverse_cubic'"),
    ("zero-update-frequency", "r.yaml", gmp_with("update_frequency: 0.5", "update_frequency: 0"), [],
     r"r\.yaml:14: GMPruningModifier: update_frequency: update_frequency 0 must be > 0"),
    ("sparsity-list-length", "r.yaml", gmp_with("final_sparsity: 0.8", "final_sparsity: [0.5, 0.6]"), [],
     r"r\.yaml:11: GMPruningModifier: final_sparsity: has 2 values for 1 params entries"),
    ("modifiers-not-a-list", "r.yaml", "num_epochs: 3\ntraining_modifiers:\n  end_epoch: 3\n", [],
     r"r\.yaml:2: training_modifiers: is a mapping; expected a list"),
    ("entry-without-tag", "r.yaml", "training_modifiers:\n  - start_epoch: 0\n    end_epoch: 3\n", [],
     r"r\.yaml:2: training_modifiers: entry is not a modifier; expected '- !ModifierName'"),
    ("no-modifiers", "r.yaml", "version: 1.1.0\nnum_epochs: 3\n", [], r"r\.yaml:1: recipe has no modifiers"),
    ("top-level-list", "r.yaml", "- !EpochRangeModifier\n  end_epoch: 3\n", [],
     r"r\.yaml:1: recipe top level is a list; expected a mapping"),
    ("variable-cycle", "r.yaml", "a: eval(b + 1)\nb: eval(a * 2)\n" + GOOD_GMP.split("\n", 2)[2], [],
     r"r\.yaml:\d: [ab]: variables refer to each other in a cycle \((a -> b -> a|b -> a -> b)\)"),
    ("lr-func-unknown", "r.yaml", "training_modifiers:\n  - !LearningRateFunctionModifier\n    start_epoch: 0\n"
     "    end_epoch: 3\n    lr_func: step\n    init_lr: 0.1\n    final_lr: 0.01\n", [],
     r"r\.yaml:5: LearningRateFunctionModifier: lr_func: .*'linear' or 'cosine'"),
    ("scheme-override-typo", "r.yaml", "quantization_modifiers:\n  - !QuantizationModifier\n    start_epoch: 2\n"
     "    scheme_overrides:\n      model.2.cv1.act:\n        output_activation:\n          num_bits: 8\n", [],
     r"r\.yaml:6: QuantizationModifier: scheme_overrides: model\.2\.cv1\.act\.output_activation: unknown key"),
    ("observer-before-qat", "r.yaml", "quantization_modifiers:\n  - !QuantizationModifier\n    start_epoch: 5\n"
     "    disable_quantization_observer_epoch: 3\n", [],
     r"r\.yaml:4: QuantizationModifier: disable_quantization_observer_epoch: .*before start_epoch 5"),
    ("markdown-without-front-matter", "r.md", "# Just prose\n\nno recipe here\n", [],
     r"r\.md:1: Markdown recipe has no YAML front matter"),
    ("recipe-args-bad-json", "r.yaml", GOOD_GMP, ["--recipe-args", "{num_epochs: 3}"],
     r"--recipe-args: not valid JSON"),
    ("recipe-args-unknown-variable", "r.yaml", GOOD_GMP, ["--recipe_args", '{"num_epoch": 3}'],
     r"r\.yaml: --recipe-args: 'num_epoch' is not a variable of this recipe \(variables: num_epochs\)"),
    ("recipe-args-breaks-schedule", "r.yaml", GOOD_GMP, ["--recipe_args", '{"num_epochs": -4}'],
     r"r\.yaml:6: EpochRangeModifier: end_epoch: end_epoch -4 must be > 0"),
    ("strict-selector-matches-nothing", "r.yaml", gmp_with("params: __ALL_PRUNABLE__", "params: ['model.99.conv.weight']"),
     ["--model", "yolov8n.yaml", "--strict"],
     r"r\.yaml:8: GMPruningModifier: params: 'model\.99\.conv\.weight' matches nothing in the model"),
    ("model-yaml-not-found", "r.yaml", GOOD_GMP, ["--model", "nosuchmodel.yaml"], r"--model: nosuchmodel\.yaml"),
    # rules across modifiers: reported by `recipe check`, not first when training starts
    ("two-quantization-modifiers", "r.yaml", GOOD_GMP + QUANT + QUANT, [],
     r"r\.yaml:17: QuantizationModifier: the recipe has 2 QuantizationModifiers; expected one"),
    ("filter-mask-with-quantization", "r.yaml", gmp_with("    update_frequency: 0.5", "    update_frequency: 0.5\n"
                                                         "    mask_type: filter") + QUANT, [],
     r"r\.yaml:8: GMPruningModifier: mask_type: filter and a QuantizationModifier in one recipe is not supported"),
]


@pytest.mark.parametrize("name,filename,text,extra,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_recipe_exits_2_with_one_line(tmp_path, name, filename, text, extra, pattern):
    path = tmp_path / filename
    if text is not None:
        path.write_text(textwrap.dedent(text))
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # tiny work: no thread contention
    proc = subprocess.run([sys.executable, "-m", "sparse_core.cli", "recipe", "check", str(path), *extra],
                          capture_output=True, text=True, env=env, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sparsepipe recipe: error: ")
    import re

    assert re.search(pattern, lines[0]), lines[0]

"""Components are thin, documented and pinned; the step functions behind them (cache, tracking, errors, the
sparse/QAT recipe split) work on their own, without KFP."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
import yaml

from sparse_core import step_cache, step_inputs, steps
from sparse_core.errors import UserError
from sparse_core.image import component_image

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = sorted(p.parent.name for p in (ROOT / "components").glob("*/component.py"))
NO_CACHE = steps.StepContext(cache_dir="none")
STEP_FUNCS = {"fetch_checkpoint", "prepare_dataset", "sparse_train", "qat", "export_model", "benchmark",
              "register_model", "select_champion", "open_parent_run", "close_parent_run", "analyze",
              "generate_recipe", "decide_precision", "choose_deployment"}


def load_component(name: str):
    import importlib

    return getattr(importlib.import_module(f"components.{name}.component"), name)


def test_every_required_component_exists():
    assert {"fetch_checkpoint", "prepare_dataset", "sparse_train", "qat", "export_model", "benchmark",
            "register_model", "select_champion", "open_run", "close_run"} <= set(COMPONENTS)


@pytest.mark.parametrize("name", COMPONENTS)
def test_component_body_is_thin(name):
    """The body imports sparse_core.steps only and calls exactly one step function."""
    tree = ast.parse((ROOT / "components" / name / "component.py").read_text())
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    imports = [n for n in ast.walk(func) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [(i.module, [a.name for a in i.names]) for i in imports] == [("sparse_core", ["steps"])]
    calls = [n.func.attr for n in ast.walk(func) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "steps"]
    assert len([c for c in calls if c in STEP_FUNCS]) == 1, calls
    assert len(func.body) <= 6  # docstring, import, call, a little output plumbing


@pytest.mark.parametrize("name", COMPONENTS)
def test_component_readme_lists_inputs_and_outputs(name):
    comp = load_component(name)
    readme = (ROOT / "components" / name / "README.md").read_text()
    spec = comp.component_spec
    for io_name in list(spec.inputs or {}) + [o for o in (spec.outputs or {}) if o != "Output"]:
        assert f"`{io_name}`" in readme, f"{name}/README.md does not document `{io_name}`"
    assert "## Inputs" in readme and "## Outputs" in readme


def test_component_docs_are_generated_from_the_code():
    """README.md and metadata.yaml of every component are what its docstring and signature generate."""
    from pipelines import component_docs

    assert component_docs.drift() == [], "run: python -m pipelines.component_docs --write"
    for name in COMPONENTS:
        meta = yaml.safe_load((ROOT / "components" / name / "metadata.yaml").read_text())
        spec = load_component(name).component_spec
        assert meta["name"] == name and meta["stability"] in component_docs.STABILITY
        assert list(meta["inputs"]) == list(spec.inputs or {})
        assert set(meta["outputs"]) == set(spec.outputs or {}) | ({"Output"} if "Output" in (spec.outputs or {})
                                                                  else set())


def test_component_docs_drift_is_caught_and_custom_text_kept(tmp_path):
    from pipelines import component_docs

    folder = tmp_path / "qat"
    folder.mkdir()
    for f in ("component.py", "README.md", "metadata.yaml"):
        (folder / f).write_text((ROOT / "components" / "qat" / f).read_text())
    assert component_docs.drift(tmp_path) == []
    readme = (folder / "README.md").read_text()
    (folder / "README.md").write_text(readme.replace("| `seed` |", "| `random_seed` |") + "\nhand-written\n")
    meta = (folder / "metadata.yaml").read_text()
    (folder / "metadata.yaml").write_text(meta.replace("  workers: {type: int, default: 2}\n", ""))
    assert component_docs.drift(tmp_path) == ["components/qat/README.md", "components/qat/metadata.yaml"]
    assert component_docs.write(tmp_path) == ["components/qat/README.md", "components/qat/metadata.yaml"]
    assert component_docs.drift(tmp_path) == [] and "| `seed` |" in (folder / "README.md").read_text()
    assert (folder / "README.md").read_text().endswith("hand-written\n")  # after the marker: kept
    (folder / "metadata.yaml").write_text(meta.replace("stability: beta", "stability: gold"))
    with pytest.raises(UserError, match="stability: 'gold'; expected one of alpha, beta, stable"):
        component_docs.drift(tmp_path)


def test_component_docs_reject_an_undocumented_parameter():
    from kfp import dsl

    from pipelines import component_docs

    def half_documented(a, b=1):
        """Do a thing.

        Args:
            a: The thing.

        Returns:
            What was done.
        """
        return a

    half_documented.__annotations__ = {"a": str, "b": int, "return": str}  # real types: this file defers its own
    comp = dsl.component(half_documented, base_image=component_image(), install_kfp_package=False)
    with pytest.raises(UserError, match="parameter `b` is not described under Args:"):
        component_docs.describe("half_documented", comp=comp)


@pytest.mark.parametrize("name", COMPONENTS)
def test_component_image_is_pinned(name):
    comp = load_component(name)
    image = comp.component_spec.implementation.container.image
    assert image == component_image("cuda" if name in ("sparse_train", "qat") else "cpu")
    assert not image.endswith(":latest") and ":" in image.rsplit("/", 1)[-1]


def test_step_cache_keys_hits_and_disable(tmp_path):
    calls = []

    def compute(out: Path) -> dict:
        calls.append(out)
        (out / "f.txt").write_text("payload")
        return {"file": "f.txt", "n": len(calls)}

    cache = str(tmp_path / "cache")
    r1, hit1, key1 = step_cache.cached("s", {"recipe": "a"}, tmp_path / "o1", compute, cache)
    r2, hit2, key2 = step_cache.cached("s", {"recipe": "a"}, tmp_path / "o2", compute, cache)
    assert (hit1, hit2) == (False, True) and key1 == key2 and r2 == r1 and len(calls) == 1
    assert (tmp_path / "o2/f.txt").read_text() == "payload"  # output restored at the new place
    _, hit3, key3 = step_cache.cached("s", {"recipe": "b"}, tmp_path / "o3", compute, cache)
    assert not hit3 and key3 != key1 and len(calls) == 2  # a changed input never hits
    _, hit4, _ = step_cache.cached("other-step", {"recipe": "a"}, tmp_path / "o4", compute, cache)
    assert not hit4  # keys are per step
    _, hit5, _ = step_cache.cached("s", {"recipe": "a"}, tmp_path / "o5", compute, "none")
    assert not hit5 and len(calls) == 4
    entry = tmp_path / "cache" / "s" / key1
    (entry / "result.json").write_text("{torn")  # an unreadable entry is recomputed and replaced
    _, hit6, _ = step_cache.cached("s", {"recipe": "a"}, tmp_path / "o6", compute, cache)
    assert not hit6 and json.loads((entry / "result.json").read_text())["n"] == 5
    assert not list((tmp_path / "cache" / "s").glob(".*"))  # no temp folders left behind


def test_failed_step_marks_child_run_and_records_cause(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # sqlite store: artifacts default to ./mlruns
    monkeypatch.setenv("SPARSEPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(steps.ERRORS_ENV, str(tmp_path / "errors"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = steps.open_parent_run(uri, "unit", pipeline="p", pipeline_run_id="kfp-123")["run_id"]
    with pytest.raises(UserError, match="not found"):
        steps.prepare_dataset(str(tmp_path / "missing"), str(tmp_path / "out"),
                              ctx=steps.StepContext(uri, "unit", parent_run_id=parent, cache_dir="none"))
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "errors").glob("*.json")]
    assert record["step"] == "prepare_dataset" and record["user"] and "missing: not found" in record["error"]
    closed = steps.close_parent_run(uri, "unit", pipeline_run_id="kfp-123", state="FAILED",
                                    error="Task exit-handler-1 failed.")  # found by the KFP run id tag
    client = MlflowClient(uri)
    child = client.search_runs([client.get_run(parent).info.experiment_id],
                               f"tags.`mlflow.parentRunId` = '{parent}'")[0]
    assert child.info.status == "FAILED" and "missing: not found" in child.data.tags["sparsepipe.error"]
    assert child.data.tags["pipeline_run_id"] == "kfp-123"  # inherited from the parent
    assert closed["run_id"] == parent and client.get_run(parent).info.status == "FAILED"
    # the parent names the failing step's own cause, not KFP's generic "exit-handler failed"
    assert client.get_run(parent).data.tags["sparsepipe.error"].startswith("prepare_dataset: ")


def test_qat_passes_through_without_quantization(tmp_path):
    src = tmp_path / "sparse"
    src.mkdir()
    (src / "model.pt").write_bytes(b"weights")
    (src / "summary.json").write_text(json.dumps({"map50": 0.5, "sparsity": 0.8, "weights": "model.pt"}))
    (src / "recipe.full.yaml").write_text("version: 1.1.0\nmodifiers:\n  - !EpochRangeModifier\n"
                                          "    start_epoch: 0\n    end_epoch: 2\n")
    out = tmp_path / "qat"
    result = steps.qat(str(src), str(tmp_path / "unused"), str(out), ctx=NO_CACHE)
    assert result["qat"] == "skipped" and result["sparsity"] == 0.8
    assert (out / "model.pt").read_bytes() == b"weights" and (out / "recipe.full.yaml").is_file()


QUANT_RECIPE = """
version: 1.1.0
num_epochs: 3
qat_start: 2
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
pruning_modifiers:
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.05
    final_sparsity: 0.4
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.5
quantization_modifiers:
  - !QuantizationModifier
    start_epoch: eval(qat_start)
    ignore: ['Upsample', 'Concat', 'model.22.dfl.conv']
"""


@pytest.fixture(scope="module")
def sparse_stage(tmp_path_factory):
    """sparse_train on a recipe with pruning then QAT: only the pruning stage runs here."""
    from sparse_core.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("stages")
    data = synth_dataset(root / "data", n_train=8, n_val=4, imgsz=64, seed=5).parent
    fetched = root / "fetch"
    steps.fetch_checkpoint("yolov8n.yaml", str(fetched), ctx=NO_CACHE)
    (root / "r.yaml").write_text(QUANT_RECIPE)
    out = root / "sparse"
    result = steps.sparse_train(str(fetched), str(data), str(out),
                                steps.RecipeSettings(recipe=str(root / "r.yaml"), recipe_args='{"num_epochs": 3}'),
                                steps.TrainSettings(imgsz=64, batch=4, workers=0), NO_CACHE)
    return {"root": root, "data": data, "out": out, "result": result}


def test_sparse_stage_runs_recipe_without_quantization(sparse_stage):
    from sparse_core.recipe import load_recipe

    out, result = sparse_stage["out"], sparse_stage["result"]
    stage = load_recipe(str(out / "recipe.yaml"))
    full = load_recipe(str(out / "recipe.full.yaml"))
    assert not stage.of_type("QuantizationModifier") and stage.num_epochs() == 2  # cut at the QAT start
    assert full.of_type("QuantizationModifier") and full.num_epochs() == 3  # recipe_args applied
    assert abs(result["sparsity"] - 0.4) < 0.02 and result["epochs"] == 2
    assert json.loads((out / "summary.json").read_text())["weights"] == "model.pt"
    assert [r["epoch"] for r in result["history"]] == [1, 2]


def test_qat_stage_rebased_to_continue_from_sparse_checkpoint(sparse_stage):
    from sparse_core.recipe import load_recipe

    full = load_recipe(str(sparse_stage["out"] / "recipe.full.yaml"))
    qat_part = full.split("qat").rebased(full.qat_start_epoch())
    assert qat_part.num_epochs() == 1  # the epochs after the QAT start
    (quant,) = qat_part.of_type("QuantizationModifier")
    (hold,) = qat_part.of_type("ConstantPruningModifier")
    assert quant.start_epoch == 0 and hold.start_epoch == 0  # masks held from the first QAT step


def test_qat_stage_trains_with_masks_held(sparse_stage):
    """Needs QAT to start at epoch 0 of a run (the rebased stage); see the report if this fails in the EMA."""
    q = steps.qat(str(sparse_stage["out"]), str(sparse_stage["data"]), str(sparse_stage["root"] / "qat"),
                  steps.TrainSettings(imgsz=64, batch=4, workers=0), NO_CACHE)
    assert q["qat"] == "trained" and abs(q["sparsity"] - 0.4) < 0.02  # the zeros survived QAT
    assert yaml.safe_load((sparse_stage["root"] / "qat" / "summary.json").read_text())["weights"] == "model.pt"
    from sparse_core.checkpoint import load_checkpoint, sparsepipe_meta

    assert sparsepipe_meta(load_checkpoint(sparse_stage["root"] / "qat" / "model.pt"))["quantized"] is True


def test_fetch_nothing_for_an_empty_optional_model(tmp_path):
    result = steps.fetch_checkpoint("", str(tmp_path / "teacher"), ctx=NO_CACHE)
    assert result["kind"] == "none" and step_inputs.nothing_fetched(str(tmp_path / "teacher"))
    with pytest.raises(UserError, match="not found; expected a zoo: stub"):
        steps.fetch_checkpoint(str(tmp_path / "nope.pt"), str(tmp_path / "x"), ctx=NO_CACHE)


def test_one_line_causes():
    assert steps.one_line(UserError("a.yaml:3: field: bad\nmore")) == "a.yaml:3: field: bad"
    assert steps.one_line(ValueError("boom\ntrace")) == "ValueError: boom"
    assert steps.one_line(KeyError()) == "KeyError"
    assert os.environ.get(steps.ERRORS_ENV) is None

"""Bad input through the real CLI (``sparse_core.cli.main``, the console script's entry): every case must end with
exactly one stderr line, exit code 2, no traceback, and nothing written where the command was told to write.

The table is the README's promise made executable; each row is (id, argv, the path that must stay absent/empty).
Files the rows refer to live in one folder built once (``ws``); ``{ws}`` in argv is replaced by its path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sparse_core.cli import main

GMP = "  - !GMPruningModifier\n    init_sparsity: 0.05\n    start_epoch: 0\n    update_frequency: 1\n    params: __ALL_PRUNABLE__\n"
GOOD_RECIPE = "version: 1.1.0\nmodifiers:\n" + GMP + "    final_sparsity: 0.5\n    end_epoch: 2\n"


def _write(root: Path, name: str, content: str | bytes) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Inputs for every row: a tiny valid data set, broken recipes/data yamls/models, an existing output folder."""
    from sparse_core.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("badinput")
    synth_dataset(root / "data", n_train=2, n_val=2, imgsz=64, seed=0)
    rng = bytes(range(256)) * 20
    files = {
        "recipe.yaml": GOOD_RECIPE,
        "empty.yaml": "",
        "garbage.yaml": rng,
        "malformed.yaml": "version: 1.1.0\nmodifiers: [\n",
        "unknown_modifier.yaml": "modifiers:\n  - !NoSuchModifier\n    end_epoch: 1\n",
        "unknown_field.yaml": "modifiers:\n  - !GMPruningModifier\n    final_sparsty: 0.5\n",
        "bad_eval.yaml": "x: eval(1 +)\nmodifiers:\n  - !EpochRangeModifier\n    end_epoch: eval(x)\n",
        "unknown_var.yaml": "modifiers:\n  - !EpochRangeModifier\n    end_epoch: eval(nope * 2)\n",
        "end_before_start.yaml": GOOD_RECIPE.replace("start_epoch: 0", "start_epoch: 3"),
        "sparsity_range.yaml": GOOD_RECIPE.replace("final_sparsity: 0.5", "final_sparsity: 1.5"),
        "bad_regex.yaml": GOOD_RECIPE.replace("__ALL_PRUNABLE__", "['re:(']"),
        "list_top.yaml": "- 1\n- 2\n",
        "nofront.md": "# a recipe without front matter\n",
        "huge_int.yaml": "n: eval(10 ** 100000)\nmodifiers:\n  - !EpochRangeModifier\n    end_epoch: 1\n",
        "garbage.pt": rng,
        "empty.pt": b"",
        "garbage.onnx": rng,
        "empty.onnx": b"",
        "notes.txt": "not a model",
        "data_list.yaml": "- a\n- b\n",
        "data_nonames.yaml": "train: images/train\nval: images/val\n",
        "data_missing_dir.yaml": "path: .\ntrain: nowhere/train\nval: nowhere/val\nnames: {0: a}\n",
        "data_bad_yaml.yaml": "train: [\n",
        "coco/bad.json": "{not json",
        "coco/wrong.json": json.dumps({"images": "x"}),
        "voc/README": "no Annotations here",
        "yolo/data.yaml": "train: images/train\nval: images/val\nnames: {0: a}\n",
        "deploy_empty/.keep": "",
        "nonempty_out/file.txt": "keep me",
        "afile": "i am a file",
    }
    for name, content in files.items():
        _write(root, name, content)
    (root / "empty_images" / "images" / "train").mkdir(parents=True)
    (root / "empty_images" / "images" / "val").mkdir(parents=True)
    _write(root, "empty_images/data.yaml", "train: images/train\nval: images/val\nnames: {0: a}\n")
    return root


D = "{ws}/data/data.yaml"
R = "{ws}/recipe.yaml"
OUT = "{ws}/out"  # must never be created by a failing command
TRAIN = ["train", "--imgsz", "64", "--epochs", "1", "--batch", "2", "--workers", "0", "--project", OUT, "--name", "t"]
CASES = [
    # --- top level / argparse
    ("no-such-command", ["bogus"]),
    ("unknown-flag", ["recipe", "check", R, "--nope"]),
    ("recipe-no-subcommand", ["recipe"]),
    ("recipe-check-no-arg", ["recipe", "check"]),
    ("int-flag-not-int", ["data", "synth", OUT, "--train", "abc"]),
    ("choice-not-allowed", ["data", "synth", OUT, "--task", "pose"]),
    ("resolve-bad-stage", ["recipe", "resolve", R, "--stage", "nope"]),
    ("export-missing-required", ["export", "--weights", "{ws}/garbage.pt"]),
    ("val-missing-required", ["val"]),
    ("prepare-missing-format", ["data", "prepare", "{ws}/coco", "--out", OUT]),
    # --- recipe check / resolve
    ("recipe-missing", ["recipe", "check", "{ws}/nope.yaml"]),
    ("recipe-empty", ["recipe", "check", "{ws}/empty.yaml"]),
    ("recipe-binary", ["recipe", "check", "{ws}/garbage.yaml"]),
    ("recipe-dir", ["recipe", "check", "{ws}/coco"]),
    ("recipe-malformed", ["recipe", "check", "{ws}/malformed.yaml"]),
    ("recipe-unknown-modifier", ["recipe", "check", "{ws}/unknown_modifier.yaml"]),
    ("recipe-unknown-field", ["recipe", "check", "{ws}/unknown_field.yaml"]),
    ("recipe-bad-eval", ["recipe", "check", "{ws}/bad_eval.yaml"]),
    ("recipe-unknown-var", ["recipe", "check", "{ws}/unknown_var.yaml"]),
    ("recipe-end-before-start", ["recipe", "check", "{ws}/end_before_start.yaml"]),
    ("recipe-sparsity-range", ["recipe", "check", "{ws}/sparsity_range.yaml"]),
    ("recipe-bad-regex", ["recipe", "check", "{ws}/bad_regex.yaml"]),
    ("recipe-list-top", ["recipe", "check", "{ws}/list_top.yaml"]),
    ("recipe-md-no-front-matter", ["recipe", "check", "{ws}/nofront.md"]),
    ("recipe-huge-int", ["recipe", "check", "{ws}/huge_int.yaml"]),
    ("recipe-args-bad-json", ["recipe", "check", R, "--recipe-args", "{nope"]),
    ("recipe-args-not-object", ["recipe", "check", R, "--recipe-args", "[1, 2]"]),
    ("recipe-args-unknown-var", ["recipe", "check", R, "--recipe-args", '{"no_such_var": 1}']),
    ("recipe-model-missing", ["recipe", "check", R, "--model", "{ws}/nope.pt"]),
    ("recipe-model-suffix", ["recipe", "check", R, "--model", "{ws}/notes.txt"]),
    ("recipe-model-garbage", ["recipe", "check", R, "--model", "{ws}/garbage.pt"]),
    ("recipe-model-empty", ["recipe", "check", R, "--model", "{ws}/empty.pt"]),
    ("recipe-model-no-yaml", ["recipe", "check", R, "--model", "yolov99z.yaml"]),
    ("resolve-missing", ["recipe", "resolve", "{ws}/nope.yaml"]),
    ("resolve-malformed", ["recipe", "resolve", "{ws}/malformed.yaml"]),
    ("resolve-bad-args", ["recipe", "resolve", R, "--recipe-args", "nope"]),
    # --- train
    ("train-no-model", [*TRAIN, "--data", D]),
    ("train-no-data", [*TRAIN, "--model", "yolov8n.yaml"]),
    ("train-data-missing", [*TRAIN, "--model", "yolov8n.yaml", "--data", "{ws}/nope.yaml"]),
    ("train-data-list", [*TRAIN, "--model", "yolov8n.yaml", "--data", "{ws}/data_list.yaml"]),
    ("train-data-no-names", [*TRAIN, "--model", "yolov8n.yaml", "--data", "{ws}/data_nonames.yaml"]),
    ("train-data-missing-dir", [*TRAIN, "--model", "yolov8n.yaml", "--data", "{ws}/data_missing_dir.yaml"]),
    ("train-data-bad-yaml", [*TRAIN, "--model", "yolov8n.yaml", "--data", "{ws}/data_bad_yaml.yaml"]),
    ("train-data-no-images", [*TRAIN, "--model", "yolov8n.yaml", "--data", "{ws}/empty_images/data.yaml"]),
    ("train-model-suffix", [*TRAIN, "--model", "{ws}/notes.txt", "--data", D]),
    ("train-model-missing", [*TRAIN, "--model", "{ws}/nope.pt", "--data", D]),
    ("train-model-garbage", [*TRAIN, "--model", "{ws}/garbage.pt", "--data", D]),
    ("train-model-no-yaml", [*TRAIN, "--model", "yolov99z.yaml", "--data", D]),
    ("train-model-is-recipe", [*TRAIN, "--model", R, "--data", D]),
    ("train-model-is-data-yaml", [*TRAIN, "--model", D, "--data", D]),
    ("train-batch-0", [*TRAIN, "--model", "yolov8n.yaml", "--data", D, "--batch", "0"]),
    ("train-epochs-0", [*TRAIN, "--model", "yolov8n.yaml", "--data", D, "--epochs", "0"]),
    ("train-imgsz-16", [*TRAIN, "--model", "yolov8n.yaml", "--data", D, "--imgsz", "16"]),
    ("train-accum-0", [*TRAIN, "--model", "yolov8n.yaml", "--data", D, "--gradient-accum-steps", "0"]),
    ("train-recipe-missing", [*TRAIN, "--model", "yolov8n.yaml", "--data", D, "--recipe", "{ws}/nope.yaml"]),
    ("train-recipe-malformed", [*TRAIN, "--model", "yolov8n.yaml", "--data", D, "--recipe", "{ws}/malformed.yaml"]),
    ("train-recipe-args-bad", [*TRAIN, "--model", "yolov8n.yaml", "--data", D, "--recipe", R,
                               "--recipe-args", "{bad"]),
    ("train-resume-missing", [*TRAIN, "--resume", "{ws}/nope.pt"]),
    ("train-resume-garbage", [*TRAIN, "--resume", "{ws}/garbage.pt"]),
    ("train-teacher-missing", [*TRAIN, "--model", "yolov8n.yaml", "--data", D, "--recipe", R,
                               "--teacher", "{ws}/nope.pt"]),
    ("train-yolact-partial", [*TRAIN, "--model", "yolov8n-seg.yaml", "--train_info", "{ws}/coco/bad.json"]),
    ("train-zoo-no-zoo", [*TRAIN, "--model", "zoo:cv/detection/yolov8-n/pytorch/ultralytics/coco/pruned-none",
                          "--data", D, "--zoo", "{ws}/no_zoo_here"]),
    # --- val
    ("val-missing", ["val", "--weights", "{ws}/nope.onnx", "--data", D]),
    ("val-suffix", ["val", "--weights", "{ws}/notes.txt", "--data", D]),
    ("val-garbage-onnx", ["val", "--weights", "{ws}/garbage.onnx", "--data", D, "--imgsz", "64"]),
    ("val-empty-onnx", ["val", "--weights", "{ws}/empty.onnx", "--data", D, "--imgsz", "64"]),
    ("val-garbage-pt", ["val", "--weights", "{ws}/garbage.pt", "--data", D]),
    ("val-empty-deploy", ["val", "--weights", "{ws}/deploy_empty", "--data", D]),
    ("val-data-missing", ["val", "--weights", "{ws}/garbage.onnx", "--data", "{ws}/nope.yaml"]),
    # --- export
    ("export-weights-missing", ["export", "--weights", "{ws}/nope.pt", "--out", OUT]),
    ("export-weights-garbage", ["export", "--weights", "{ws}/garbage.pt", "--out", OUT]),
    ("export-weights-empty", ["export", "--weights", "{ws}/empty.pt", "--out", OUT]),
    ("export-weights-dir", ["export", "--weights", "{ws}/coco", "--out", OUT]),
    ("export-imgsz-not-int", ["export", "--weights", "{ws}/garbage.pt", "--out", OUT, "--imgsz", "big"]),
    # --- benchmark
    ("bench-missing", ["benchmark", "{ws}/nope.onnx"]),
    ("bench-garbage", ["benchmark", "{ws}/garbage.onnx"]),
    ("bench-empty", ["benchmark", "{ws}/empty.onnx"]),
    ("bench-empty-deploy", ["benchmark", "{ws}/deploy_empty"]),
    ("bench-compare-missing", ["benchmark", "{ws}/garbage.onnx", "--compare", "{ws}/nope.onnx"]),
    ("bench-threads-not-int", ["benchmark", "{ws}/garbage.onnx", "--threads", "many"]),
    ("bench-both-budgets", ["benchmark", "{ws}/garbage.onnx", "--seconds", "1", "--iterations", "3"]),
    # --- data
    ("synth-train-negative", ["data", "synth", OUT, "--train", "-1"]),
    ("synth-imgsz-tiny", ["data", "synth", OUT, "--imgsz", "4"]),
    ("synth-classes-0", ["data", "synth", OUT, "--classes", "0"]),
    ("synth-out-nonempty", ["data", "synth", "{ws}/nonempty_out"]),
    ("prepare-src-missing", ["data", "prepare", "{ws}/nope", "--format", "coco", "--out", OUT]),
    ("prepare-coco-bad-json", ["data", "prepare", "{ws}/coco/bad.json", "--format", "coco", "--out", OUT]),
    ("prepare-coco-wrong-shape", ["data", "prepare", "{ws}/coco/wrong.json", "--format", "coco", "--out", OUT]),
    ("prepare-voc-no-annotations", ["data", "prepare", "{ws}/voc", "--format", "voc", "--out", OUT]),
    ("prepare-yolo-no-images", ["data", "prepare", "{ws}/yolo/data.yaml", "--format", "yolo", "--out", OUT]),
    ("prepare-val-fraction", ["data", "prepare", "{ws}/data/data.yaml", "--format", "yolo", "--out", OUT,
                              "--val-fraction", "2"]),
    ("prepare-out-nonempty", ["data", "prepare", "{ws}/data/data.yaml", "--format", "yolo", "--out",
                              "{ws}/nonempty_out"]),
    # --- zoo / models / pipeline
    ("zoo-bad-stub", ["zoo", "fetch", "not-a-stub", "--out", OUT, "--zoo", "{ws}/zoo"]),
    ("zoo-missing-stub", ["zoo", "fetch", "zoo:cv/detection/yolov8-n/pytorch/ultralytics/coco/pruned-none",
                          "--out", OUT, "--zoo", "{ws}/zoo"]),
    ("zoo-publish-src-missing", ["zoo", "publish", "{ws}/nope",
                                 "zoo:cv/detection/yolov8-n/pytorch/ultralytics/coco/pruned-none", "--zoo", OUT]),
    ("zoo-publish-short-stub", ["zoo", "publish", "{ws}/deploy_empty", "zoo:yolov8-n", "--zoo", OUT]),
    ("zoo-bad-scheme", ["zoo", "list", "--zoo", "ftp://nowhere/zoo"]),
    ("models-pull-no-uri", ["models", "pull", "m@candidate", "--out", OUT]),
    ("models-pull-bad-spec", ["models", "pull", "@@", "--out", OUT, "--mlflow", "{ws}/mlruns"]),
    ("pipeline-unknown", ["pipeline", "compile", "no_such_pipeline", "--out", "{ws}/out.yaml"]),
    ("pipeline-run-not-local", ["pipeline", "run", "sparse_transfer"]),
    ("pipeline-param-no-equals", ["pipeline", "run", "sparse_transfer", "--local", "--param", "epochs"]),
    ("pipeline-param-unknown", ["pipeline", "run", "sparse_transfer", "--local", "--param", "nope=1"]),
]


def test_table_is_large_enough():
    assert len(CASES) >= 80
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("argv", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(argv, ws, capfd, monkeypatch):
    monkeypatch.chdir(ws)
    monkeypatch.setenv("SPARSEPIPE_HOME", str(ws / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SPARSEPIPE_ZOO", raising=False)
    before = sorted(p.relative_to(ws) for p in ws.rglob("*") if "home" not in p.parts)
    args = [a.replace("{ws}", str(ws)) for a in argv]
    rc = main(args)
    captured = capfd.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert rc == 2, f"exit {rc}; stderr:\n{captured.err[-3000:]}"
    assert "Traceback" not in captured.err + captured.out
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{captured.err[-3000:]}"
    assert "error" in lines[0]
    if argv[0] == "train" and "--model" in argv and argv[argv.index("--model") + 1] in (R, D):
        assert "--model" in lines[0] and "expected an Ultralytics model yaml" in lines[0], lines[0]
    assert not (ws / "out").exists(), "a failed command left output behind"
    after = sorted(p.relative_to(ws) for p in ws.rglob("*") if "home" not in p.parts)
    assert after == before, f"files changed: {set(after) ^ set(before)}"


def test_internal_error_is_one_line_with_log(tmp_path, capfd, monkeypatch):
    """A bug (not bad input) is exit 1, one line naming a log file that holds the traceback; --debug prints it."""
    from sparse_core import cli

    def boom(_args):
        raise ZeroDivisionError("synthetic bug")

    monkeypatch.setenv("SPARSEPIPE_HOME", str(tmp_path))
    import argparse

    rc = cli.run_command(boom, argparse.Namespace(debug=False), "sparsepipe test")
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "internal error: ZeroDivisionError: synthetic bug" in err[0]
    log = Path(err[0].split("traceback in ")[1].split(";")[0])
    assert log.is_file() and "Traceback" in log.read_text() and "ZeroDivisionError" in log.read_text()
    rc = cli.run_command(boom, argparse.Namespace(debug=True), "sparsepipe test")
    assert rc == 1 and "Traceback" in capfd.readouterr().err


def test_every_command_takes_json():
    """--json is accepted by every leaf command (the README promises it)."""
    import argparse

    from sparse_core.cli import build_parser

    parser = build_parser([])
    todo, leaves = [parser], []
    while todo:
        p = todo.pop()
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            todo.extend(set(subs[0].choices.values()))
        else:
            leaves.append(p)
    assert len(leaves) >= 15
    missing = [p.prog for p in leaves if p is not parser and "--json" not in p._option_string_actions]
    assert not missing, missing


def test_json_outputs_of_synth_and_resolve(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "synth", "d", "--train", "2", "--val", "1", "--imgsz", "64", "--json"]) == 0
    out = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert Path(out["data"]).is_file() and out["train"] == 2
    (tmp_path / "r.yaml").write_text(GOOD_RECIPE)
    assert main(["recipe", "resolve", "r.yaml", "--json"]) == 0
    out = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert "GMPruningModifier" in out["recipe"]
    assert os.environ.get("YOLO_OFFLINE") == "1"

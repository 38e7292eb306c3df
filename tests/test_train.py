"""Sparse training on Ultralytics: GMP from scratch, sparse transfer, exact resume, all families, bad input.

Real Ultralytics training on generated data at 64 px (a few seconds per run on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparse_core.checkpoint import checkpoint_model, load_checkpoint, sparsepipe_meta
from sparse_core.data.synth import synth_dataset
from sparse_core.integrations.ultralytics import train
from sparse_core.sparsity import weight_sparsity

IMGSZ = 64
GMP = """
version: 1.1.0
num_epochs: {epochs}
init_sparsity: 0.05
final_sparsity: 0.5
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
pruning_modifiers:
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: eval(init_sparsity)
    final_sparsity: eval(final_sparsity)
    start_epoch: 0.0
    end_epoch: {end}
    update_frequency: 0.5
    inter_func: cubic
    leave_enabled: True
"""
CONSTANT = """
version: 1.1.0
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: 2
pruning_modifiers:
  - !ConstantPruningModifier
    start_epoch: 0.0
    params: ["re:^((?!dfl).)*$"]
"""


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparse_core.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synth_dataset(tmp_path_factory.mktemp("data"), task="detect", n_train=16, n_val=8, imgsz=IMGSZ, seed=1)


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory) -> Path:
    return synth_dataset(tmp_path_factory.mktemp("segdata"), task="segment", n_train=16, n_val=8, imgsz=IMGSZ,
                         seed=2)


def write_recipe(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def run_gmp(model: str, data: Path, tmp_path: Path, name: str, epochs: int = 3) -> dict:
    recipe = write_recipe(tmp_path / f"{name}.yaml", GMP.format(epochs=epochs, end=epochs - 1))
    return train(model=model, data=str(data), recipe=recipe, imgsz=IMGSZ, batch=8, workers=0,
                 project=tmp_path, name=name, plots=False)


def assert_sparse_checkpoints(summary: dict, target: float = 0.5) -> None:
    for kind in ("best", "last"):
        model = checkpoint_model(load_checkpoint(summary["weights"][kind]))
        _, layers = weight_sparsity(model)
        assert layers, kind
        for name, frac in layers.items():
            assert abs(frac - target) <= 0.01, f"{kind}.pt {name}: {frac:.4f} vs {target}"


@pytest.fixture(scope="module")
def pruned_v8(data, tmp_path_factory) -> dict:
    return run_gmp("yolov8n.yaml", data, tmp_path_factory.mktemp("gmp"), "v8")


def test_gmp_from_scratch_yolov8(pruned_v8):
    summary = pruned_v8
    assert_sparse_checkpoints(summary)
    assert abs(summary["sparsity"] - 0.5) < 0.01
    assert summary["epochs"] == 3
    assert {"map50", "map50_95", "layer_sparsity"} <= set(summary)
    run_dir = Path(summary["save_dir"])
    assert (run_dir / "layer_sparsity.png").stat().st_size > 1000
    assert (run_dir / "sparsity_over_epochs.png").stat().st_size > 1000
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["sparsity"] == summary["sparsity"]
    meta = sparsepipe_meta(load_checkpoint(summary["weights"]["best"]))
    assert "GMPruningModifier" in meta["recipe"] and meta["recipe_sha256"]
    assert "train_state" not in meta  # resume-only state is dropped once the run finished


def test_sparse_transfer_keeps_every_zero(pruned_v8, data, tmp_path):
    base = pruned_v8["weights"]["best"]
    before = {k: v.float().clone() for k, v in checkpoint_model(load_checkpoint(base)).state_dict().items()}
    recipe = write_recipe(tmp_path / "constant.yaml", CONSTANT)
    summary = train(model=base, data=str(data), recipe=recipe, imgsz=IMGSZ, batch=8, workers=0, project=tmp_path,
                    name="transfer", plots=False)
    after = checkpoint_model(load_checkpoint(summary["weights"]["best"])).state_dict()
    changed = 0
    for name, w in before.items():
        if w.ndim > 1 and ".dfl." not in name and name.endswith("weight"):
            zeros = w == 0
            assert torch.equal(zeros, zeros & (after[name] == 0)), f"{name}: a pruned weight came back"
            assert int((after[name] == 0).sum()) == int(zeros.sum()), name
            changed += int(not torch.equal(w, after[name].float()))
    assert changed > 10, "training did not update the weights"


@pytest.mark.parametrize("model", ["yolov5nu.yaml", "yolov3-tinyu.yaml"])
def test_gmp_other_detection_families(model, data, tmp_path):
    assert_sparse_checkpoints(run_gmp(model, data, tmp_path, Path(model).stem, epochs=2))


def test_gmp_segmentation(seg_data, tmp_path):
    summary = run_gmp("yolov8n-seg.yaml", seg_data, tmp_path, "seg", epochs=2)
    assert_sparse_checkpoints(summary)
    assert "mask_map50" in summary and summary["task"] == "segment"


def test_resume_after_sigkill_matches_uninterrupted_run(data, tmp_path):
    recipe = write_recipe(tmp_path / "gmp.yaml", GMP.format(epochs=4, end=3))
    common = ["--model", "yolov8n.yaml", "--data", str(data), "--recipe", recipe, "--imgsz", str(IMGSZ),
              "--batch", "8", "--workers", "0", "--project", str(tmp_path), "--no-plots", "--json"]
    full = cli("train", *common, "--name", "full")
    assert full.returncode == 0, full.stderr[-2000:]

    proc = subprocess.Popen([sys.executable, "-m", "sparse_core.cli", "train", *common, "--name", "killed"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "weights" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and load_checkpoint(last).get("epoch", -1) >= 1:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(last)["epoch"]
    assert 1 <= killed_at < 3, "the run was not interrupted mid-recipe"
    assert not list(last.parent.glob(".save-*/*.pt.*")), "half-written checkpoint left behind"

    resumed = cli("train", "--resume", str(last), "--json")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 4
    meta = sparsepipe_meta(load_checkpoint(tmp_path / "killed" / "weights" / "last.pt"))
    epochs_seen = [e for e, _ in meta["sparsity_history"]]
    assert epochs_seen == [1.0, 2.0, 3.0, 4.0], "schedule restarted instead of continuing"

    a = checkpoint_model(load_checkpoint(tmp_path / "full" / "weights" / "last.pt")).state_dict()
    b = checkpoint_model(load_checkpoint(tmp_path / "killed" / "weights" / "last.pt")).state_dict()
    for name, w in a.items():
        if w.ndim > 1 and name.endswith("weight") and ".dfl." not in name:
            assert torch.equal(w == 0, b[name] == 0), f"{name}: masks differ after resume"
    full_summary = json.loads(full.stdout.strip().splitlines()[-1])
    assert summary["sparsity"] == full_summary["sparsity"]


def bad_cases(tmp: Path, data: Path) -> list[tuple[list[str], str]]:
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("train: [unclosed\n")
    no_names = tmp / "nonames.yaml"
    no_names.write_text(f"path: {data.parent}\ntrain: images/train\nval: images/val\n")
    nomatch = tmp / "nomatch.yaml"
    nomatch.write_text(CONSTANT.replace('["re:^((?!dfl).)*$"]', '["model.99.conv.weight"]'))
    junk = tmp / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    truncated = tmp / "truncated.pt"
    torch.save({"model": torch.nn.Conv2d(3, 3, 3)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    model = ["--imgsz", str(IMGSZ), "--workers", "0", "--project", str(tmp), "--no-plots"]
    return [
        (["--model", "yolov8n.yaml", "--data", str(tmp / "missing.yaml"), *model], "missing.yaml"),
        (["--model", "yolov8n.yaml", "--data", str(bad_yaml), *model], "bad.yaml:2: invalid YAML"),
        (["--model", "yolov8n.yaml", "--data", str(no_names), *model], "names"),
        (["--model", "yolov8n.yaml", "--data", str(data), "--recipe", str(nomatch), "--name", "nm", *model],
         "model.99.conv.weight"),
        (["--model", str(junk), "--data", str(data), *model], "junk.pt"),
        (["--model", str(truncated), "--data", str(data), *model], "truncated.pt"),
        (["--model", "yolov8n.yaml", "--data", str(data), "--batch", "0", *model], "--batch"),
        (["--model", "yolov8n.yaml", "--data", str(data), "--epochs", "-3", *model], "--epochs"),
    ]


def test_bad_input_exits_2_with_one_line(data, tmp_path):
    for args, needle in bad_cases(tmp_path, data):
        res = cli("train", *args)
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]  # the whole stderr: one line
        assert res.returncode == 2, (args, res.stderr[-1500:])
        assert "Traceback" not in res.stderr, res.stderr[-1500:]
        assert len(lines) == 1 and needle in lines[0], (needle, res.stderr[-800:])
    assert not list(tmp_path.rglob("best.pt")), "a failed run left a best.pt"


def test_train_from_zoo_stub_on_s3(pruned_v8, data, s3_bucket, tmp_path, monkeypatch):
    """Seed 000's flow: a pruned checkpoint and its transfer recipe come from zoo: stubs (SeaweedFS S3)."""
    from sparse_core.zoo import publish

    monkeypatch.setenv("SPARSEPIPE_CACHE", str(tmp_path / "cache"))
    zoo = f"s3://{s3_bucket}/zoo"
    run_dir = Path(pruned_v8["save_dir"])
    (run_dir / "transfer_learn.yaml").write_text(CONSTANT)
    stub = "zoo:cv/detection/yolov8-n/pytorch/ultralytics/synth/pruned50-none"
    publish(run_dir, stub, zoo=zoo)
    res = cli("train", "--model", stub, "--recipe", f"{stub}?recipe_type=transfer_learn", "--zoo", zoo,
              "--data", str(data), "--imgsz", str(IMGSZ), "--batch", "8", "--workers", "0", "--project",
              str(tmp_path), "--name", "fromzoo", "--no-plots", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2
    assert abs(summary["sparsity"] - pruned_v8["sparsity"]) < 1e-6  # the stub's zeros were held


def test_yolact_style_coco_flags(tmp_path):
    """Seed 003's COCO JSON + image folder flags prepare a segment set and train a -seg model."""
    from sparse_core.data.writers import write_coco

    coco = write_coco(synth_dataset(tmp_path / "src", task="segment", n_train=8, n_val=4, imgsz=IMGSZ, seed=3),
                      tmp_path / "coco")
    res = cli("train", "--model", "yolov8n-seg.yaml", "--train_info", str(coco / "annotations/instances_train.json"),
              "--validation_info", str(coco / "annotations/instances_val.json"), "--train_images",
              str(coco / "images/train"), "--validation_images", str(coco / "images/val"), "--save_folder",
              str(tmp_path / "runs"), "--name", "yolact", "--batch_size", "4", "--epochs", "1", "--imgsz", str(IMGSZ),
              "--workers", "0", "--no-plots", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["task"] == "segment" and "mask_map50" in summary
    assert (tmp_path / "runs" / "yolact-data" / "data.yaml").is_file()

"""Synthetic data sets: deterministic, atomic, valid Ultralytics layout that Ultralytics itself loads and trains on."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sparse_core.data.synth import synth_dataset
from sparse_core.errors import UserError

os.environ.setdefault("YOLO_OFFLINE", "1")


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "data.yaml"}


def test_synth_is_deterministic_and_laid_out_for_ultralytics(tmp_path):
    a = synth_dataset(tmp_path / "a", n_train=6, n_val=3, imgsz=64, seed=7, n_classes=4)
    b = synth_dataset(tmp_path / "b", n_train=6, n_val=3, imgsz=64, seed=7, n_classes=4)
    c = synth_dataset(tmp_path / "c", n_train=6, n_val=3, imgsz=64, seed=8, n_classes=4)
    assert a == (tmp_path / "a" / "data.yaml").absolute()
    assert _digest(a.parent) == _digest(b.parent)
    assert _digest(a.parent) != _digest(c.parent)
    meta = yaml.safe_load(a.read_text())
    assert Path(meta["path"]).is_absolute() and meta["train"] == "images/train" and meta["val"] == "images/val"
    assert len(meta["names"]) == 4
    assert len(list((a.parent / "images" / "train").glob("*.png"))) == 6
    assert len(list((a.parent / "labels" / "val").glob("*.txt"))) == 3
    n_objects = 0
    for label in (a.parent / "labels").rglob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines()]
        assert 1 <= len(rows) <= 4
        for row in rows:
            n_objects += 1
            assert len(row) == 5 and 0 <= int(row[0]) < 4
            cx, cy, w, h = map(float, row[1:])
            assert 0.1 <= w <= 0.5 and 0.1 <= h <= 0.5  # 15-45 % of the side (triangles/stars a bit less)
            assert 0 <= cx - w / 2 and cx + w / 2 <= 1 and 0 <= cy - h / 2 and cy + h / 2 <= 1
    assert n_objects >= 9
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_synth_segment_polygons_and_refuses_foreign_folder(tmp_path):
    data = synth_dataset(tmp_path / "seg", task="segment", n_train=3, n_val=2, imgsz=64, seed=0)
    for label in (data.parent / "labels").rglob("*.txt"):
        for line in label.read_text().splitlines():
            values = line.split()[1:]
            assert len(values) % 2 == 0 and len(values) >= 6
            assert all(0.0 <= float(v) <= 1.0 for v in values)
    synth_dataset(tmp_path / "seg", task="segment", n_train=2, n_val=1, imgsz=64, seed=1)  # own output: replaced
    assert len(list((tmp_path / "seg" / "images" / "train").iterdir())) == 2
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        synth_dataset(foreign, n_train=1, n_val=1)
    assert (foreign / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="task"):
        synth_dataset(tmp_path / "bad", task="pose")
    assert not (tmp_path / "bad").exists()


def test_synth_cli_and_ultralytics_trains_one_epoch(tmp_path):
    """The CLI writes a set that Ultralytics' own trainer loads (detect) and its dataset builder reads (segment)."""
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    out = tmp_path / "det"
    proc = subprocess.run([sys.executable, "-m", "sparse_core.cli", "data", "synth", str(out), "--train", "8",
                           "--val", "4", "--imgsz", "64", "--seed", "3", "--classes", "2"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out / "data.yaml")

    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    model.train(data=str(out / "data.yaml"), epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False,
                project=str(tmp_path / "runs"), name="t", exist_ok=True, verbose=False, amp=False, val=True)
    metrics = model.trainer.metrics
    assert "metrics/mAP50(B)" in metrics
    assert (tmp_path / "runs" / "t" / "weights" / "last.pt").is_file()
    # the validator saw every val image and its labels
    assert model.trainer.validator.seen == 4

    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    seg = synth_dataset(tmp_path / "seg", task="segment", n_train=4, n_val=2, imgsz=64, seed=2)
    cfg = get_cfg(overrides={"task": "segment", "imgsz": 64, "plots": False, "overlap_mask": False})
    info = check_det_dataset(str(seg))
    ds = build_yolo_dataset(cfg, info["train"], 2, info, mode="val")
    assert len(ds) == 4
    sample = ds[0]
    assert sample["masks"].shape[0] == len(sample["cls"]) >= 1


def test_hard_preset_is_deterministic_hard_and_valid(tmp_path):
    """The hard set: 12 shape x texture classes, exact labels inside the image, clutter, small and cut objects."""
    import numpy as np
    from PIL import Image

    from sparse_core.data.hard import HARD_CLASSES, hard_class_names

    a = synth_dataset(tmp_path / "a", n_train=24, n_val=4, imgsz=160, seed=3, preset="hard")
    b = synth_dataset(tmp_path / "b", n_train=24, n_val=4, imgsz=160, seed=3, preset="hard")
    assert _digest(a.parent) == _digest(b.parent)
    meta = yaml.safe_load(a.read_text())
    assert list(meta["names"].values()) == hard_class_names() and len(meta["names"]) == HARD_CLASSES == 12
    assert meta["synth"]["preset"] == "hard"
    rows = [line.split() for label in (a.parent / "labels").rglob("*.txt") for line in label.read_text().splitlines()]
    assert len(rows) >= 24  # ~2-9 items per image, 30 % distractors, some hidden
    boxes = np.array([[float(v) for v in r[1:]] for r in rows])
    assert ((boxes >= 0) & (boxes <= 1)).all() and {int(r[0]) for r in rows} <= set(range(12))
    assert len({int(r[0]) for r in rows}) >= 8  # classes are spread
    area = boxes[:, 2] * boxes[:, 3]
    assert (area < 0.01).mean() > 0.15 and (area > 0.05).any()  # many small objects, some large ones
    touching = ((boxes[:, 0] - boxes[:, 2] / 2 <= 0.001) | (boxes[:, 0] + boxes[:, 2] / 2 >= 0.999)).sum()
    assert touching >= 2  # truncated by the border
    # cluttered backgrounds: far more structure (variance of 8x8 block means) than the easy set's noisy flat grey
    img = np.asarray(Image.open(sorted((a.parent / "images" / "train").glob("*.jpg"))[0]).convert("L"), float)
    easy = synth_dataset(tmp_path / "easy", n_train=1, n_val=1, imgsz=160, seed=3)
    flat = np.asarray(Image.open(next((easy.parent / "images" / "train").glob("*.png"))).convert("L"), float)
    structure = lambda x: x.reshape(20, 8, 20, 8).mean(axis=(1, 3)).std()  # noqa: E731
    assert structure(img) > 1.5 * structure(flat)
    with pytest.raises(UserError, match="expected 1..12 for the hard preset"):
        synth_dataset(tmp_path / "c", preset="hard", n_classes=13)
    with pytest.raises(UserError, match="preset"):
        synth_dataset(tmp_path / "d", preset="medium")

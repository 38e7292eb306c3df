"""``sparsepipe data prepare``: same data in YOLO / COCO / VOC → identical labels and content hash; format features
(RLE, iscrowd, category remapping, backgrounds, difficult, ImageSets splits); stable hashing and splits."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sparse_core.data.prepare import dataset_hash, prepare_dataset
from sparse_core.data.synth import class_names, synth_dataset
from sparse_core.data.writers import write_coco, write_voc
from sparse_core.errors import UserError

CLASSES = ",".join(class_names(3))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparse_core.cli", "data", "prepare", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "YOLO_OFFLINE": "1"})


def read_labels(out: Path) -> dict[str, list[list[float]]]:
    return {str(p.relative_to(out)): [[float(v) for v in line.split()] for line in p.read_text().splitlines()]
            for p in sorted((out / "labels").rglob("*.txt"))}


def assert_same_labels(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert len(a[key]) == len(b[key]), key
        for ra, rb in zip(a[key], b[key]):
            assert ra[0] == rb[0] and len(ra) == len(rb), key
            assert np.allclose(ra[1:], rb[1:], atol=1e-6, rtol=0), (key, ra, rb)


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_three_formats_prepare_to_identical_labels_and_hash(tmp_path, task):
    src = synth_dataset(tmp_path / "src", task=task, n_train=12, n_val=4, imgsz=64, seed=5)
    coco_dir = write_coco(src, tmp_path / "coco")
    sources = {"yolo": src, "coco": coco_dir}
    if task == "detect":  # VOC carries boxes only
        sources["voc"] = write_voc(src, tmp_path / "voc")
    results = {}
    for fmt, path in sources.items():
        out = tmp_path / f"out_{fmt}"
        proc = cli(path, "--format", fmt, "--out", out, "--task", task, "--classes", CLASSES, "--json")
        assert proc.returncode == 0, proc.stderr
        stats = json.loads(proc.stdout.strip().splitlines()[-1])
        assert stats["images"] == {"train": 12, "val": 4}
        assert sum(stats["per_class"].values()) == stats["instances"] > 16
        assert stats == json.loads((out / "stats.json").read_text())
        assert dataset_hash(out) == stats["content_hash"]
        meta = yaml.safe_load((out / "data.yaml").read_text())
        assert meta["path"] == str(out) and list(meta["names"].values()) == CLASSES.split(",")
        results[fmt] = (read_labels(out), stats)
    labels_yolo, stats_yolo = results["yolo"]
    for fmt, (labels, stats) in results.items():
        assert_same_labels(labels_yolo, labels)
        assert stats["content_hash"] == stats_yolo["content_hash"], fmt
        assert stats["per_class"] == stats_yolo["per_class"]
    # the prepared set hashes like its (already valid) source: images copied byte for byte, labels in normal form
    assert dataset_hash(src) == stats_yolo["content_hash"]
    if task == "segment":
        some = next(rows for rows in labels_yolo.values() if rows)
        assert len(some[0]) >= 7  # polygons, not boxes


def test_hash_and_val_split_are_stable_and_order_independent(tmp_path):
    src = synth_dataset(tmp_path / "src", n_train=20, n_val=1, imgsz=64, seed=2)
    coco_dir = write_coco(src, tmp_path / "coco")
    doc = json.loads((coco_dir / "annotations" / "instances_train.json").read_text())
    single = tmp_path / "single"
    (single / "images").mkdir(parents=True)
    for img in doc["images"]:
        (single / "images" / img["file_name"]).write_bytes((coco_dir / "images" / "train" / img["file_name"])
                                                           .read_bytes())
    (single / "a.json").write_text(json.dumps(doc))
    shuffled = dict(doc, images=random.Random(0).sample(doc["images"], len(doc["images"])),
                    annotations=random.Random(1).sample(doc["annotations"], len(doc["annotations"])))
    (single / "b.json").write_text(json.dumps(shuffled))
    a = prepare_dataset(single / "a.json", "coco", tmp_path / "a", val_fraction=0.25)
    b = prepare_dataset(single / "b.json", "coco", tmp_path / "b", val_fraction=0.25)
    assert a["images"] == {"train": 15, "val": 5}
    assert a["content_hash"] == b["content_hash"]
    assert sorted(os.listdir(tmp_path / "a" / "images" / "val")) == sorted(os.listdir(tmp_path / "b" / "images" / "val"))
    c = prepare_dataset(single / "a.json", "coco", tmp_path / "c", val_fraction=0.25, classes=sorted(class_names(3)))
    assert c["content_hash"] != a["content_hash"]  # class ids/names are part of the data set
    assert c["per_class"] == a["per_class"]
    (tmp_path / "a" / "labels" / "train" / os.listdir(tmp_path / "a" / "labels" / "train")[0]).write_text("")
    assert dataset_hash(tmp_path / "a") != a["content_hash"]


def _png(path: Path, w: int = 40, h: int = 30) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (120, 120, 120)).save(path)
    return path.name


def _rle_string(counts: list[int]) -> str:
    """pycocotools' compressed RLE encoding (the inverse of the reader's decoder), for a test fixture."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = not ((x == 0 and not ch & 0x10) or (x == -1 and ch & 0x10))
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def test_coco_features_rle_crowd_remap_backgrounds(tmp_path):
    root = tmp_path / "coco"
    names = [_png(root / "images" / f"im{i}.png") for i in range(4)]
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 10:30] = 1  # 20x10 rectangle
    flat = mask.flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    doc = {
        "images": [{"id": 10 + i, "file_name": f, "width": 40, "height": 30} for i, f in enumerate(names)],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 12, "name": "eel"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [10, 5, 20, 10], "iscrowd": 0,
             "segmentation": {"size": [30, 40], "counts": _rle_string(runs)}},
            {"id": 2, "image_id": 11, "category_id": 3, "bbox": [10, 5, 20, 10], "iscrowd": 0,
             "segmentation": {"size": [30, 40], "counts": runs}},
            {"id": 3, "image_id": 11, "category_id": 12, "bbox": [0, 0, 40, 30], "iscrowd": 1,
             "segmentation": {"size": [30, 40], "counts": [0, 1200]}},
            {"id": 4, "image_id": 12, "category_id": 12, "bbox": [1, 1, 4, 4], "iscrowd": 0,
             "segmentation": [[1, 1, 5, 1, 5, 5], [20, 20, 30, 20, 30, 28, 20, 28]]},
        ],  # image 13: no annotations → background
    }
    (root / "instances.json").write_text(json.dumps(doc))
    det = prepare_dataset(root / "instances.json", "coco", tmp_path / "det", val_fraction=0)
    assert det["images"] == {"train": 4, "val": 0} and det["backgrounds"] == 1
    assert det["per_class"] == {"dog": 1, "cat": 1, "eel": 1}  # remapped in id order 3, 7, 12; crowd skipped
    assert det["skipped"] == {"crowd": 1}
    im0 = (tmp_path / "det" / "labels" / "train" / "im0.txt").read_text().split()
    assert im0[0] == "1" and np.allclose([float(v) for v in im0[1:]], [0.5, 1 / 3, 0.5, 1 / 3], atol=1e-6)
    seg = prepare_dataset(root / "instances.json", "coco", tmp_path / "seg", task="segment", val_fraction=0)
    assert seg["instances"] == 3
    for name in ("im0", "im1"):  # compressed and uncompressed RLE → the same traced rectangle
        pts = np.array([float(v) for v in (tmp_path / "seg" / "labels" / "train" / f"{name}.txt").read_text()
                        .split()[1:]]).reshape(-1, 2) * [40, 30]
        assert np.allclose([pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max()], [10, 29, 5, 14],
                           atol=1e-3)
    two_parts = [float(v) for v in (tmp_path / "seg" / "labels" / "train" / "im2.txt").read_text().split()[1:]]
    assert len(two_parts) // 2 == 3 + 1 + 4 + 1  # both parts closed, joined in one polygon
    assert (tmp_path / "seg" / "labels" / "train" / "im3.txt").read_text() == ""


def test_voc_difficult_truncated_and_imagesets(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for i in range(3):
        _png(root / "JPEGImages" / f"2012_{i}.png", 100, 50)
        (root / "Annotations" / f"2012_{i}.xml").parent.mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"2012_{i}.xml").write_text(f"""<annotation><filename>2012_{i}.png</filename>
<size><width>100</width><height>50</height><depth>3</depth></size>
<object><name>dog</name><truncated>1</truncated><difficult>0</difficult>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>100</xmax><ymax>50</ymax></bndbox></object>
<object><name>person</name><difficult>1</difficult>
<bndbox><xmin>10</xmin><ymin>10</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>
</annotation>""")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("2012_0\n2012_1\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("2012_2\n")
    stats = prepare_dataset(tmp_path / "VOCdevkit", "voc", tmp_path / "out")
    assert stats["images"] == {"train": 2, "val": 1}
    assert stats["names"][11] == "dog" and len(stats["names"]) == 20  # VOC's own class order
    assert stats["per_class"]["dog"] == 3 and stats["per_class"]["person"] == 0  # difficult skipped
    assert stats["skipped"] == {"difficult": 3}
    row = (tmp_path / "out" / "labels" / "train" / "2012_0.txt").read_text().split()
    assert row == ["11", "0.500000", "0.500000", "1.000000", "1.000000"]  # 1-based inclusive → full image
    with pytest.raises(UserError, match="boxes, not polygons"):
        prepare_dataset(root, "voc", tmp_path / "seg", task="segment")
    assert not (tmp_path / "seg").exists()


def test_yolo_seed_layout_relative_path_lists_and_backgrounds(tmp_path):
    """Seed 000's custom data: datasets/aerial-dataset.yaml with ``path: ./datasets/aerial-dataset`` (relative to the
    working directory), split lists, ``nc``, a missing label file (background)."""
    root = tmp_path / "datasets" / "aerial-dataset"
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            _png(root / split / "images" / f"{split}{i}.png", 64, 48)
            if i:  # image 0 of each split has no label file: background
                (root / split / "labels").mkdir(parents=True, exist_ok=True)
                (root / split / "labels" / f"{split}{i}.txt").write_text("0 0.719010 0.124074 0.022396 0.083333\n")
    (tmp_path / "datasets" / "aerial-dataset.yaml").write_text(
        "path: ./datasets/aerial-dataset\ntrain:\n  - train/images\nval:\n  - val/images\nnc: 1\nnames: ['object']\n")
    proc = subprocess.run([sys.executable, "-m", "sparse_core.cli", "data", "prepare", "datasets/aerial-dataset.yaml",
                           "--format", "yolo", "--out", "prepared", "--json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["images"] == {"train": 3, "val": 2} and stats["backgrounds"] == 2
    assert stats["per_class"] == {"object": 3}
    assert (tmp_path / "prepared" / "labels" / "train" / "train0.txt").read_text() == ""
    assert (tmp_path / "prepared" / "labels" / "val" / "val1.txt").read_text() == \
        "0 0.719010 0.124074 0.022396 0.083333\n"

"""Bad input to ``sparsepipe data prepare`` (real CLI, subprocess): exit 2, every problem with its location and what
was expected, nothing left at OUT. One broken thing per case, across YOLO, COCO and VOC."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sparse_core.data.synth import class_names, synth_dataset
from sparse_core.data.writers import write_coco, write_voc


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    det = synth_dataset(root / "yolo", n_train=4, n_val=2, imgsz=64, seed=11)
    seg = synth_dataset(root / "yolo_seg", task="segment", n_train=4, n_val=2, imgsz=64, seed=12)
    for data_yaml in (det, seg):  # relative root: copies of the folder stay self-contained
        meta = yaml.safe_load(data_yaml.read_text())
        meta.pop("path")
        data_yaml.write_text(yaml.safe_dump(meta))
    return {"yolo": det.parent, "yolo_seg": seg.parent, "coco": write_coco(det, root / "coco"),
            "coco_seg": write_coco(seg, root / "coco_seg"), "voc": write_voc(det, root / "voc")}


def _edit_lines(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _coco(root: Path, fn) -> None:
    p = root / "annotations" / "instances_train.json"
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))


def _voc(root: Path, tag: str, value: str, name: str = "00000.xml") -> None:
    """Set the first ``<tag>`` of a VOC XML to ``value``."""
    p = root / "Annotations" / name
    text, n = re.subn(f"<{tag}>[^<]*</{tag}>", f"<{tag}>{value}</{tag}>", p.read_text(), count=1)
    assert n == 1, tag
    p.write_text(text)


def _set(key, value, i=0, where="annotations"):
    """Mutation: set ``doc[where][i][key]`` in the train JSON."""
    return lambda root: _coco(root, lambda doc: doc[where][i].__setitem__(key, value))


LBL = "labels/train/00000.txt"
JSON = "instances_train.json"
# (case id, base, mutation(root), extra CLI args, location substring, what substring)
CASES = [
    ("yolo-class-range", "yolo", lambda r: _edit_lines(r / LBL, 1, "7 0.5 0.5 0.2 0.2"), [], "00000.txt:1",
     "class id 7 out of range; expected 0..2"),
    ("yolo-class-not-int", "yolo", lambda r: _edit_lines(r / LBL, 1, "a 0.5 0.5 0.2 0.2"), [], "00000.txt:1",
     "not an integer"),
    ("yolo-coord-outside", "yolo", lambda r: _edit_lines(r / LBL, 1, "0 1.5 0.5 0.2 0.2"), [], "00000.txt:1",
     "outside [0, 1]"),
    ("yolo-zero-area", "yolo", lambda r: _edit_lines(r / LBL, 1, "0 0.5 0.5 0 0.2"), [], "00000.txt:1",
     "zero-area box"),
    ("yolo-box-beyond-image", "yolo", lambda r: _edit_lines(r / LBL, 1, "0 0.95 0.5 0.3 0.2"), [], "00000.txt:1",
     "extends beyond the image"),
    ("yolo-too-few-values", "yolo", lambda r: _edit_lines(r / LBL, 1, "0 0.5 0.5"), [], "00000.txt:1",
     "expected 5"),
    ("yolo-not-a-number", "yolo", lambda r: _edit_lines(r / LBL, 1, "0 0.5 x 0.2 0.2"), [], "00000.txt:1",
     "'x' is not a number"),
    ("yolo-nan", "yolo", lambda r: _edit_lines(r / LBL, 1, "0 nan 0.5 0.2 0.2"), [], "00000.txt:1", "not finite"),
    ("yolo-orphan-label", "yolo", lambda r: (r / "labels/train/zzz.txt").write_text("0 0.5 0.5 0.2 0.2\n"), [],
     "labels/train/zzz.txt", "annotation for a missing image"),
    ("yolo-undecodable-image", "yolo", lambda r: (r / "images/train/00001.png").write_bytes(b"not an image"), [],
     "labels/train/00001.txt", "cannot be decoded"),
    ("yolo-truncated-image", "yolo", lambda r: (r / "images/train/00002.png").write_bytes(
        (r / "images/train/00002.png").read_bytes()[:300]), [], "labels/train/00002.txt", "cannot be decoded"),
    ("yolo-bad-yaml", "yolo", lambda r: (r / "data.yaml").write_text("train: images/train\nnames: [a, b\n"), [],
     "data.yaml:3", "invalid YAML"),
    ("yolo-no-names", "yolo", lambda r: (r / "data.yaml").write_text("train: images/train\nval: images/val\n"), [],
     "data.yaml", "names: missing"),
    ("yolo-seg-box-row", "yolo_seg", lambda r: _edit_lines(r / LBL, 1, "0 0.5 0.5 0.2 0.2"), ["--task", "segment"],
     "00000.txt:1", "box row"),
    ("yolo-seg-odd-coords", "yolo_seg", lambda r: _edit_lines(r / LBL, 1, "0 0.1 0.1 0.2 0.2 0.3 0.3 0.4"),
     ["--task", "segment"], "00000.txt:1", "odd number of coordinates"),
    ("yolo-seg-collinear", "yolo_seg", lambda r: _edit_lines(r / LBL, 1, "0 0.1 0.1 0.2 0.2 0.3 0.3"),
     ["--task", "segment"], "00000.txt:1", "zero-area polygon"),
    ("coco-invalid-json", "coco", lambda r: (r / "annotations" / JSON).write_text('{"images": [\n{"id": 1,}\n'), [],
     f"{JSON}:2:", "invalid JSON"),
    ("coco-no-images-key", "coco", lambda r: _coco(r, lambda d: d.pop("images")), [], JSON, "images: missing"),
    ("coco-duplicate-image-id", "coco", lambda r: _coco(r, lambda d: d["images"][1].update(id=1)), [],
     "images[1] (id 1)", "duplicate image id 1"),
    ("coco-missing-image-id", "coco", _set("image_id", 999), [], "annotations[0] (id 1)",
     "annotation for a missing image"),
    ("coco-unknown-category-id", "coco", _set("category_id", 42), [], "annotations[0] (id 1)", "category_id 42"),
    ("coco-bbox-length", "coco", _set("bbox", [1, 2, 3]), [], "annotations[0] (id 1)", "expected [x, y, width"),
    ("coco-bbox-zero-area", "coco", _set("bbox", [10, 10, 0, 5]), [], "annotations[0] (id 1)", "zero-area box"),
    ("coco-bbox-outside", "coco", _set("bbox", [50, 10, 30, 5]), [], "annotations[0] (id 1)",
     "outside the 64x64 image"),
    ("coco-image-file-missing", "coco", lambda r: (r / "images/train/00000.png").unlink(), [], "images[0] (id 1)",
     "'00000.png' not found"),
    ("coco-size-mismatch", "coco", lambda r: _coco(r, lambda d: d["images"][0].update(width=640)), [],
     "images[0] (id 1)", "but the annotation says 640x64"),
    ("coco-unknown-category-name", "coco", lambda r: None, ["--classes", "red_square,green_circle"], "annotations[",
     "unknown category name 'blue_triangle'"),
    ("coco-duplicate-category-id", "coco", lambda r: _coco(r, lambda d: d["categories"][1].update(id=1)), [],
     "categories[1]", "duplicate category id 1"),
    ("coco-seg-two-points", "coco_seg", _set("segmentation", [[1, 1, 5, 5]]), ["--task", "segment"],
     "annotations[0] (id 1) segmentation[0]", "2 point(s); expected at least 3"),
    ("coco-seg-bad-rle", "coco_seg", _set("segmentation", {"size": [64, 64], "counts": [10, 5]}),
     ["--task", "segment"], "annotations[0] (id 1)", "expected size h*w = 4096"),
    ("coco-seg-missing", "coco_seg", _set("segmentation", []), ["--task", "segment"], "annotations[0] (id 1)",
     "segmentation missing or empty"),
    ("voc-invalid-xml", "voc", lambda r: (r / "Annotations/00000.xml").write_text(
        (r / "Annotations/00000.xml").read_text().replace("</annotation>", "</annotatio>")), [], "00000.xml:", "invalid XML"),
    ("voc-unknown-class", "voc", lambda r: None, ["--classes", "red_square,green_circle"], ".xml:",
     "unknown class name 'blue_triangle'"),
    ("voc-zero-area", "voc", lambda r: _voc(r, "xmax", "0.5"), [], "00000.xml:9: object[0]",
     "zero-area box"),
    ("voc-outside-image", "voc", lambda r: _voc(r, "ymax", "300"), [], "00000.xml:9: object[0]",
     "outside the 64x64 image"),
    ("voc-no-bndbox", "voc", lambda r: (r / "Annotations/00000.xml").write_text(
        (r / "Annotations/00000.xml").read_text().replace("bndbox>", "bbox>", 2)), [], "00000.xml:9: object[0]", "missing <bndbox>"),
    ("voc-not-a-number", "voc", lambda r: _voc(r, "xmin", "abc"), [], "00000.xml:9: object[0]",
     "<xmin> 'abc' is not a number"),
    ("voc-bad-difficult", "voc", lambda r: _voc(r, "difficult", "maybe"), [],
     "00000.xml:9: object[0]", "<difficult> 'maybe'"),
    ("voc-listed-id-missing", "voc", lambda r: (r / "ImageSets/Main/train.txt").write_text(
        (r / "ImageSets/Main/train.txt").read_text() + "ghost\n"), [], "train.txt:5", "no Annotations/ghost.xml"),
    ("voc-image-missing", "voc", lambda r: (r / "JPEGImages/00001.png").unlink(), [], "00001.xml",
     "image for '00001' not found"),
    ("voc-bad-size", "voc", lambda r: _voc(r, "width", "wide"), [], "00000.xml",
     "width/height 'wide'x'64'"),
]


def run_prepare(src: Path, fmt: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparse_core.cli", "data", "prepare", str(src), "--format", fmt,
                           "--out", str(out), *extra], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "YOLO_OFFLINE": "1"})


def test_at_least_25_cases_across_formats():
    assert len(CASES) >= 25
    assert {c[1].split("_")[0] for c in CASES} == {"yolo", "coco", "voc"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exit_2_located_nothing_written(bases, tmp_path, case):
    _id, base, mutate, extra, location, what = case
    src = tmp_path / "src"
    shutil.copytree(bases[base], src)
    mutate(src)
    fmt = base.split("_")[0]
    task = [] if "--task" in extra else ["--task", "detect"]
    out = tmp_path / "out"
    proc = run_prepare(src, fmt, out, *task, *extra)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    problem_lines = [line for line in proc.stderr.splitlines() if what in line]
    assert problem_lines, proc.stderr
    assert any(location in line for line in problem_lines), proc.stderr
    assert all("expected" in line for line in problem_lines), proc.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp folder left


def test_all_problems_reported_together_and_strict_stops_at_first(bases, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(bases["yolo"], src)
    _edit_lines(src / LBL, 1, "9 0.5 0.5 0.2 0.2")
    (src / "labels/val/00005.txt").write_text("0 0.5 0.5 0.2\n0 2 0.5 0.1 0.1\n")
    (src / "images/train/00003.png").write_bytes(b"\x89PNG broken")
    proc = run_prepare(src, "yolo", tmp_path / "out")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 4, proc.stderr
    for loc in ("00000.txt:1", "00005.txt:1", "00005.txt:2", "00003.txt"):
        assert any(loc in line for line in lines), (loc, proc.stderr)
    strict = run_prepare(src, "yolo", tmp_path / "out", "--strict")
    assert strict.returncode == 2 and len(strict.stderr.strip().splitlines()) == 1, strict.stderr
    assert not (tmp_path / "out").exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    proc = run_prepare(bases["yolo"], "yolo", full)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert (full / "mine.txt").read_text() == "keep"
    proc = run_prepare(bases["yolo"], "yolo", tmp_path / "o2", "--val-fraction", "1.5")
    assert proc.returncode == 2 and "--val-fraction" in proc.stderr and not (tmp_path / "o2").exists()
    ok = run_prepare(bases["yolo"], "yolo", tmp_path / "ok", "--classes", ",".join(class_names(3)))
    assert ok.returncode == 0, ok.stderr

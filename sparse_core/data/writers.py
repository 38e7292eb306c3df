"""Write an Ultralytics data set out as COCO JSON or Pascal VOC (images copied byte for byte).

For interchange and for exercising ``prepare`` on the same data in every format (tests, the prepare benchmark).
COCO: ``annotations/instances_{split}.json`` + ``images/{split}/``; boxes and polygons in pixels.
VOC: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``; boxes 1-based (``xmin = x0 + 1``).
Float coordinates are written with ``repr`` so nothing is lost on the way.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from xml.sax.saxutils import escape

import yaml
from PIL import Image

from sparse_core.data.hashing import label_path
from sparse_core.data.labels import IMAGE_EXTS


def _read_set(data_yaml: Path):
    meta = yaml.safe_load(Path(data_yaml).read_text())
    root = Path(meta.get("path") or Path(data_yaml).parent)
    names = meta["names"]
    names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    for split in ("train", "val"):
        for img in sorted(p for p in (root / meta[split]).rglob("*") if p.suffix.lower() in IMAGE_EXTS):
            lbl = label_path(img)
            rows = [[float(v) for v in line.split()] for line in
                    (lbl.read_text().splitlines() if lbl.is_file() else []) if line.strip()]
            with Image.open(img) as im:
                size = im.size
            yield split, img, size, rows, names


def _pixel_rows(rows, size):
    """YOLO rows → (cls, (x, y, w, h) pixels, polygon pixels or None)."""
    w_img, h_img = size
    for r in rows:
        cls, vals = int(r[0]), r[1:]
        if len(vals) == 4:
            cx, cy, w, h = vals
            yield cls, ((cx - w / 2) * w_img, (cy - h / 2) * h_img, w * w_img, h * h_img), None
        else:
            poly = [v * (w_img if i % 2 == 0 else h_img) for i, v in enumerate(vals)]
            xs, ys = poly[0::2], poly[1::2]
            yield cls, (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)), poly


def write_coco(data_yaml: str | os.PathLike, out: str | os.PathLike) -> Path:
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    docs: dict[str, dict] = {}
    ann_id = 0
    for split, img, size, rows, names in _read_set(Path(data_yaml)):
        doc = docs.setdefault(split, {"images": [], "annotations": [],
                                      "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)]})
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(img, out / "images" / split / img.name)
        image_id = len(doc["images"]) + 1
        doc["images"].append({"id": image_id, "file_name": img.name, "width": size[0], "height": size[1]})
        for cls, box, poly in _pixel_rows(rows, size):
            ann_id += 1
            ann = {"id": ann_id, "image_id": image_id, "category_id": cls + 1, "bbox": list(box),
                   "area": box[2] * box[3], "iscrowd": 0}
            if poly is not None:
                ann["segmentation"] = [poly]
            doc["annotations"].append(ann)
    for split, doc in docs.items():
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return out


def write_voc(data_yaml: str | os.PathLike, out: str | os.PathLike) -> Path:
    out = Path(out)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {}
    for split, img, size, rows, names in _read_set(Path(data_yaml)):
        shutil.copyfile(img, out / "JPEGImages" / img.name)
        ids.setdefault(split, []).append(img.stem)
        objects = []
        for cls, (x, y, w, h), _ in _pixel_rows(rows, size):
            objects.append(
                f"  <object>\n    <name>{escape(names[cls])}</name>\n    <pose>Unspecified</pose>\n"
                f"    <truncated>0</truncated>\n    <difficult>0</difficult>\n    <bndbox>\n"
                f"      <xmin>{x + 1!r}</xmin>\n      <ymin>{y + 1!r}</ymin>\n"
                f"      <xmax>{x + w!r}</xmax>\n      <ymax>{y + h!r}</ymax>\n    </bndbox>\n  </object>\n")
        (out / "Annotations" / f"{img.stem}.xml").write_text(
            f"<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{escape(img.name)}</filename>\n"
            f"  <size>\n    <width>{size[0]}</width>\n    <height>{size[1]}</height>\n    <depth>3</depth>\n"
            f"  </size>\n{''.join(objects)}</annotation>\n")
    for split, stems in ids.items():
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(s + "\n" for s in stems))
    return out

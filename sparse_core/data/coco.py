"""Reader for COCO JSON (bbox, polygon and RLE segmentation, ``iscrowd``, category id remapping).

SRC is one JSON file (split later by --val-fraction) or a folder with ``annotations/*.json`` (or ``*.json``):
a file whose name contains ``train``/``val`` gives that split; ``test`` files (no labels) are skipped.
Category ids map to contiguous class ids in id order (or in the order of ``--classes``). Crowd annotations
(``iscrowd: 1``) are skipped, as Ultralytics' own COCO converter does. Images without annotations are backgrounds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sparse_core.data.labels import (Item, Obj, Problems, box_of_polygon, is_file, number, pixel_box, polygon,
                                       safe_name)
from sparse_core.errors import UserError

MAX_RLE_PIXELS = 1 << 26  # 8192 x 8192: an RLE mask larger than that is refused before it is allocated
MAX_SIDE = 1 << 20  # image width/height; beyond it a declared size is nonsense (and overflows float maths)


def _rle_counts(counts) -> list[int]:
    """COCO RLE counts: a list of ints (uncompressed) or pycocotools' compressed string (LEB128-like, deltas)."""
    if isinstance(counts, list):
        return [int(c) for c in counts]
    out: list[int] = []
    s, p = counts.encode() if isinstance(counts, str) else counts, 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if k >= 7:  # pycocotools writes 32-bit counts (at most 7 characters); longer ones only cost time
                raise ValueError("RLE count longer than 7 characters")
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def rle_to_polygon(rle: dict, where: str, problems: Problems) -> list[float] | None:
    """Decode an RLE mask and trace its outer contours into one pixel polygon (parts joined, see merge_parts)."""
    import cv2

    try:
        h, w = (int(v) for v in rle["size"])
        counts = _rle_counts(rle["counts"])
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        problems.add(where, "segmentation RLE is malformed; expected {'size': [h, w], 'counts': [...] or str}")
        return None
    if not (h > 0 and w > 0 and h * w <= MAX_RLE_PIXELS):  # the mask is allocated: bound it before
        problems.add(where, f"segmentation RLE size {h}x{w}; expected a positive size of at most {MAX_RLE_PIXELS} "
                            "pixels")
        return None
    if sum(counts) != h * w or any(c < 0 for c in counts):
        problems.add(where, f"segmentation RLE counts sum to {sum(counts)}; expected size h*w = {h * w}")
        return None
    flat = np.zeros(h * w, dtype=np.uint8)
    pos = 0
    for i, c in enumerate(counts):
        if i % 2:
            flat[pos:pos + c] = 1
        pos += c
    mask = flat.reshape((h, w), order="F")
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    parts = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
    if not parts:
        problems.add(where, "segmentation RLE mask is empty; expected a mask with at least 3 pixels of outline")
        return None
    return merge_parts(parts)


def merge_parts(parts: list[list[float]]) -> list[float]:
    """Several polygons → one: each part is closed, then the path walks back over the joins (zero extra area)."""
    if len(parts) == 1:
        return parts[0]
    out: list[float] = []
    for part in parts:
        out += part + part[:2]
    for part in reversed(parts[1:-1]):
        out += part[:2]
    return out


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}:{err.colno}: invalid JSON ({err.msg}); expected a COCO annotation "
                        "file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read ({err}); expected a COCO JSON file") from None
    except (ValueError, RecursionError):  # a number of over 4300 digits, or [[[[... deeper than the parser goes
        raise UserError(f"{path}: unusable JSON (a number with thousands of digits or nesting thousands deep); "
                        "expected a COCO annotation file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: top level is {type(data).__name__}; expected an object with images, annotations, "
                        "categories")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"{path}: {key}: missing or not a list; expected a COCO '{key}' list")
    if not isinstance(data.get("annotations", []), list):
        raise UserError(f"{path}: annotations: not a list; expected a COCO 'annotations' list")
    return data


def _json_files(src: Path) -> list[tuple[Path, str | None]]:
    if src.is_file():
        return [(src, None)]
    found = sorted((src / "annotations").glob("*.json")) or sorted(src.glob("*.json"))
    instances = [p for p in found if p.name.startswith("instances")]
    found = instances or found
    if not found:
        raise UserError(f"{src}: no COCO JSON found; expected SRC to be a .json file or a folder with "
                        "annotations/*.json")
    out = []
    for p in found:
        name = p.stem.lower()
        split = "train" if "train" in name else "val" if "val" in name else "test" if "test" in name else None
        if split != "test":
            out.append((p, split))
    if len(out) > 1 and any(s is None for _, s in out):
        raise UserError(f"{src}: cannot tell the split of {', '.join(p.name for p, s in out if s is None)}; expected "
                        "file names containing 'train' or 'val' (or a single JSON file)")
    return out


def _find_image(file_name: str, json_path: Path, src: Path) -> Path | None:
    stem = json_path.stem.split("_", 1)[-1]  # instances_train2017 -> train2017
    bases = dict.fromkeys([json_path.parent, json_path.parent.parent, src if src.is_dir() else src.parent])
    for base in bases:
        for cand in (base / file_name, base / "images" / file_name, base / "images" / stem / file_name,
                     base / stem / file_name):
            if is_file(cand):
                return cand
    return None


def _categories(data: dict, path: Path, classes: list[str] | None, problems: Problems) -> dict[int, tuple[int, str]]:
    """category id -> (class index, name); duplicates reported."""
    cats: dict[int, str] = {}
    seen_names: set[str] = set()
    for i, cat in enumerate(data["categories"]):
        where = f"{path}: categories[{i}]"
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            problems.add(where, "expected an object with an integer 'id' and a string 'name'")
            continue
        if cat["id"] in cats:
            problems.add(where, f"duplicate category id {cat['id']}; expected unique ids")
            continue
        if cat["name"] in seen_names:
            problems.add(where, f"duplicate category name {cat['name']!r}; expected unique names")
            continue
        cats[cat["id"]] = cat["name"]
        seen_names.add(cat["name"])
    if classes:
        index = {n: k for k, n in enumerate(classes)}
        return {cid: (index.get(name, -1), name) for cid, name in cats.items()}
    return {cid: (k, cats[cid]) for k, cid in enumerate(sorted(cats))}


def _segmentation(seg, size, where: str, problems: Problems) -> list[float] | None:
    if isinstance(seg, dict):
        pts = rle_to_polygon(seg, where, problems)
        return polygon(pts, (float(size[0]), float(size[1])), where, problems, tol=1.0 / min(size)) if pts else None
    if not isinstance(seg, list) or not seg:
        problems.add(where, "segmentation missing or empty; expected a list of polygons or an RLE object")
        return None
    parts = seg if isinstance(seg[0], list) else [seg]
    checked = []
    for j, part in enumerate(parts):
        if not isinstance(part, list):
            problems.add(f"{where} segmentation[{j}]", f"{part!r:.40} is not a list of coordinates; expected "
                                                       "[x1, y1, x2, y2, ...]")
            return None
        vals = [number(v, f"{where} segmentation[{j}]", "coordinate", problems) for v in part]
        if None in vals:
            return None
        pts = polygon(vals, (float(size[0]), float(size[1])), f"{where} segmentation[{j}]", problems,
                      tol=1.0 / min(size))
        if pts is None:
            return None
        checked.append(pts)
    return merge_parts(checked)


def read(src: Path, task: str, classes: list[str] | None, problems: Problems) -> tuple[list[Item], list[str]]:
    items: list[Item] = []
    class_names: list[str] | None = list(classes) if classes else None
    for path, split in _json_files(src):
        data = _json(path)
        cats = _categories(data, path, classes, problems)
        names = [n for _, n in sorted(cats.values())]
        if class_names is None:
            class_names = names
        elif not classes and names != class_names:
            problems.add(str(path), f"categories {names} differ from the other split's {class_names}; expected the "
                                    "same categories in every split (or pass --classes)")
        by_id = _images(data, path, src, split, problems)
        for i, ann in enumerate(data.get("annotations", [])):
            _annotation(ann, f"{path}: annotations[{i}]", by_id, cats, classes, task, problems)
        items += [it for it in by_id.values() if it is not None]
    return items, class_names or []


def _images(data: dict, path: Path, src: Path, split: str, problems: Problems) -> dict:
    """image id -> Item (None for a listed image whose file is missing) of one COCO json."""
    by_id: dict = {}
    for i, img in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(img, dict) or not isinstance(img.get("id"), (int, str)) \
                or not isinstance(img.get("file_name"), str):
            problems.add(where, "expected an object with 'id' and 'file_name'")
            continue
        where = f"{path}: images[{i}] (id {img['id']})"
        w, h = img.get("width"), img.get("height")
        if not (isinstance(w, int) and isinstance(h, int) and 0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            problems.add(where, f"width/height {w!r:.20}x{h!r:.20}; expected positive integers up to {MAX_SIDE}")
            continue
        if img["id"] in by_id:
            problems.add(where, f"duplicate image id {img['id']}; expected unique ids")
            continue
        safe_name(img["file_name"], f"{path}: images[{i}].file_name")
        file = _find_image(img["file_name"], path, src)
        if file is None:
            problems.add(where, f"image file {img['file_name']!r} not found; expected it next to {path.name}, "
                                "in images/ or in images/<split>/")
            by_id[img["id"]] = None  # known id, no item
            continue
        by_id[img["id"]] = Item(file, Path(img["file_name"]).name, split, where, (w, h))
    return by_id


def _annotation(ann, where: str, by_id: dict, cats: dict, classes, task: str, problems: Problems) -> None:
    """Check one annotation and add its object to its image's Item (problems are recorded, not raised)."""
    if not isinstance(ann, dict):
        problems.add(where, "expected an object")
        return
    if "id" in ann:
        where += f" (id {ann['id']})"
    if not isinstance(ann.get("image_id"), (int, str)) or ann["image_id"] not in by_id:
        problems.add(where, f"annotation for a missing image: image_id {ann.get('image_id')!r} is not in "
                            "images; expected the id of a listed image")
        return
    item = by_id[ann["image_id"]]
    if not isinstance(ann.get("category_id"), int) or ann["category_id"] not in cats:
        problems.add(where, f"category_id {ann.get('category_id')!r} is not in categories; expected one of "
                            f"{sorted(cats)}")
        return
    cls, cname = cats[ann["category_id"]]
    if cls < 0:
        problems.add(where, f"unknown category name {cname!r}; expected one of --classes {classes}")
        return
    if ann.get("iscrowd", 0) not in (0, 1, False, True):
        problems.add(where, f"iscrowd {ann.get('iscrowd')!r}; expected 0 or 1")
        return
    if item is None:
        return
    if ann.get("iscrowd"):
        item.skip("crowd")
        return
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        problems.add(where, f"bbox {bbox!r}; expected [x, y, width, height] in pixels")
        return
    vals = [number(v, where, "bbox value", problems) for v in bbox]
    if None in vals:
        return
    x, y, bw, bh = vals
    box = pixel_box(x, y, x + bw, y + bh, item.size, where, problems)
    if box is None:
        return
    if task == "segment":
        pts = _segmentation(ann.get("segmentation"), item.size, where, problems)
        if pts is not None:
            item.objects.append(Obj(cls, box_of_polygon(pts), pts))
    else:
        item.objects.append(Obj(cls, box))

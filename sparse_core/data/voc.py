"""Reader for Pascal VOC (``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/{train,val}.txt``).

VOC pixel coordinates are 1-based and inclusive: a box is converted to the continuous box
``[xmin - 1, xmax] x [ymin - 1, ymax]`` (Detectron2's convention). ``difficult`` objects are skipped (as in VOC
evaluation and Ultralytics' VOC converter); ``truncated`` ones are kept. Class ids follow ``--classes``, else the
20 VOC classes in their usual order when every name is one of them, else sorted names.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

from sparse_core.data.labels import IMAGE_EXTS, Item, Obj, Problems, is_file, number, pixel_box, safe_name
from sparse_core.errors import UserError

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def _root(src: Path) -> Path:
    if (src / "Annotations").is_dir():
        return src
    subs = sorted(p for p in src.glob("*") if (p / "Annotations").is_dir()) if src.is_dir() else []
    if len(subs) == 1:  # VOCdevkit/VOC2012
        return subs[0]
    raise UserError(f"{src}: no Annotations/ folder; expected a VOC root (Annotations/, JPEGImages/, "
                    "ImageSets/Main/)")


def _ids(root: Path, problems: Problems) -> list[tuple[str, str | None]]:
    """(image id, split) from ImageSets/Main/{train,val}.txt, else trainval.txt, else every XML."""
    sets = root / "ImageSets" / "Main"
    listed = [(s, sets / f"{s}.txt") for s in ("train", "val") if (sets / f"{s}.txt").is_file()]
    if not listed and (sets / "trainval.txt").is_file():
        listed = [(None, sets / "trainval.txt")]
    if not listed:
        return [(p.stem, None) for p in sorted((root / "Annotations").glob("*.xml"))]
    out = []
    for split, f in listed:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if line.strip():
                image_id = safe_name(line.split()[0], f"{f}:{n}")
                if not is_file(root / "Annotations" / f"{image_id}.xml"):
                    problems.add(f"{f}:{n}", f"id {image_id!r} has no Annotations/{image_id}.xml; expected an "
                                             "annotation file for every listed id")
                    continue
                out.append((image_id, split))
    return out


def _text(el: ET.Element | None, tag: str) -> str | None:
    child = el.find(tag) if el is not None else None
    return child.text.strip() if child is not None and child.text else None


def _image(root: Path, image_id: str, filename: str | None) -> Path | None:
    jpeg = root / "JPEGImages"
    if filename and is_file(jpeg / filename):
        return jpeg / filename
    for ext in IMAGE_EXTS:
        if is_file(jpeg / f"{image_id}{ext}"):
            return jpeg / f"{image_id}{ext}"
    return None


def _parse(xml: Path, root: Path, split: str | None,
           problems: Problems) -> tuple[Item | None, list[tuple[str, str, object]]]:
    """One XML → an Item and its raw (where, name, corners or None if difficult) objects: boxes are converted
    once the class list is known."""
    text = xml.read_text(errors="replace")
    try:
        tree = ET.fromstring(text)
    except ET.ParseError as err:
        line = err.position[0] if getattr(err, "position", None) else 0
        problems.add(f"{xml}:{line}", f"invalid XML ({err}); expected a VOC annotation")
        return None, []
    if _text(tree, "filename"):
        safe_name(_text(tree, "filename"), f"{xml}: <filename>")
    image = _image(root, xml.stem, _text(tree, "filename"))
    if image is None:
        problems.add(str(xml), f"image for {xml.stem!r} not found in {root / 'JPEGImages'}; expected "
                               f"{_text(tree, 'filename') or xml.stem + '.jpg'}")
        return None, []
    size_el = tree.find("size")
    w, h = _text(size_el, "width"), _text(size_el, "height")
    try:
        size = (int(float(w)), int(float(h)))
        if min(size) <= 0:
            raise ValueError
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(float("1e400"))
        if size_el is not None and (w or h):
            problems.add(str(xml), f"<size> width/height {w!r}x{h!r}; expected positive integers")
            return None, []
        with Image.open(image) as im:  # no <size>: take it from the image itself
            size = im.size
    item = Item(image, image.name, split, str(xml), size)
    starts = [m.start() for m in re.finditer(r"<object[\s>]", text)]
    raw = []
    for k, obj in enumerate(tree.findall("object")):
        line = text.count("\n", 0, starts[k]) + 1 if k < len(starts) else 0
        name = _text(obj, "name")
        where = f"{xml}:{line}: object[{k}]" + (f" {name!r}" if name else "")
        if not name:
            problems.add(where, "missing <name>; expected the class name")
            continue
        difficult = _text(obj, "difficult") or "0"
        if difficult not in ("0", "1"):
            problems.add(where, f"<difficult> {difficult!r}; expected 0 or 1")
            continue
        if difficult == "1":
            raw.append((where, name, None))
            continue
        bnd = obj.find("bndbox")
        if bnd is None:
            problems.add(where, "missing <bndbox>; expected xmin, ymin, xmax, ymax")
            continue
        vals = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            t = _text(bnd, tag)
            vals.append(number(t, where, f"<{tag}>", problems) if t is not None else None)
            if t is None:
                problems.add(where, f"<bndbox> has no <{tag}>; expected a pixel coordinate")
        if None in vals:
            continue
        xmin, ymin, xmax, ymax = vals
        raw.append((where, name, (xmin - 1, ymin - 1, xmax, ymax)))
    return item, raw


def read(src: Path, task: str, classes: list[str] | None, problems: Problems) -> tuple[list[Item], list[str]]:
    if task == "segment":
        raise UserError(f"{src}: VOC annotations hold boxes, not polygons; expected --task detect for --format voc "
                        "(use a COCO or YOLO source for segmentation)")
    root = _root(src)
    parsed = []
    for image_id, split in _ids(root, problems):
        item, raw = _parse(root / "Annotations" / f"{image_id}.xml", root, split, problems)
        if item:
            parsed.append((item, raw))
    if classes:
        names = list(classes)
    else:
        found = {name for _, raw in parsed for _, name, _ in raw}
        names = list(VOC_CLASSES) if found <= set(VOC_CLASSES) else sorted(found)
    index = {n: k for k, n in enumerate(names)}
    items = []
    for item, raw in parsed:
        for where, name, corners in raw:
            if name not in index:
                problems.add(where, f"unknown class name {name!r}; expected one of {names}")
                continue
            if corners is None:
                item.skip("difficult")
                continue
            box = pixel_box(*corners, item.size, where, problems)
            if box:
                item.objects.append(Obj(index[name], box))
        items.append(item)
    return items, names

"""Reader for Ultralytics/YOLO data sets (``data.yaml`` + images/ + labels/ with ``cls cx cy w h`` or polygons).

SRC is a ``data.yaml`` or a folder holding one. Each split's labels live where Ultralytics looks for them (the last
``images`` folder replaced by ``labels``). A missing or empty label file is a background image.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from sparse_core.data.hashing import label_path
from sparse_core.data.labels import (IMAGE_EXTS, Item, Obj, Problems, box_of_polygon, inside_root, norm_box, number,
                                     polygon)
from sparse_core.errors import UserError


def _load_yaml(path: Path) -> dict:
    try:
        meta = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML ({getattr(err, 'problem', err)}); expected an Ultralytics "
                        "data.yaml") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: not a mapping; expected keys path, train, val, names")
    return meta


def _names(meta: dict, yaml_path: Path, classes: list[str] | None) -> list[str]:
    raw = meta.get("names")
    if isinstance(raw, dict):
        try:
            by_id = {int(k): v for k, v in raw.items()}  # YAML may give ids as ints or strings ("0", "00")
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{yaml_path}: names: keys must be class ids 0..n-1") from None
        keys = sorted(by_id)
        if len(by_id) != len(raw) or keys != list(range(len(keys))):
            raise UserError(f"{yaml_path}: names: ids {sorted(raw, key=str)}; expected contiguous ids 0..{len(raw) - 1}")
        names = [str(by_id[k]) for k in keys]
    elif isinstance(raw, list):
        names = [str(n) for n in raw]
    elif raw is None:
        names = []
    else:
        raise UserError(f"{yaml_path}: names: {type(raw).__name__}; expected a list or an id -> name mapping")
    if classes:
        if names and len(classes) != len(names):
            raise UserError(f"--classes: {len(classes)} names but {yaml_path} has {len(names)}; expected the same "
                            "number (--classes renames YOLO classes)")
        names = list(classes)
    if not names:
        raise UserError(f"{yaml_path}: names: missing; expected class names in data.yaml or --classes")
    return names


def split_images(root: Path, spec, where: str) -> list[Path]:
    """The images of a data yaml split (a folder, a .txt list, or a list of those); nothing outside ``root``."""
    images: list[Path] = []
    for s in spec if isinstance(spec, list) else [spec]:
        p = inside_root(root, s, where)
        if p.is_dir():
            images += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS and q.is_file())
        elif p.is_file() and p.suffix == ".txt":
            for n, line in enumerate(p.read_text().splitlines(), 1):
                if line.strip():
                    images.append(inside_root(root, line.strip(), f"{p}:{n}"))
        else:
            raise UserError(f"{where}: {p} not found; expected a folder of images or a .txt list of images")
    return images


def _parse_line(line: str, where: str, nc: int, task: str, problems: Problems) -> Obj | None:
    parts = line.split()
    try:
        cls_f = float(parts[0])
        if not cls_f.is_integer():
            raise ValueError
        cls = int(cls_f)
    except ValueError:
        problems.add(where, f"class {parts[0]!r} is not an integer; expected a class id 0..{nc - 1}")
        return None
    if not 0 <= cls < nc:
        problems.add(where, f"class id {cls} out of range; expected 0..{nc - 1}")
        return None
    values = [number(v, where, "coordinate", problems) for v in parts[1:]]
    if None in values:
        return None
    if len(values) == 4:
        if task == "segment":
            problems.add(where, "box row (cls cx cy w h) in a segment data set; expected cls x1 y1 x2 y2 x3 y3 ...")
            return None
        box = norm_box(*values, where, problems)
        return Obj(cls, box) if box else None
    if len(values) < 4:
        problems.add(where, f"{len(parts)} values; expected 5 (cls cx cy w h) or a polygon (cls x1 y1 x2 y2 x3 y3 ...)")
        return None
    pts = polygon(values, (1.0, 1.0), where, problems)
    if pts is None:
        return None
    return Obj(cls, box_of_polygon(pts), pts)


def read(src: Path, task: str, classes: list[str] | None, problems: Problems) -> tuple[list[Item], list[str]]:
    yaml_path = src / "data.yaml" if src.is_dir() else src
    if not yaml_path.is_file():
        raise UserError(f"{yaml_path}: not found; expected a data.yaml (or a folder holding one) for --format yolo")
    meta = _load_yaml(yaml_path)
    names = _names(meta, yaml_path, classes)
    root = Path(str(meta.get("path") or yaml_path.parent))
    if not root.is_absolute():  # like Ultralytics: relative to the working directory (seed 000), else to the yaml
        root = root if root.is_dir() else yaml_path.parent / root
    splits = [s for s in ("train", "val") if meta.get(s)]
    if "train" not in splits:
        raise UserError(f"{yaml_path}: train: missing; expected the training images folder")
    items: list[Item] = []
    for split in splits:
        images = split_images(root, meta[split], f"{yaml_path}: {split}")
        wanted = {label_path(img) for img in images}
        label_dirs = {label_path(img).parent for img in images} | {
            label_path(root / str(s) / "x.jpg").parent for s in (meta[split] if isinstance(meta[split], list)
                                                                 else [meta[split]]) if (root / str(s)).is_dir()}
        for d in sorted(label_dirs):
            for orphan in sorted(p for p in d.glob("*.txt") if p not in wanted):
                problems.add(str(orphan), "annotation for a missing image; expected an image with the same stem in "
                                          f"{Path(str(d).replace('labels', 'images'))}")
        for img in images:
            lbl = label_path(img)
            item = Item(img, img.name, split if len(splits) == 2 else None, str(lbl))
            if lbl.is_file():
                for n, line in enumerate(lbl.read_text(errors="replace").splitlines(), 1):
                    if line.strip():
                        obj = _parse_line(line, f"{lbl}:{n}", len(names), task, problems)
                        if obj:
                            item.objects.append(obj)
            items.append(item)
    return items, names

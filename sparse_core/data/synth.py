"""Synthetic Ultralytics data sets for demos and tests: solid coloured shapes a YOLO learns in a few epochs.

Each class is one (shape, colour) pair drawn as a filled polygon on a noisy grey background, 1-4 objects per image,
15-45 % of the image side. Labels come from the very polygon that is drawn, so boxes and masks are exact. The
same seed gives the same files (PNG, lossless), and the set is built in a temp folder and renamed into place.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from sparse_core.atomic import atomic_dir
from sparse_core.data import hard
from sparse_core.data.shapes import SHAPES, shape_polygon
from sparse_core.errors import UserError

# class k: SHAPES[k % len] in COLOURS[k % len]; both cycle so neighbouring classes differ in shape AND colour
COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 210, 20),
    "magenta": (200, 40, 200), "cyan": (20, 200, 210), "orange": (245, 130, 20), "black": (20, 20, 20),
}
MAX_CLASSES = 24  # lcm(6, 8): beyond this (shape, colour) pairs repeat
TASKS = ("detect", "segment")


def class_names(n_classes: int) -> list[str]:
    colours = list(COLOURS)
    return [f"{colours[k % len(colours)]}_{SHAPES[k % len(SHAPES)]}" for k in range(n_classes)]


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _render(rng: np.random.Generator, imgsz: int, n_classes: int, task: str) -> tuple[Image.Image, list[str]]:
    """One image and its Ultralytics label lines."""
    tone = rng.integers(90, 170)
    bg = np.clip(rng.normal(tone, 12, (imgsz, imgsz, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(bg, "RGB")
    draw = ImageDraw.Draw(img)
    colours = list(COLOURS.values())
    boxes, lines = [], []
    for _ in range(int(rng.integers(1, 5))):
        for _try in range(20):  # place without heavy overlap so every object stays visible
            cls = int(rng.integers(n_classes))
            size = float(rng.uniform(0.15, 0.45)) * imgsz
            cx = float(rng.uniform(size / 2 + 1, imgsz - size / 2 - 1))
            cy = float(rng.uniform(size / 2 + 1, imgsz - size / 2 - 1))
            poly = shape_polygon(SHAPES[cls % len(SHAPES)], cx, cy, size, float(rng.uniform(0, math.pi / 3)))
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            box = (min(xs), min(ys), max(xs), max(ys))
            if all(_iou(box, b) < 0.05 for b in boxes):
                break
        else:
            continue
        boxes.append(box)
        draw.polygon(poly, fill=colours[cls % len(colours)])
        if task == "segment":
            coords = " ".join(f"{min(max(v / imgsz, 0.0), 1.0):.6f}" for p in poly for v in p)
        else:
            x0, y0, x1, y1 = (min(max(v / imgsz, 0.0), 1.0) for v in box)
            coords = f"{(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}"
        lines.append(f"{cls} {coords}")
    return img, lines


def _is_synth_output(path: Path) -> bool:
    try:
        return "synth" in (yaml.safe_load((path / "data.yaml").read_text()) or {})
    except (OSError, yaml.YAMLError, TypeError):
        return False


PRESETS = ("easy", "hard")


def synth_dataset(out: str | os.PathLike, task: str = "detect", n_train: int = 64, n_val: int = 16, imgsz: int = 128,
                  seed: int = 0, n_classes: int | None = None, preset: str = "easy") -> Path:
    """Write an Ultralytics data set (images/{train,val}, labels/{train,val}, data.yaml) at ``out``.

    ``preset``: ``easy`` (coloured shapes, PNG; 3 classes by default) or ``hard`` (``sparse_core.data.hard``:
    clutter, hard negatives, small/overlapping/truncated objects, JPEG; 12 classes by default).
    Returns ``out/data.yaml`` (absolute ``path``). An earlier synth output at ``out`` is replaced; any other
    non-empty folder is refused.
    """
    if preset not in PRESETS:
        raise UserError(f"preset: {preset!r} is not supported; expected one of {', '.join(PRESETS)}")
    max_classes = hard.HARD_CLASSES if preset == "hard" else MAX_CLASSES
    n_classes = n_classes if n_classes is not None else (max_classes if preset == "hard" else 3)
    if task not in TASKS:
        raise UserError(f"task: {task!r} is not supported; expected one of {', '.join(TASKS)}")
    if n_train < 1 or n_val < 1:
        raise UserError(f"train/val: {n_train}/{n_val} images; expected at least 1 of each")
    if not 32 <= imgsz <= 4096:
        raise UserError(f"imgsz: {imgsz}; expected 32..4096 pixels")
    if not 1 <= n_classes <= max_classes:
        raise UserError(f"classes: {n_classes}; expected 1..{max_classes} for the {preset} preset")
    render, ext = (hard.render_hard, "jpg") if preset == "hard" else (_render, "png")
    names = hard.hard_class_names()[:n_classes] if preset == "hard" else class_names(n_classes)
    out = Path(out).absolute()
    rng = np.random.default_rng(seed)
    with atomic_dir(out, replace_if=_is_synth_output) as tmp:
        ids = iter(range(n_train + n_val))  # numbered across splits: names stay unique (VOC keeps one folder)
        for split, n in (("train", n_train), ("val", n_val)):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for _ in range(n):
                i = next(ids)
                img, lines = render(rng, imgsz, n_classes, task)
                if ext == "png":
                    img.save(tmp / "images" / split / f"{i:05d}.png", optimize=False)
                else:  # already JPEG-degraded: store losslessly what was rendered, as a .jpg at top quality
                    img.save(tmp / "images" / split / f"{i:05d}.jpg", quality=95)
                (tmp / "labels" / split / f"{i:05d}.txt").write_text("".join(line + "\n" for line in lines))
        meta = {
            "path": str(out), "train": "images/train", "val": "images/val",
            "names": dict(enumerate(names)),
            "synth": {"preset": preset, "task": task, "seed": seed, "imgsz": imgsz, "n_train": n_train,
                      "n_val": n_val},
        }
        (tmp / "data.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return out / "data.yaml"

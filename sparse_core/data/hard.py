"""A hard generated detection/segmentation set: what compression costs shows up in its mAP.

The easy shapes set (``synth.py``) saturates at mAP50 ~0.99 for every variant, so it cannot tell a damaged model
from a good one. This one keeps what makes real data hard, deterministically from a seed:

- **classes by shape x texture, not colour**: 12 classes = 6 shapes x {solid, striped}; every object's colours
  are random, so colour is no shortcut;
- **clutter**: multi-scale noise backgrounds with lighting gradients and low-contrast background strokes;
- **hard negatives**: unlabelled distractors that share a class's shape (checkered texture) or texture
  (crosses, ellipses, rings);
- **scale, overlap, truncation**: objects from 6 % to 50 % of the side, overlapping (later ones occlude earlier
  ones; an object hidden for more than 60 % of its area is unlabelled and counts as clutter), cut by the border;
- **image degradation**: blur, sensor noise, JPEG compression.

Labels are the drawn polygons (clipped to the image), so boxes and masks are exact for what is visible.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sparse_core.data.shapes import SHAPES, shape_polygon

TEXTURES = ("solid", "striped")
HARD_CLASSES = len(SHAPES) * len(TEXTURES)
MAX_HIDDEN = 0.6  # an object more hidden than this is not labelled
# calibration (issue 17): dense YOLOv8n trained with the frontier's CPU budget should land at mAP50-95 0.4-0.75
MIN_SIZE, MAX_SIZE = 0.06, 0.5  # object side as a share of the image, log-uniform (skewed towards small)
HARD_NEGATIVES = 0.2  # share of drawn items that are unlabelled distractors
MIN_VISIBLE = 0.0004  # visible area as a share of the image below which an object is not labelled (~13x13 at 640)


def hard_class_names() -> list[str]:
    return [f"{texture}_{shape}" for texture in TEXTURES for shape in SHAPES]


def _noise_background(rng: np.random.Generator, imgsz: int) -> np.ndarray:
    """Multi-scale coloured noise plus a lighting gradient: no two images share a background."""
    img = np.zeros((imgsz, imgsz, 3), np.float32)
    for cells, weight in ((4, 70.0), (16, 35.0), (64, 18.0)):
        grid = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
        up = np.asarray(Image.fromarray(((grid + 4) * 32).clip(0, 255).astype(np.uint8)).resize(
            (imgsz, imgsz), Image.BICUBIC), np.float32) / 32 - 4
        img += weight * up
    img += rng.uniform(60, 190, 3)  # base tone, random tint
    yy, xx = np.mgrid[0:imgsz, 0:imgsz].astype(np.float32) / imgsz
    angle = rng.uniform(0, 2 * math.pi)
    img += (rng.uniform(-50, 50) * (np.cos(angle) * xx + np.sin(angle) * yy))[..., None]
    return img.clip(0, 255).astype(np.uint8)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, imgsz: int) -> None:
    """Low-contrast strokes and blobs: edges everywhere, none of them an object."""
    for _ in range(int(rng.integers(6, 20))):
        colour = tuple(int(v) for v in rng.integers(40, 220, 3))
        x0, y0 = rng.uniform(0, imgsz, 2)
        if rng.random() < 0.6:
            x1, y1 = rng.uniform(0, imgsz, 2)
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, max(2, imgsz // 64) + 1)))
        else:
            r = rng.uniform(0.02, 0.12) * imgsz
            draw.ellipse([x0 - r, y0 - r * rng.uniform(0.3, 1), x0 + r, y0 + r], outline=colour,
                         width=int(rng.integers(1, 3)))


def _texture(rng: np.random.Generator, imgsz: int, kind: str, size: float) -> Image.Image:
    """A full-image fill for one object: solid (shaded), striped, or checkered (only for distractors). Stripes
    scale with the object (3-6 periods across it, at least 4 px), so a small striped object is still striped and
    the class stays decidable (label noise, not difficulty, is what stripes finer than the blur would add)."""
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    while np.abs(a.astype(int) - b.astype(int)).sum() < 150:  # stripes must be visible
        b = rng.integers(0, 256, 3)
    yy, xx = np.mgrid[0:imgsz, 0:imgsz].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    u = np.cos(angle) * xx + np.sin(angle) * yy
    if kind == "solid":
        shade = 1 + 0.25 * (u / imgsz - 0.5)
        arr = (a[None, None, :] * shade[..., None]).clip(0, 255)
    else:
        period = max(4.0, size / rng.uniform(3, 6))
        on = (u // (period / 2)) % 2 == 0
        if kind == "checkered":
            v = -np.sin(angle) * xx + np.cos(angle) * yy
            on = on ^ ((v // (period / 2)) % 2 == 0)
        arr = np.where(on[..., None], a[None, None, :], b[None, None, :])
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _distractor_polygon(rng: np.random.Generator, cx: float, cy: float, size: float) -> list[tuple[float, float]]:
    """Shapes that are no class: a cross, an ellipse or a crescent-like blob."""
    r = size / 2
    kind = rng.integers(3)
    if kind == 0:  # cross
        t = r * 0.35
        pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t),
               (-t, -t)]
    elif kind == 1:  # ellipse
        pts = [(r * math.cos(a), 0.5 * r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
    else:  # crescent
        outer = [(r * math.cos(a), r * math.sin(a)) for a in np.linspace(-2.2, 2.2, 16)]
        inner = [(0.35 * r + 0.6 * r * math.cos(a), 0.6 * r * math.sin(a)) for a in np.linspace(2.2, -2.2, 16)]
        pts = outer + inner
    rot = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _objects(rng: np.random.Generator, imgsz: int, n_classes: int) -> list[dict]:
    """What to draw, back to front: labelled objects and distractors, sizes skewed towards small."""
    items = []
    for _ in range(int(rng.integers(2, 9))):
        size = float(np.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE)))) * imgsz
        cx, cy = rng.uniform(-0.15 * size, imgsz + 0.15 * size, 2)  # may be cut by the border
        if rng.random() < HARD_NEGATIVES:
            if rng.random() < 0.5:
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
                poly = shape_polygon(shape, cx, cy, size, float(rng.uniform(0, math.pi / 3)))
                items.append({"poly": poly, "texture": "checkered", "cls": None, "size": size})
            else:
                items.append({"poly": _distractor_polygon(rng, cx, cy, size),
                              "texture": TEXTURES[int(rng.integers(len(TEXTURES)))], "cls": None, "size": size})
            continue
        cls = int(rng.integers(n_classes))
        shape, texture = SHAPES[cls % len(SHAPES)], TEXTURES[(cls // len(SHAPES)) % len(TEXTURES)]
        poly = shape_polygon(shape, cx, cy, size, float(rng.uniform(0, math.pi / 3)))
        items.append({"poly": poly, "texture": texture, "cls": cls, "size": size})
    return items


def _degrade(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 1.2))))
    arr = np.asarray(img, np.float32)
    arr = arr * rng.uniform(0.75, 1.2) + rng.uniform(-25, 25) + rng.normal(0, rng.uniform(2, 10), arr.shape)
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(55, 90)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _label(poly, cls: int, mask: np.ndarray, imgsz: int, task: str) -> str | None:
    """YOLO label line for what is visible of one object (``mask``: its visible pixels), or None if hidden."""
    ys, xs = np.nonzero(mask)
    if xs.size < max(9, MIN_VISIBLE * imgsz * imgsz):  # a few pixels of a border-cut object: nobody could tell
        return None
    if task == "segment":
        coords = " ".join(f"{min(max(v / imgsz, 0.0), 1.0):.6f}" for p in poly for v in p)
        return f"{cls} {coords}"
    x0, y0, x1, y1 = xs.min() / imgsz, ys.min() / imgsz, (xs.max() + 1) / imgsz, (ys.max() + 1) / imgsz
    return f"{cls} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}"


def render_hard(rng: np.random.Generator, imgsz: int, n_classes: int, task: str) -> tuple[Image.Image, list[str]]:
    """One hard image and its Ultralytics label lines."""
    img = Image.fromarray(_noise_background(rng, imgsz), "RGB")
    _clutter(ImageDraw.Draw(img), rng, imgsz)
    owner = np.full((imgsz, imgsz), -1, np.int16)  # which item is on top at each pixel
    items = _objects(rng, imgsz, n_classes)
    full_area = []
    for i, item in enumerate(items):
        mask_img = Image.new("L", (imgsz, imgsz), 0)
        ImageDraw.Draw(mask_img).polygon(item["poly"], fill=255)
        img.paste(_texture(rng, imgsz, item["texture"], item["size"]), (0, 0), mask_img)
        mask = np.asarray(mask_img) > 127
        owner[mask] = i
        full_area.append(int(mask.sum()))
    lines = []
    for i, item in enumerate(items):
        if item["cls"] is None or full_area[i] == 0:
            continue
        visible = owner == i
        if visible.sum() < (1 - MAX_HIDDEN) * full_area[i]:
            continue
        line = _label(item["poly"], item["cls"], visible, imgsz, task)
        if line:
            lines.append(line)
    return _degrade(img, rng), lines

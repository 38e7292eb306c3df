"""The in-memory form every reader (YOLO, COCO, VOC) produces, and the checks they share.

Readers turn their annotations into ``Item``s holding normalised boxes/polygons and report every problem to a
``Problems`` collector with its location (``file:line`` or ``file: annotations[i]``), what is wrong and what was
expected. ``prepare`` then checks the images and writes Ultralytics labels from the items.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from sparse_core.errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
NORM_TOL = 1e-5  # normalised coordinates may overshoot [0,1] by rounding this much; clipped
PIXEL_TOL = 1.0  # pixel formats (COCO/VOC) may overshoot the image edge by one pixel; clipped
MAX_REPORTED = 500


@dataclass
class Obj:
    cls: int
    box: tuple[float, float, float, float]  # normalised cx, cy, w, h
    polygon: list[float] | None = None  # normalised x1, y1, x2, y2, ... (segment task)


@dataclass
class Item:
    image: Path  # source image file
    name: str  # output image file name
    split: str | None  # "train" / "val", or None: assigned by --val-fraction
    where: str  # location of its annotation, for messages
    size: tuple[int, int] | None = None  # (w, h) the annotation declares; checked against the image
    objects: list[Obj] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # e.g. {"crowd": 2, "difficult": 1}

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


class Problems:
    """Collects located problems; ``strict`` raises on the first one."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.messages: list[str] = []

    def add(self, where: str, what: str) -> None:
        msg = f"{where}: {what}"
        if self.strict:
            raise UserError(msg)
        self.messages.append(msg)

    def __bool__(self) -> bool:
        return bool(self.messages)

    def raise_if_any(self) -> None:
        if not self.messages:
            return
        shown = self.messages[:MAX_REPORTED]
        if len(self.messages) > MAX_REPORTED:
            shown.append(f"... and {len(self.messages) - MAX_REPORTED} more problems")
        raise UserError("\n".join(shown))


def is_file(path: Path) -> bool:
    """``path.is_file()`` for a name taken from an annotation: one too long for the file system is no file either."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def safe_name(name: str, where: str) -> str:
    """A file name taken from an annotation (COCO ``file_name``, VOC ``<filename>``, an image-set id): relative and
    without '..', so joining it to a folder stays inside that folder; anything else is refused (UserError)."""
    parts = name.replace("\\", "/").split("/")
    absolute = name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")  # POSIX, UNC, C:...
    if not name or absolute or ".." in parts or "\0" in name:
        raise UserError(f"{where}: {name[:120]!r} points outside the data set; expected a relative name without '..'")
    return name


def inside_root(root: Path, entry, where: str) -> Path:
    """``root / entry`` for a data yaml's train/val entry (or a line of its .txt list); refused (UserError) when it
    resolves outside ``root`` ('..', or an absolute path elsewhere)."""
    path = Path(str(entry))
    full = Path(os.path.normpath(path if path.is_absolute() else Path(root) / path))
    base = Path(os.path.normpath(Path(root).absolute()))
    if not Path(os.path.normpath(full.absolute())).is_relative_to(base):
        raise UserError(f"{where}: {str(entry)[:120]!r} resolves outside the data set root {base}; expected a path "
                        "inside it (set 'path:' to the data set root)")
    return full


def number(text, where: str, what: str, problems: Problems) -> float | None:
    """``text`` as a finite float, or None after reporting."""
    try:
        value = float(text)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON integer of hundreds of digits
        problems.add(where, f"{what} {text!r} is not a number; expected a finite number")
        return None
    if not math.isfinite(value):
        problems.add(where, f"{what} {text!r} is not finite; expected a finite number")
        return None
    return value


def _clip(v: float, hi: float, tol: float) -> float | None:
    if -tol <= v <= hi + tol:
        return min(max(v, 0.0), hi)
    return None


def pixel_box(x0: float, y0: float, x1: float, y1: float, size: tuple[int, int], where: str,
              problems: Problems) -> tuple[float, float, float, float] | None:
    """Corners in pixels → normalised (cx, cy, w, h); reports zero-area boxes and boxes outside the image."""
    w_img, h_img = size
    if x1 <= x0 or y1 <= y0:
        problems.add(where, f"zero-area box (x {x0:g}..{x1:g}, y {y0:g}..{y1:g}); expected xmin < xmax and ymin < ymax")
        return None
    cx0, cy0, cx1, cy1 = _clip(x0, w_img, PIXEL_TOL), _clip(y0, h_img, PIXEL_TOL), _clip(x1, w_img, PIXEL_TOL), \
        _clip(y1, h_img, PIXEL_TOL)
    if None in (cx0, cy0, cx1, cy1):
        problems.add(where, f"box (x {x0:g}..{x1:g}, y {y0:g}..{y1:g}) outside the {w_img}x{h_img} image; "
                            f"expected 0 <= x <= {w_img} and 0 <= y <= {h_img}")
        return None
    bw, bh = cx1 - cx0, cy1 - cy0
    return (cx0 + bw / 2) / w_img, (cy0 + bh / 2) / h_img, bw / w_img, bh / h_img


def norm_box(cx: float, cy: float, w: float, h: float, where: str, problems: Problems):
    """A YOLO (cx, cy, w, h) row: inside [0,1], positive area; tiny rounding overshoots clipped."""
    vals = [cx, cy, w, h]
    if any(not -NORM_TOL <= v <= 1 + NORM_TOL for v in vals):
        problems.add(where, f"box {' '.join(f'{v:g}' for v in vals)} has coordinates outside [0, 1]; "
                            "expected normalised cx cy w h in [0, 1]")
        return None
    if w <= 0 or h <= 0:
        problems.add(where, f"zero-area box (w {w:g}, h {h:g}); expected w > 0 and h > 0")
        return None
    x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if x0 < -NORM_TOL or y0 < -NORM_TOL or x1 > 1 + NORM_TOL or y1 > 1 + NORM_TOL:
        problems.add(where, f"box {' '.join(f'{v:g}' for v in vals)} extends beyond the image "
                            f"(x {x0:.4f}..{x1:.4f}, y {y0:.4f}..{y1:.4f}); expected cx ± w/2 and cy ± h/2 in [0, 1]")
        return None
    if min(x0, y0) >= 0 and max(x1, y1) <= 1:
        return cx, cy, w, h
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0)
    return (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0


def polygon(coords: list[float], scale: tuple[float, float], where: str, problems: Problems,
            tol: float = NORM_TOL) -> list[float] | None:
    """Flat x,y list (divided by ``scale`` to normalise) → checked normalised polygon, or None after reporting."""
    if len(coords) % 2:
        problems.add(where, f"polygon has an odd number of coordinates ({len(coords)}); expected x y pairs")
        return None
    if len(coords) < 6:
        problems.add(where, f"polygon has {len(coords) // 2} point(s); expected at least 3")
        return None
    sx, sy = scale
    pts = [coords[i] / (sx if i % 2 == 0 else sy) for i in range(len(coords))]
    if any(not -tol <= v <= 1 + tol for v in pts):
        problems.add(where, "polygon has points outside the image; expected coordinates within "
                            + ("[0, 1]" if scale == (1.0, 1.0) else f"the {int(sx)}x{int(sy)} image"))
        return None
    pts = [min(max(v, 0.0), 1.0) for v in pts]
    xs, ys = pts[0::2], pts[1::2]
    area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))
    if area <= 0:
        problems.add(where, "zero-area polygon (all points on a line); expected a polygon enclosing an area")
        return None
    return pts


def box_of_polygon(pts: list[float]) -> tuple[float, float, float, float]:
    xs, ys = pts[0::2], pts[1::2]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0


def format_object(obj: Obj, task: str) -> str:
    """One Ultralytics label line (6 decimals: the normal form that hashing and comparisons rely on)."""
    coords = obj.polygon if task == "segment" else obj.box
    return f"{obj.cls} " + " ".join(f"{v:.6f}" for v in coords)

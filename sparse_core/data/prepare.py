"""``prepare_dataset``: YOLO / COCO JSON / Pascal VOC → a validated Ultralytics data set with stats and a content hash.

Every problem is collected with its location (or the first one raised, with ``strict``) and reported together as
one UserError; the output is built in a temp folder and renamed, so a failed prepare leaves nothing at OUT.
Images are copied byte for byte (never re-encoded), so the content hash of the same data set is the same whichever
format it came in. Splits not given by the source are drawn by a hash of the image name: stable everywhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from PIL import Image

from sparse_core.data import coco, voc, yolo
from sparse_core.atomic import atomic_dir
from sparse_core.data.hashing import content_hash, dataset_hash, normalize_label_text  # noqa: F401 (re-export)
from sparse_core.data.labels import Item, Problems, format_object
from sparse_core.errors import UserError

READERS = {"yolo": yolo.read, "coco": coco.read, "voc": voc.read}
TASKS = ("detect", "segment")


def _assign_splits(items: list[Item], val_fraction: float) -> None:
    """Items without a split: the ``round(n * f)`` names with the smallest sha256 go to val (at least one)."""
    free = [it for it in items if it.split is None]
    if not free:
        return
    n_val = round(len(free) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(free) > 1:
        n_val = 1
    order = sorted(free, key=lambda it: hashlib.sha256(it.name.encode()).hexdigest())
    for k, it in enumerate(order):
        it.split = "val" if k < n_val else "train"


def _check_image(item: Item) -> tuple[bytes | None, str | None]:
    """Read and decode-check an image; returns (bytes, None) or (None, what is wrong)."""
    try:
        data = item.image.read_bytes()
    except OSError as err:
        return None, f"cannot read image {item.image} ({err.strerror}); expected a readable file"
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
            im.verify()
        if item.image.suffix.lower() in (".jpg", ".jpeg") and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
            raise OSError("JPEG end marker missing (truncated file)")
    except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
        return None, f"image {item.image} cannot be decoded ({str(err)[:100]}); expected a valid image"
    if item.size and tuple(item.size) != tuple(size):
        return None, (f"image {item.image.name} is {size[0]}x{size[1]} but the annotation says "
                      f"{item.size[0]}x{item.size[1]}; expected them to match")
    return data, None


def _bounded_map(pool: ThreadPoolExecutor, fn, items: list, window: int = 64):
    """``pool.map`` that keeps at most ``window`` results (image bytes) in memory at a time."""
    for start in range(0, len(items), window):
        chunk = items[start:start + window]
        yield from zip(chunk, pool.map(fn, chunk))


def prepare_dataset(src, fmt: str, out, task: str = "detect", val_fraction: float = 0.2,
                    classes: list[str] | None = None, strict: bool = False) -> dict:
    """Validate SRC in format ``fmt`` and write an Ultralytics data set at OUT; return the stats dict.

    Stats: ``images`` (split → count), ``instances``, ``instances_per_split``, ``per_class`` (name → instances),
    ``backgrounds``, ``skipped`` (crowd/difficult annotations left out), ``content_hash``, ``format``, ``task``, ``names``. Also written to OUT/stats.json.
    """
    if fmt not in READERS:
        raise UserError(f"--format: {fmt!r}; expected one of {', '.join(READERS)}")
    if task not in TASKS:
        raise UserError(f"--task: {task!r}; expected one of {', '.join(TASKS)}")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction: {val_fraction}; expected 0 <= F < 1")
    if classes is not None and (not classes or len(set(classes)) != len(classes) or not all(classes)):
        raise UserError(f"--classes: {classes}; expected unique, non-empty names")
    src, out = Path(src), Path(out).absolute()
    if not src.exists():
        raise UserError(f"{src}: not found; expected the source data set (file or folder)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: output already exists and is not empty; expected a new or empty folder")

    problems = Problems(strict)
    items, names = READERS[fmt](src, task, classes, problems)
    if not names:
        problems.add(str(src), "no classes found; expected categories/class names (or --classes)")
    _assign_splits(items, val_fraction)
    seen: dict[tuple[str, str], Item] = {}
    for it in items:
        key = (it.split, it.name)
        if key in seen:
            problems.add(it.where, f"duplicate image name {it.name!r} in split {it.split} (also {seen[key].where}); "
                                   "expected unique image file names per split")
        seen[key] = it
    items = list(seen.values())
    if not any(it.split == "train" for it in items) and not problems:
        problems.add(str(src), "no training images; expected at least one image")

    stats = {"images": {"train": 0, "val": 0}, "instances": 0, "instances_per_split": {"train": 0, "val": 0},
             "per_class": dict.fromkeys(names, 0), "backgrounds": 0, "skipped": {}}
    entries = []
    with atomic_dir(out) as tmp:
        for split in ("train", "val"):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            for item, (data, err) in _bounded_map(pool, _check_image, items):
                if err:
                    problems.add(item.where, err)
                    continue
                if problems:  # keep checking to report everything, but stop writing
                    continue
                rel = f"images/{item.split}/{item.name}"
                (tmp / rel).write_bytes(data)
                text = "".join(format_object(o, task) + "\n" for o in item.objects)
                (tmp / "labels" / item.split / Path(item.name).with_suffix(".txt")).write_text(text)
                entries.append((rel, hashlib.sha256(data).hexdigest(), normalize_label_text(text)))
                stats["images"][item.split] += 1
                stats["instances"] += len(item.objects)
                stats["instances_per_split"][item.split] += len(item.objects)
                stats["backgrounds"] += not item.objects
                for o in item.objects:
                    stats["per_class"][names[o.cls]] += 1
                for why, n in item.skipped.items():
                    stats["skipped"][why] = stats["skipped"].get(why, 0) + n
        problems.raise_if_any()
        stats["content_hash"] = content_hash(names, entries)
        stats.update({"format": fmt, "task": task, "names": names})
        meta = {"path": str(out), "train": "images/train", "val": "images/val", "names": dict(enumerate(names)),
                "content_hash": stats["content_hash"]}
        (tmp / "data.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def prepare_source(data: str, data_format: str, out: Path, task: str, val_fraction: float, classes) -> dict:
    """Prepare ``data`` into ``out``; an ``s3://`` prefix is downloaded to a scratch folder first."""
    import shutil
    import tempfile

    src, scratch = data, None
    if data.startswith("s3://"):
        from sparse_core import s3

        scratch = Path(tempfile.mkdtemp(prefix="sparsepipe-data-"))
        src = str(s3.download_prefix(data, scratch))
    try:
        if out.exists():
            out.rmdir()  # prepare writes a temp folder and renames it into place
        return prepare_dataset(src, data_format, out, task=task, val_fraction=val_fraction, classes=classes)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

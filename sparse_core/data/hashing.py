"""Content hash of an Ultralytics data set: the same images, labels and class names give the same hash anywhere.

sha256 over the class names and, for every image in sorted order, its path relative to the data set root, the
sha256 of its bytes and the sha256 of its normalised label text (numbers at 6 decimals, lines sorted, no label
file == empty label). Nothing machine-specific (absolute paths, mtimes, file order on disk) enters the hash.
Used for lineage (MLflow, checkpoints) and caching.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import yaml

from sparse_core.errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def normalize_label_text(text: str) -> str:
    """Label lines in normal form: class as int, coordinates at 6 decimals, single spaces, lines sorted."""
    lines = []
    for raw in text.splitlines():
        parts = raw.split()
        if not parts:
            continue
        out = []
        for i, tok in enumerate(parts):
            try:
                v = float(tok)
                out.append(str(int(v)) if i == 0 and v.is_integer() else f"{v:.6f}")
            except ValueError:
                out.append(tok)
        lines.append(" ".join(out))
    return "".join(line + "\n" for line in sorted(lines))


def content_hash(names: list[str], entries: Iterable[tuple[str, str, str]]) -> str:
    """Hash of ``(relative image path, image sha256, normalised label text)`` entries plus the class names."""
    h = hashlib.sha256()
    h.update(json.dumps({"names": list(names)}, ensure_ascii=False).encode() + b"\n")
    for rel, image_sha, label in sorted(entries):
        h.update(f"{rel}\0{image_sha}\0{hashlib.sha256(label.encode()).hexdigest()}\n".encode())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder in the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _names_list(names) -> list[str]:
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names or []]


def _split_images(root: Path, spec) -> list[Path]:
    specs = spec if isinstance(spec, list) else [spec]
    images: list[Path] = []
    for s in specs:
        p = Path(s) if Path(s).is_absolute() else root / s
        if p.is_dir():
            images += [q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS and q.is_file()]
        elif p.is_file() and p.suffix == ".txt":  # list of image paths, relative to the root
            for line in p.read_text().splitlines():
                if line.strip():
                    q = Path(line.strip())
                    images.append(q if q.is_absolute() else root / q)
        else:
            raise UserError(f"{p}: split folder or list not found; expected a folder of images or a .txt list")
    return images


def dataset_hash(data_yaml_or_dir: str | os.PathLike) -> str:
    """Content hash of the data set described by a ``data.yaml`` (or a folder holding one)."""
    path = Path(data_yaml_or_dir)
    if path.is_dir():
        path = path / "data.yaml"
    try:
        meta = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read data set yaml ({err}); expected an Ultralytics data.yaml") from None
    root = Path(meta.get("path") or path.parent)
    if not root.is_absolute():
        root = path.parent / root
    entries = []
    for split in ("train", "val", "test"):
        if not meta.get(split):
            continue
        for image in _split_images(root, meta[split]):
            try:
                rel = image.relative_to(root).as_posix()
            except ValueError:
                rel = f"{split}/{image.name}"
            lbl = label_path(image)
            text = lbl.read_text() if lbl.is_file() else ""
            entries.append((rel, file_sha256(image), normalize_label_text(text)))
    return content_hash(_names_list(meta.get("names")), entries)

"""SparseZoo-style stubs: ``zoo:DOMAIN/SUB_DOMAIN/ARCHITECTURE/FRAMEWORK/REPO/DATASET/SPARSE_TAG[?recipe_type=T]``.

e.g. ``zoo:cv/detection/yolov8-m/pytorch/ultralytics/voc/pruned80_quant-none`` — the grammar the seeds use, so
their commands keep working against our own zoo. A short name ``zoo:ARCHITECTURE-DATASET-SPARSE_TAG`` (e.g.
``zoo:yolov8-m-voc-pruned80_quant-none``) is accepted too and matched against the zoo's stubs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs

from sparse_core.errors import UserError

FIELDS = ("domain", "sub_domain", "architecture", "framework", "repo", "dataset", "sparse_tag")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
QUERY_KEYS = ("recipe_type",)
GRAMMAR = "zoo:" + "/".join(f.upper() for f in FIELDS)


@dataclass(frozen=True)
class Stub:
    path: str  # "cv/detection/yolov8-m/pytorch/ultralytics/voc/pruned80_quant-none", or a short name
    recipe_type: str | None = None

    @property
    def is_short(self) -> bool:
        return "/" not in self.path

    @property
    def fields(self) -> dict[str, str]:
        return dict(zip(FIELDS, self.path.split("/")))

    def __str__(self) -> str:
        return "zoo:" + self.path


def short_name(path: str) -> str:
    """``ARCHITECTURE-DATASET-SPARSE_TAG`` of a full stub path."""
    f = dict(zip(FIELDS, path.split("/")))
    return f"{f['architecture']}-{f['dataset']}-{f['sparse_tag']}"


def parse_stub(text: str, allow_query: bool = True) -> Stub:
    """Parse and validate a stub; a UserError says what is wrong and shows the grammar."""
    if not isinstance(text, str) or not text.startswith("zoo:"):
        raise UserError(f"{text!r}: not a zoo stub; expected {GRAMMAR}")
    body, _, query = text[4:].partition("?")
    recipe_type = None
    if query:
        if not allow_query:
            raise UserError(f"{text}: a query ({query}) is not allowed here; expected {GRAMMAR}")
        params = parse_qs(query, keep_blank_values=True)
        unknown = sorted(set(params) - set(QUERY_KEYS))
        if unknown:
            raise UserError(f"{text}: unknown query key(s) {unknown}; expected {', '.join(QUERY_KEYS)}")
        recipe_type = params["recipe_type"][-1] if "recipe_type" in params else None
        if recipe_type is not None and not _SEGMENT.match(recipe_type):
            raise UserError(f"{text}: recipe_type {recipe_type!r}; expected a name like original or transfer_learn")
    body = body.strip("/")
    parts = body.split("/")
    bad = [p for p in parts if not _SEGMENT.match(p)]
    if bad or (len(parts) != len(FIELDS) and len(parts) != 1):
        raise UserError(f"{text}: expected {GRAMMAR} (7 segments of letters, digits, '_', '-', '.'), e.g. "
                        "zoo:cv/detection/yolov8-m/pytorch/ultralytics/voc/pruned80_quant-none; got "
                        f"{len(parts)} segment(s)" + (f", bad: {bad}" if bad else ""))
    return Stub(body, recipe_type)

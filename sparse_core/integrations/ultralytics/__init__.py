"""Sparse training and validation of YOLO models on Ultralytics (one path for v3u/v5u/v8, detect and segment).

``train`` and ``val`` load on first use, so light modules of this package (``stage``'s settings, ``tracking``'s
metric names) import without Ultralytics and torch.
"""


def __getattr__(name: str):
    if name in ("train", "val"):
        from sparse_core.integrations.ultralytics import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["train", "val"]

"""Sparse training and validation of YOLO models on Ultralytics (one path for v3u/v5u/v8, detect and segment)."""

from sparse_core.integrations.ultralytics.run import train, val  # noqa: F401

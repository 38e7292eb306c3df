"""The container image every KFP component runs in: the one place its reference comes from.

Built from ``manifests/Dockerfile`` (``--build-arg VARIANT=cpu|cuda``); tags are ``<version>-cpu`` and
``<version>-cuda``. ``SPARSEPIPE_IMAGE`` overrides the whole reference (a private registry, a digest pin); it is
read when the pipeline is compiled, so the compiled IR carries the exact image that will run.
"""

from __future__ import annotations

import os

from sparse_core import __version__

REPOSITORY = "ghcr.io/sparsepipe/sparsepipe"
VARIANTS = ("cpu", "cuda")
COMPONENT_IMAGE = os.environ.get("SPARSEPIPE_IMAGE", f"{REPOSITORY}:{__version__}-cpu")


def component_image(variant: str = "cpu") -> str:
    """Image reference for a component: ``SPARSEPIPE_IMAGE`` if set (CPU steps), else the pinned release tag.

    GPU steps ask for ``variant='cuda'``; ``SPARSEPIPE_IMAGE_CUDA`` overrides that one the same way.
    """
    if variant not in VARIANTS:
        raise ValueError(f"image variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    env = "SPARSEPIPE_IMAGE" if variant == "cpu" else "SPARSEPIPE_IMAGE_CUDA"
    return os.environ.get(env) or f"{REPOSITORY}:{__version__}-{variant}"

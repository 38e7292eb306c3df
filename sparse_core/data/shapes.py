"""The shapes both generated data sets draw (``synth`` colours them, ``hard`` textures them): one polygon
per shape name, so a class's outline is the same in either set."""

from __future__ import annotations

import math

SHAPES = ("square", "circle", "triangle", "diamond", "hexagon", "star")


def shape_polygon(shape: str, cx: float, cy: float, size: float, rot: float) -> list[tuple[float, float]]:
    """Vertices (pixels) of ``shape`` with bounding extent ~``size`` centred at (cx, cy)."""
    r = size / 2
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "circle":
        n, radii, start = 24, [r], 0.0
    elif shape == "triangle":
        n, radii, start = 3, [r], -math.pi / 2 + rot
    elif shape == "diamond":
        n, radii, start = 4, [r], 0.0
    elif shape == "hexagon":
        n, radii, start = 6, [r], rot
    else:  # star
        n, radii, start = 10, [r, r * 0.45], -math.pi / 2 + rot
    return [(cx + radii[i % len(radii)] * math.cos(start + 2 * math.pi * i / n),
            cy + radii[i % len(radii)] * math.sin(start + 2 * math.pi * i / n)) for i in range(n)]

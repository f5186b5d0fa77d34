"""Output geometry: keep the input's aspect ratio at the tier's pixel area (contract 3.4)."""

from __future__ import annotations

import math

from stillmotion.catalog import TIERS


def output_size(width: int, height: int, resolution: str, multiple: int = 16) -> tuple[int, int]:
    """Width and height for an input of ``width`` x ``height`` at ``resolution``.

    ``H = sqrt(area / ar)``, ``W = ar * H``, both floored to ``multiple``:
    750x1000 at 720P gives 816x1104.
    """
    if width <= 0 or height <= 0:
        raise ValueError("image sides must be positive")
    tw, th = TIERS[resolution]
    area = tw * th
    ar = width / height
    h = math.sqrt(area / ar)
    w = ar * h
    out_w = max(multiple, int(w // multiple) * multiple)
    out_h = max(multiple, int(h // multiple) * multiple)
    return out_w, out_h


def frame_count(duration: int, fps: int) -> int:
    return duration * fps

"""Sample first frames built in code (no files needed)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def sample_image(width: int = 750, height: int = 1000, seed: int = 7) -> Image.Image:
    """A textured RGB test picture: gradients, a grid and a few discs, so motion is visible."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / 37.0) * np.cos(y / 53.0)
    g = 255 * x / max(1, width - 1)
    b = 255 * y / max(1, height - 1)
    img = np.stack([r, g, b], axis=-1)
    img[(x.astype(int) % 64) < 3] = 240
    img[(y.astype(int) % 64) < 3] = 20
    for _ in range(6):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rad = rng.uniform(0.05, 0.15) * min(width, height)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < rad**2
        img[mask] = rng.uniform(0, 255, size=3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def image_bytes(width: int = 750, height: int = 1000, fmt: str = "PNG", seed: int = 7) -> bytes:
    buf = io.BytesIO()
    sample_image(width, height, seed).save(buf, format=fmt)
    return buf.getvalue()


_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp", "WEBP": "image/webp"}


def data_uri(width: int = 750, height: int = 1000, fmt: str = "PNG", seed: int = 7) -> str:
    payload = base64.b64encode(image_bytes(width, height, fmt, seed)).decode()
    return f"data:{_MIME[fmt]};base64,{payload}"

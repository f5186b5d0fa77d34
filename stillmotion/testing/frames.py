"""Measuring rendered frames against the frames they should be (for tests and ``bench/``).

A camera move's ideal frame ``i`` is a high-quality resize of the exact, unrounded crop the
move asks for at ``i`` (:func:`ideal_frame`). :func:`displacement` says how far a rendered
frame sits from it (sub-pixel), :func:`psnr` how close it is overall.
"""

from __future__ import annotations

import math

import av
import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]


def ideal_frame(luma: Image.Image, box: Box, size: tuple[int, int]) -> np.ndarray:
    """The crop ``box`` (canvas pixels, unrounded) of ``luma``, Lanczos-resized to ``size``."""
    return np.asarray(luma.resize(size, Image.Resampling.LANCZOS, box=box), np.float64)


def luma_frames(path: str, every: int = 1) -> list[np.ndarray]:
    """The luma plane (float64) of every ``every``-th frame of the video at ``path``."""
    out = []
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every == 0:
                out.append(frame.to_ndarray(format="yuv420p")[: frame.height].astype(np.float64))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of ``a`` against ``b`` (8-bit range), dB."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10 * math.log10(255**2 / max(mse, 1e-9))


def peak_shift(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """How far (x, y, whole pixels) the content of ``a`` is shifted from ``b``: the peak of
    their phase correlation."""
    cross = np.fft.rfft2(a - a.mean()) * np.conj(np.fft.rfft2(b - b.mean()))
    corr = np.fft.irfft2(cross / (np.abs(cross) + 1e-9), s=a.shape)
    py, px = np.unravel_index(int(np.argmax(corr)), corr.shape)
    h, w = corr.shape
    return (int(px) - w if px > w // 2 else int(px)), (int(py) - h if py > h // 2 else int(py))


def displacement(a: np.ndarray, b: np.ndarray, steps: int = 6) -> tuple[float, float]:
    """How far (x, y pixels, sub-pixel) the content of ``a`` is shifted from ``b``.

    :func:`peak_shift`, refined by Gauss-Newton (Lucas-Kanade) steps on ``b`` shifted by
    bicubic resampling; recovers known shifts of a textured picture to about 0.01 px.
    """
    dx, dy = (float(v) for v in peak_shift(a, b))
    inner = (slice(16, -16), slice(16, -16))  # away from the edges a shift exposes
    picture = Image.fromarray(np.asarray(b, np.float32), "F")
    for _ in range(steps):
        moved = picture.transform(
            picture.size,
            Image.Transform.AFFINE,
            (1.0, 0.0, -dx, 0.0, 1.0, -dy),
            Image.Resampling.BICUBIC,
        )
        warped = np.asarray(moved, np.float64)
        gy, gx = (np.asarray(g)[inner] for g in np.gradient(warped))
        err = (np.asarray(a, np.float64) - warped)[inner]
        normal = np.array([[np.sum(gx * gx), np.sum(gx * gy)], [np.sum(gx * gy), np.sum(gy * gy)]])
        step = np.linalg.solve(normal, -np.array([np.sum(err * gx), np.sum(err * gy)]))
        dx, dy = dx + float(step[0]), dy + float(step[1])
        if np.abs(step).max() < 1e-3:
            break
    return dx, dy

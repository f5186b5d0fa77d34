"""Camera plans for the motion engine: which part of the still each output frame shows.

A plan is a crop rectangle ``(cx, cy, w, h)`` in source pixels for every frame index. The
move comes from the prompt (English and Chinese keywords, a gentle push-in by default), its
small variations (amount, a slight diagonal) from the seed, and nothing else: the same
prompt, seed and sizes always give the same plan. Moves ease in and out and are subpixel.

Rectangles keep the aspect ratio of the first frame and stay inside the image, with one
exception: a pull-out in the first shot starts from the whole image (frame 0 is always the
input), so it frames *more* than the image; the renderer fills that margin (see
:attr:`MotionPlan.overflows`). ``shot_type="multi"`` cuts 2-3 times between a wide shot and
medium or close crops on the image's salient regions (:func:`find_focus_points`), each shot
with its own move; those crops never show fewer than ``1 / MAX_UPSCALE`` of the output's
width in source pixels, so a close-up is never blown up more than ``MAX_UPSCALE`` times.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import numpy as np


class Move(StrEnum):
    PUSH_IN = "push_in"
    PULL_OUT = "pull_out"
    PAN_LEFT = "pan_left"
    PAN_RIGHT = "pan_right"
    TILT_UP = "tilt_up"
    TILT_DOWN = "tilt_down"
    DRIFT = "drift"
    STATIC = "static"


_V = r"(?:s|es|ed|ing|ning|ned)?"  # verb endings
_ENGLISH: dict[Move, tuple[str, ...]] = {
    Move.PUSH_IN: (
        rf"zoom{_V} in(?:to)?",
        rf"push{_V} in(?:to)?",
        rf"dolly{_V} in",
        r"close ?ups?",
    ),
    Move.PULL_OUT: (rf"zoom{_V} out", rf"pull{_V} (?:out|back)", rf"dolly{_V} (?:out|back)"),
    Move.PAN_LEFT: (rf"pan{_V} (?:to (?:the )?)?left",),
    Move.PAN_RIGHT: (rf"pan{_V} (?:to (?:the )?)?right",),
    Move.TILT_UP: (rf"tilt{_V} up(?:wards?)?",),
    Move.TILT_DOWN: (rf"tilt{_V} down(?:wards?)?",),
    Move.DRIFT: (rf"drift{_V}", rf"float{_V}", rf"orbit{_V}"),
    # bare "still" is left out on purpose: "a still lake" is not a camera instruction
    Move.STATIC: (r"static", r"still (?:camera|shot)", r"fixed (?:camera|shot)", r"locked off"),
}
_CHINESE: dict[Move, tuple[str, ...]] = {
    Move.PUSH_IN: ("推近", "推进", "拉近", "放大", "特写"),
    Move.PULL_OUT: ("拉远", "后退", "缩小"),
    Move.PAN_LEFT: ("向左", "左移", "左摇"),
    Move.PAN_RIGHT: ("向右", "右移", "右摇"),
    Move.TILT_UP: ("向上", "上摇", "仰"),
    Move.TILT_DOWN: ("向下", "下摇", "俯"),
    Move.DRIFT: ("漂移", "环绕", "缓慢移动"),
    Move.STATIC: ("固定镜头", "静止"),
}
_PATTERNS: tuple[tuple[Move, re.Pattern[str]], ...] = tuple(
    (move, re.compile(rf"(?<![a-z]){p}(?![a-z])")) for move, ps in _ENGLISH.items() for p in ps
) + tuple((move, re.compile(re.escape(word))) for move, ws in _CHINESE.items() for word in ws)

MIN_SHOT_FRAMES = 12
_SHOT_ZOOM = {"medium": (1.45, 1.75), "close": (2.0, 2.5)}
#: The most a multi-shot medium or close crop is enlarged: its width in source pixels is at
#: least the output's width divided by this (or the whole image, when it is smaller).
MAX_UPSCALE = 1.5
#: Saliency is computed on a grey thumbnail this wide (Hou & Zhang's 64 px).
SALIENCY_WIDTH = 64
#: Focus points are saliency peaks at least this fraction of the highest one.
PEAK_FLOOR = 0.5


class Rect(NamedTuple):
    """A crop rectangle by its centre and size, in source pixels."""

    cx: float
    cy: float
    w: float
    h: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """``(left, top, right, bottom)``."""
        return (
            self.cx - self.w / 2,
            self.cy - self.h / 2,
            self.cx + self.w / 2,
            self.cy + self.h / 2,
        )


@dataclass(frozen=True)
class Shot:
    start: int  # first frame index
    end: int  # one past the last frame index
    move: Move
    framing: str  # "wide" | "medium" | "close"


@dataclass(frozen=True)
class MotionPlan:
    width: int  # source image size
    height: int
    shots: tuple[Shot, ...]
    rects: tuple[Rect, ...]  # one per frame

    @property
    def num_frames(self) -> int:
        return len(self.rects)

    @property
    def cuts(self) -> tuple[int, ...]:
        """Frame indices where a new shot starts (not 0)."""
        return tuple(shot.start for shot in self.shots[1:])

    def rect(self, index: int) -> Rect:
        return self.rects[index]

    @property
    def min_width(self) -> float:
        """The narrowest crop: the renderer needs ``out_w / min_width`` pixels per source pixel."""
        return min(r.w for r in self.rects)

    @property
    def overflows(self) -> tuple[float, float]:
        """How far (x, y, in source pixels) any crop reaches past the image's edges."""
        mx = max(max(-r.box[0], r.box[2] - self.width) for r in self.rects)
        my = max(max(-r.box[1], r.box[3] - self.height) for r in self.rects)
        return max(0.0, mx), max(0.0, my)


def detect_move(prompt: str) -> Move:
    """The camera move the prompt asks for: the earliest keyword wins; push-in by default."""
    text = re.sub(r"\s+", " ", re.sub(r"[-_]", " ", prompt.lower()))
    found: list[tuple[int, int, Move]] = []
    for move, pattern in _PATTERNS:
        m = pattern.search(text)
        if m:
            found.append((m.start(), -len(m.group()), move))
    return min(found)[2] if found else Move.PUSH_IN


def ease(t: float) -> float:
    """Smooth ease-in-out (zero velocity at both ends)."""
    t = min(1.0, max(0.0, t))
    return 0.5 - 0.5 * math.cos(math.pi * t)


def plan_motion(
    prompt: str,
    seed: int,
    shot_type: str,
    src_size: tuple[int, int],
    out_size: tuple[int, int],
    num_frames: int,
    focus: Sequence[tuple[float, float]] = (),
) -> MotionPlan:
    """Plan ``num_frames`` crops of a ``src_size`` image for an ``out_size`` video.

    ``focus`` lists points of interest as fractions of the image size (see
    :func:`find_focus_points`); multi-shot close-ups go there.
    """
    if num_frames <= 0:
        raise ValueError("num_frames must be positive")
    width, height = src_size
    rng = np.random.default_rng(seed & 0xFFFF_FFFF)
    base = _base_rect(width, height, out_size[0] / out_size[1])
    move = detect_move(prompt)
    shots = _shots(move, shot_type, num_frames, rng)
    points = list(focus) or [(1 / 3, 1 / 3), (2 / 3, 2 / 3), (2 / 3, 1 / 3), (1 / 3, 2 / 3)]
    min_w = min(base.w, out_size[0] / MAX_UPSCALE)
    rects: list[Rect] = []
    previous: tuple[float, float] = (0.5, 0.5)
    for index, shot in enumerate(shots):
        if shot.framing == "wide":
            start = base
        else:
            previous = _pick_focus(points, previous, rng)
            zoom = rng.uniform(*_SHOT_ZOOM[shot.framing])
            start = _fit(
                Rect(previous[0] * width, previous[1] * height, base.w / zoom, base.h / zoom), base
            )
        first = index == 0
        end, arc = _end_of_move(shot.move, start, base, rng, strength=1.0 if first else 0.6)
        if shot.framing != "wide":
            start, end = _capped(start, end, base, min_w)
        rects.extend(_interpolate(start, end, arc, base, shot.end - shot.start, clamp=not first))
    return MotionPlan(width, height, tuple(shots), tuple(rects))


def _base_rect(width: int, height: int, out_ar: float) -> Rect:
    """The whole image, or its centred crop at the output aspect if they differ by > 3 %."""
    src_ar = width / height
    if abs(math.log(src_ar / out_ar)) <= 0.03:
        return Rect(width / 2, height / 2, float(width), float(height))
    if src_ar > out_ar:
        return Rect(width / 2, height / 2, height * out_ar, float(height))
    return Rect(width / 2, height / 2, float(width), width / out_ar)


def _shots(move: Move, shot_type: str, num_frames: int, rng: np.random.Generator) -> list[Shot]:
    if shot_type != "multi":
        return [Shot(0, num_frames, move, "wide")]
    count = min(int(rng.integers(3, 5)), max(1, num_frames // MIN_SHOT_FRAMES))
    weights = 1.0 + rng.uniform(-0.3, 0.3, count)
    spare = num_frames - count * MIN_SHOT_FRAMES  # shared out by weight over the minimum
    ends = np.floor(np.cumsum(weights) / weights.sum() * spare).astype(int)
    starts = [0] + [int(e) + (i + 1) * MIN_SHOT_FRAMES for i, e in enumerate(ends[:-1])]
    kinds = ["medium", "close"] if rng.random() < 0.5 else ["close", "medium"]
    later = (Move.PUSH_IN, Move.PULL_OUT, Move.PAN_LEFT, Move.PAN_RIGHT, Move.DRIFT)
    shots = [Shot(0, starts[1] if count > 1 else num_frames, move, "wide")]
    for i in range(1, count):
        end = starts[i + 1] if i + 1 < count else num_frames
        shot_move = Move.STATIC if move is Move.STATIC else later[int(rng.integers(len(later)))]
        shots.append(Shot(starts[i], end, shot_move, kinds[(i - 1) % 2]))
    return shots


def _pick_focus(
    points: Sequence[tuple[float, float]], previous: tuple[float, float], rng: np.random.Generator
) -> tuple[float, float]:
    """A point of interest away from the previous shot's, so that each cut is visible."""
    far = [p for p in points if math.dist(p, previous) > 0.15] or list(points)
    return far[int(rng.integers(len(far)))]


def _fit(rect: Rect, bounds: Rect) -> Rect:
    """Move ``rect`` inside ``bounds`` (centre it where it is larger)."""

    def axis(c: float, size: float, bc: float, bsize: float) -> float:
        room = (bsize - size) / 2
        return bc if room <= 0 else min(bc + room, max(bc - room, c))

    return Rect(
        axis(rect.cx, rect.w, bounds.cx, bounds.w),
        axis(rect.cy, rect.h, bounds.cy, bounds.h),
        rect.w,
        rect.h,
    )


def _capped(start: Rect, end: Rect, bounds: Rect, min_w: float) -> tuple[Rect, Rect]:
    """``start`` and ``end`` enlarged alike (about their centres) so that neither is narrower
    than ``min_w``, never past ``bounds``' size, and moved back inside ``bounds``."""
    f = min_w / min(start.w, end.w)
    if f <= 1.0:
        return start, end

    def grow(r: Rect) -> Rect:
        g = min(f, bounds.w / r.w, bounds.h / r.h)
        return _fit(Rect(r.cx, r.cy, r.w * g, r.h * g), bounds)

    return grow(start), grow(end)


def _end_of_move(
    move: Move, start: Rect, base: Rect, rng: np.random.Generator, strength: float
) -> tuple[Rect, tuple[float, float]]:
    """Where ``move`` ends from ``start``, and the peak sideways offset of its path (drift)."""
    zoom_range = {
        Move.PULL_OUT: (1.15, 1.22),
        Move.PUSH_IN: (1.18, 1.28),
        Move.DRIFT: (1.08, 1.14),
    }.get(move, (1.22, 1.32))
    k = 1.0 + strength * (rng.uniform(*zoom_range) - 1.0)
    angle = rng.uniform(0.0, 2 * math.pi)
    dx, dy = math.cos(angle) * base.w, math.sin(angle) * base.h  # a diagonal, seed-chosen
    no_arc = (0.0, 0.0)
    if move is Move.STATIC:
        return start, no_arc
    if move is Move.PULL_OUT:
        return Rect(start.cx, start.cy, start.w * k, start.h * k), no_arc
    if move in (Move.PUSH_IN, Move.DRIFT):
        off = strength * rng.uniform(*((0.02, 0.05) if move is Move.PUSH_IN else (0.04, 0.07)))
        end = _fit(Rect(start.cx + off * dx, start.cy + off * dy, start.w / k, start.h / k), base)
        if move is Move.PUSH_IN:
            return end, no_arc
        side = float(rng.choice((-1.0, 1.0))) * rng.uniform(0.02, 0.04)  # drift: bow the path
        return end, (-side * math.sin(angle) * base.w, side * math.cos(angle) * base.h)
    return _pan_end(move, start, base, rng, k, strength), no_arc


def _pan_end(
    move: Move, start: Rect, base: Rect, rng: np.random.Generator, k: float, strength: float
) -> Rect:
    """A pan or tilt: zoom in by ``k`` for room, then travel most of the way to the edge."""
    w, h = start.w / k, start.h / k
    travel = rng.uniform(0.85, 1.0)
    reach = 1.0 if strength >= 1.0 else 0.12  # later shots travel a part of the image only
    jitter = rng.uniform(-0.01, 0.01)
    cx, cy = start.cx + jitter * base.w, start.cy + jitter * base.h
    if move in (Move.PAN_LEFT, Move.PAN_RIGHT):
        sign = -1.0 if move is Move.PAN_LEFT else 1.0
        edge = base.cx + sign * (base.w - w) / 2
        cx = start.cx + travel * max(-reach * base.w, min(reach * base.w, edge - start.cx))
    else:
        sign = -1.0 if move is Move.TILT_UP else 1.0
        edge = base.cy + sign * (base.h - h) / 2
        cy = start.cy + travel * max(-reach * base.h, min(reach * base.h, edge - start.cy))
    return _fit(Rect(cx, cy, w, h), base)


def _interpolate(
    start: Rect, end: Rect, arc: tuple[float, float], bounds: Rect, count: int, clamp: bool
) -> list[Rect]:
    """``count`` eased crops from ``start`` to ``end``; zoom moves geometrically."""
    rects = []
    for i in range(count):
        e = ease(i / (count - 1)) if count > 1 else 0.0
        bump = math.sin(math.pi * e)
        rect = Rect(
            start.cx + (end.cx - start.cx) * e + arc[0] * bump,
            start.cy + (end.cy - start.cy) * e + arc[1] * bump,
            start.w * (end.w / start.w) ** e,
            start.h * (end.h / start.h) ** e,
        )
        rects.append(_fit(rect, bounds) if clamp or rect.w <= bounds.w else rect)
    return rects


def find_focus_points(gray: np.ndarray, count: int = 4) -> list[tuple[float, float]]:
    """Up to ``count`` salient regions of a small grayscale image, as fractions of its size.

    The peaks of :func:`saliency_map` at least ``PEAK_FLOOR`` of the highest, most salient
    first and kept apart; each point is the saliency-weighted centre of its peak's
    neighbourhood, so it sits on the object rather than on one of its edges. Points stay
    within the central 60 % so that crops around them need little clamping. A flat image
    has none (the plan then uses thirds).
    """
    g = np.asarray(gray, dtype=np.float64)
    if g.ndim != 2 or min(g.shape) < 8 or g.std() < 1.0:
        return []
    sal = saliency_map(g)
    h, w = sal.shape
    yy, xx = np.mgrid[0:h, 0:w]
    radius2 = (0.15 * max(h, w)) ** 2
    left, top = sal.copy(), float(sal.max())
    points: list[tuple[float, float]] = []
    while len(points) < count:
        r, c = divmod(int(np.argmax(left)), w)
        if left[r, c] < PEAK_FLOOR * top:
            break
        near = (yy - r) ** 2 + (xx - c) ** 2 <= radius2
        weight = np.where(near, sal, 0.0)
        cx, cy = (weight * xx).sum() / weight.sum(), (weight * yy).sum() / weight.sum()
        left[near] = 0.0
        p = (min(0.8, max(0.2, float(cx + 0.5) / w)), min(0.8, max(0.2, float(cy + 0.5) / h)))
        if all(math.dist(p, q) > 0.1 for q in points):
            points.append(p)
    return points


def saliency_map(gray: np.ndarray) -> np.ndarray:
    """Spectral-residual saliency (Hou & Zhang, CVPR 2007) of a small grey image, in [0, 1].

    What is unexpected in an image stands out of the smooth trend of its log amplitude
    spectrum; keeping only that residual (with the original phase) and transforming back
    leaves the salient parts bright. Blurred, and its border damped, where the FFT's
    wrap-around puts spurious edges.
    """
    spectrum = np.fft.fft2(np.asarray(gray, dtype=np.float64))
    log_amp = np.log(np.abs(spectrum) + 1e-9)
    mean3 = sum(np.roll(log_amp, (dy, dx), (0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    residual = log_amp - mean3 / 9.0
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    sal = _gaussian_blur(sal, sigma=max(1.0, min(sal.shape) / 24))
    sal *= np.outer(_edge_ramp(sal.shape[0]), _edge_ramp(sal.shape[1]))
    peak = float(sal.max())
    return sal / peak if peak > 0 else sal


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.asarray(image, dtype=np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        windows = np.lib.stride_tricks.sliding_window_view(padded, len(kernel), axis=axis)
        out = windows @ kernel
    return out


def _edge_ramp(n: int, part: float = 0.08) -> np.ndarray:
    """1 inside, falling to 0 over the outer ``part`` of ``n`` samples at each end."""
    edge = max(1.0, n * part)
    i = np.arange(n, dtype=np.float64)
    return np.clip(np.minimum(i + 0.5, n - i - 0.5) / edge, 0.0, 1.0)

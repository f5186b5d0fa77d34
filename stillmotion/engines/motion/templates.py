"""Effect templates (``input.template``) the motion engine draws: procedural, over the first frame.

Each effect is a function of the :class:`Stage` (the first frame fitted to the output, a
blurred, dimmed copy of it as the backdrop, the salient point) and of ``t``, the video's
time from 0 to 1; frame 0 is always the first frame itself. The prompt plays no part, as
upstream. What each one does (and how the tests measure it) is in :data:`DESCRIPTIONS`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from stillmotion.engines.motion.keyframes import fit_to_output
from stillmotion.engines.motion.plan import SALIENCY_WIDTH, ease, find_focus_points
from stillmotion.media.encode import yuv420p_planes

DESCRIPTIONS: dict[str, str] = {
    "rotation": "the picture spins one full turn about its centre, shrinking to fit the "
    "frame while it is turned",
    "carousel": "the picture shrinks onto a carousel ring and rides one turn around it, "
    "larger in front, smaller and foreshortened at the back, bobbing up and down",
    "flying": "the picture lifts off and floats upwards, shrinking into the distance and "
    "swaying, its shadow left on the ground",
    "squish": "the picture is squeezed flat onto the ground twice, bulging sideways in the "
    "middle like a stress ball, and springs back",
    "inflate": "the picture swells like a balloon from its centre, with a sheen",
    "poke": "a fingertip pokes the picture at its most salient point and leaves a shaded "
    "dent that springs back with a damped wobble",
    "dissolve": "the picture crumbles into particles from left to right; they drift away "
    "and fade until only the backdrop is left",
    "melt": "the picture melts down: its top edge sinks unevenly, the paint streaks and "
    "pools at the bottom",
}


@dataclass(frozen=True)
class Stage:
    picture: np.ndarray  # h x w x 3 uint8 RGB: the first frame at the output size
    backdrop: np.ndarray  # h x w x 3 uint8: what shows where the picture is not
    focus: tuple[float, float]  # the salient point, output pixels
    seed: int
    rgba: np.ndarray  # the picture, opaque

    @property
    def size(self) -> tuple[int, int]:
        return self.picture.shape[1], self.picture.shape[0]


def make_stage(picture: np.ndarray, focus: tuple[float, float], seed: int) -> Stage:
    rgba = np.dstack([picture, np.full(picture.shape[:2], 255, np.uint8)])
    return Stage(picture, backdrop(picture), focus, seed, rgba)


def backdrop(picture: np.ndarray) -> np.ndarray:
    """A blurred copy of ``picture`` at 45 % brightness."""
    h, w = picture.shape[:2]
    small = cv2.resize(picture, (max(2, w // 8), max(2, h // 8)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), max(2.0, min(small.shape[:2]) / 12))
    return (cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) * 0.45).astype(np.uint8)


def over(premultiplied: np.ndarray, ground: np.ndarray) -> np.ndarray:
    """An RGBA layer whose colour is premultiplied by its alpha (what a warp of RGBA with a
    zero border gives) over an RGB ``ground``."""
    alpha = premultiplied[..., 3:4].astype(np.uint16)
    rest = (ground.astype(np.uint16) * (255 - alpha) + 127) // 255
    return np.minimum(premultiplied[..., :3].astype(np.uint16) + rest, 255).astype(np.uint8)


def _affine(stage: Stage, matrix: np.ndarray, ground: np.ndarray | None = None) -> np.ndarray:
    layer = cv2.warpAffine(
        stage.rgba, matrix, stage.size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    return over(layer, stage.backdrop if ground is None else ground)


def _remap(
    stage: Stage, mx: np.ndarray, my: np.ndarray, border: int = cv2.BORDER_CONSTANT
) -> np.ndarray:
    """The picture sampled at ``(mx, my)`` over the backdrop (outside it: the backdrop, or
    with ``BORDER_REPLICATE`` its edge)."""
    layer = cv2.remap(
        stage.rgba, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR,
        borderMode=border,
    )  # fmt: skip
    return over(layer, stage.backdrop)


def _grid(stage: Stage) -> tuple[np.ndarray, np.ndarray]:
    """Every output pixel's x and y (float32; shared: never written to)."""
    return _pixel_grid(*stage.size)


@functools.lru_cache(maxsize=2)
def _pixel_grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    xx.flags.writeable = yy.flags.writeable = False
    return xx, yy


def _placed(
    w: int, h: int, scale_x: float, scale_y: float, angle: float, at: tuple[float, float]
) -> np.ndarray:
    """The affine matrix putting the picture's centre at ``at``, scaled and turned by
    ``angle`` degrees (counter-clockwise on screen)."""
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    m = np.array([[c * scale_x, s * scale_y], [-s * scale_x, c * scale_y]], np.float64)
    offset = np.array(at) - m @ np.array([w / 2, h / 2])
    return np.hstack([m, offset[:, None]])


def rotation(stage: Stage, t: float) -> np.ndarray:
    w, h = stage.size
    angle = 360.0 * ease(t)
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    fit = min(w / (w * c + h * s), h / (w * s + h * c))
    return _affine(stage, _placed(w, h, fit, fit, angle, (w / 2, h / 2)))


#: carousel: the share of the video spent shrinking onto the ring
CAROUSEL_INTRO = 0.2


def carousel_angle(t: float) -> float:
    """The ride's angle (radians, 0 in front, growing the way it turns)."""
    return 2 * math.pi * ease(max(0.0, t - CAROUSEL_INTRO) / (1 - CAROUSEL_INTRO))


def carousel(stage: Stage, t: float) -> np.ndarray:
    w, h = stage.size
    phi = carousel_angle(t)
    intro = ease(min(1.0, t / CAROUSEL_INTRO))
    depth = math.cos(phi)  # 1 in front, -1 at the back
    scale = 0.45 + 0.12 * depth
    bob = 0.03 * h * math.sin(4 * phi)
    ring = (w / 2 + 0.3 * w * math.sin(phi), h / 2 + 0.12 * h * depth + bob)
    sx = scale * (0.7 + 0.3 * abs(depth))  # foreshortened towards the sides
    at = (_lerp(w / 2, ring[0], intro), _lerp(h / 2, ring[1], intro))
    sizes = (_lerp(1.0, sx, intro), _lerp(1.0, scale, intro))
    return _affine(stage, _placed(w, h, *sizes, 0.0, at))


def _lerp(a: float, b: float, u: float) -> float:
    return a + (b - a) * u


def flying(stage: Stage, t: float) -> np.ndarray:
    w, h = stage.size
    e = ease(t)
    scale = 1.0 - 0.35 * e
    sway = math.sin(2 * math.pi * t)
    at = (w / 2 + 0.04 * w * sway * e, h / 2 - 0.3 * h * e)
    ground = stage.backdrop
    if e > 0:  # the shadow, drawn at a quarter of the size (it is soft anyway)
        sw, sh = max(8, w // 4), max(8, h // 4)
        small = np.zeros((sh, sw), np.float32)
        axes = (max(1, round(0.3 * sw * scale)), max(1, round(0.05 * sh)))
        cv2.ellipse(small, (round(sw / 2), round(0.92 * sh)), axes, 0, 0, 360, 1.0, -1)
        small = cv2.GaussianBlur(small, (0, 0), max(1.0, 0.03 * sh)) * (0.6 * e)
        mask = np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))
        ground = (ground * (1.0 - mask[..., None])).astype(np.uint8)
    return _affine(stage, _placed(w, h, scale, scale, 5.0 * sway * e, at), ground)


def squish_amount(t: float) -> float:
    """How far the picture is squeezed at ``t``: 0 to 1 and back, twice."""
    return math.sin(2 * math.pi * t) ** 2


def squish(stage: Stage, t: float) -> np.ndarray:
    w, h = stage.size
    u = squish_amount(t)
    sy = 1.0 - 0.4 * u
    xx, yy = _grid(stage)
    src_y = h - (h - yy) / sy  # anchored at the bottom edge
    height = np.clip(src_y / h, 0.0, 1.0)
    bulge = 1.0 + 0.3 * u * np.sin(np.pi * height)  # widest in the middle of the body
    return _remap(stage, w / 2 + (xx - w / 2) / bulge, src_y)


def inflate_amount(t: float) -> float:
    return ease(t)


def inflate(stage: Stage, t: float) -> np.ndarray:
    w, h = stage.size
    k = 0.45 * inflate_amount(t)
    grow = 1.0 + 0.08 * inflate_amount(t)
    xx, yy = _grid(stage)
    cx, cy, radius = w / 2, h / 2, 0.55 * math.hypot(w, h) / 2
    r = np.minimum(np.hypot(xx - cx, yy - cy) / radius / grow, 1.0)
    pull = (1.0 - k * (1.0 - r) ** 2) / grow  # the centre magnified 1 / (1 - k) times
    out = _remap(stage, cx + (xx - cx) * pull, cy + (yy - cy) * pull)
    return _sheen(out, (cx - 0.25 * radius, cy - 0.3 * radius), 0.3 * radius, 70 * k / 0.45)


def _sheen(rgb: np.ndarray, at: tuple[float, float], sigma: float, strength: float) -> np.ndarray:
    """``rgb`` brightened by a round, soft highlight at ``at`` (``strength`` levels at its peak)."""
    if strength <= 0:
        return rgb
    h, w = rgb.shape[:2]
    x = np.exp(-0.5 * ((np.arange(w, dtype=np.float32) - at[0]) / sigma) ** 2)
    y = np.exp(-0.5 * ((np.arange(h, dtype=np.float32) - at[1]) / sigma) ** 2)
    glow = np.outer(y, x) * strength
    return np.clip(rgb + glow[..., None], 0, 255).astype(np.uint8)


#: poke: when the finger presses in (from, to), then the dent springs back until the end
POKE_PRESS = (0.15, 0.35)


def poke_depth(t: float) -> float:
    """How deep the dent is at ``t``: 0, pressed in to 1, then a damped wobble back to 0."""
    start, end = POKE_PRESS
    if t <= end:
        return ease((t - start) / (end - start)) if t > start else 0.0
    tau = (t - end) / (1.0 - end)
    return math.exp(-4.0 * tau) * math.cos(3.0 * math.pi * tau) * (1.0 - tau)


def poke_radius(stage: Stage) -> float:
    return 0.18 * min(stage.size)


def poke(stage: Stage, t: float) -> np.ndarray:
    a = poke_depth(t)
    xx, yy = _grid(stage)
    cx, cy = stage.focus
    sigma = poke_radius(stage)
    g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / sigma**2)
    pull = 1.0 + 0.6 * a * g  # > 1: the content is drawn in towards the fingertip
    out = _remap(stage, cx + (xx - cx) * pull, cy + (yy - cy) * pull, cv2.BORDER_REPLICATE)
    shade = 1.0 - 0.35 * max(a, 0.0) * g  # the dent's shadow
    out = (out * shade[..., None]).astype(np.uint8)
    return _fingertip(out, (cx, cy), 0.35 * sigma, finger_opacity(t))


def finger_opacity(t: float) -> float:
    """How much of the fingertip shows: with the press, then gone over ``FINGER_LIFT``."""
    if t <= POKE_PRESS[1]:
        return min(1.0, 1.5 * poke_depth(t))
    return max(0.0, 1.0 - (t - POKE_PRESS[1]) / FINGER_LIFT)


#: poke: how long (a share of the video) the fingertip takes to lift off after the press
FINGER_LIFT = 0.1


def _fingertip(
    rgb: np.ndarray, at: tuple[float, float], radius: float, opacity: float
) -> np.ndarray:
    """A soft, skin-coloured fingertip at ``at``, ``opacity`` (0 to 1) opaque."""
    if opacity <= 0:
        return rgb
    mask = np.zeros(rgb.shape[:2], np.float32)
    centre = (round(at[0]), round(at[1]))
    cv2.circle(mask, centre, max(1, round(radius)), 1.0, -1, cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.8, radius / 6)) * opacity
    skin = np.array([232, 188, 158], np.float32)
    return (rgb + (skin - rgb) * mask[..., None]).astype(np.uint8)


#: dissolve: particles are blocks of this many pixels a side; each fades over this much of t
DISSOLVE_BLOCK = 4
DISSOLVE_FADE = 0.2


@functools.lru_cache(maxsize=4)
def _dissolve_field(seed: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """When each block starts to crumble (0 to 1: left to right, with a ragged front), and
    how fast it flies (0 to 1)."""
    rng = np.random.default_rng(seed & 0xFFFF_FFFF)
    across = np.linspace(0.0, 1.0, cols, dtype=np.float32)[None, :]
    coarse = cv2.resize(rng.random((4, 6), np.float32), (cols, rows), interpolation=cv2.INTER_CUBIC)
    keys = 0.7 * across + 0.2 * coarse + 0.1 * rng.random((rows, cols), np.float32)
    return np.clip(keys, 0.0, 1.0), rng.random((rows, cols), np.float32)


def dissolve(stage: Stage, t: float) -> np.ndarray:
    w, h = stage.size
    b = DISSOLVE_BLOCK
    rows, cols = -(-h // b), -(-w // b)
    keys, speed = _dissolve_field(stage.seed, rows, cols)
    front = t * (1.0 + DISSOLVE_FADE + 0.01) - 0.005
    age = (front - keys) / DISSOLVE_FADE  # < 0 intact, 0..1 flying, > 1 gone
    intact = np.repeat(np.repeat(age < 0, b, 0), b, 1)[:h, :w]
    out = np.where(intact[..., None], stage.picture, stage.backdrop)
    flying = np.nonzero((age >= 0) & (age < 1))
    if len(flying[0]):
        colours = cv2.resize(stage.picture, (cols, rows), interpolation=cv2.INTER_AREA)
        _scatter(out, flying, age[flying], colours[flying], speed[flying])
    return out


def _scatter(
    out: np.ndarray,
    blocks: tuple[np.ndarray, ...],
    age: np.ndarray,
    colours: np.ndarray,
    jitter: np.ndarray,
) -> None:
    """Paint the crumbling blocks, drifted up and to the right by their age, fading."""
    h, w = out.shape[:2]
    b = DISSOLVE_BLOCK
    rows, cols = blocks
    ys = (rows * b - age * (0.12 + 0.1 * jitter) * h).astype(np.int64)
    xs = (cols * b + age**2 * (0.15 + 0.1 * jitter) * w).astype(np.int64)
    alpha = (1.0 - age)[:, None]
    side = max(1, b - 1)
    for dy in range(side):
        for dx in range(side):
            y, x = ys + dy, xs + dx
            ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            spot = out[y[ok], x[ok]].astype(np.float32)
            out[y[ok], x[ok]] = (spot + (colours[ok] - spot) * alpha[ok]).astype(np.uint8)


def melt_amount(t: float) -> float:
    """How far the top edge has sunk on average, as a share of the height (accelerating)."""
    return 0.6 * t**1.5


def melt(stage: Stage, t: float) -> np.ndarray:
    w, h = stage.size
    m = melt_amount(t)
    xx, yy = _grid(stage)
    rng = np.random.default_rng(stage.seed & 0xFFFF_FFFF)
    phases = rng.uniform(0, 2 * math.pi, 5)
    x = np.arange(w, dtype=np.float32)
    uneven = sum(np.sin(2 * math.pi * (k + 1) * x / w + p) / (k + 1) for k, p in enumerate(phases))
    sink = np.clip(m * h * (1.0 + 0.3 * uneven), 0.0, 0.92 * h)[None, :]  # a wavy, sagging top
    src_y = (yy - sink) / (1.0 - sink / h)  # each column squashed into [sink, h]
    src_x = xx + 0.01 * w * m * np.sin(yy / max(4.0, 0.05 * h) + phases[0])
    out = _remap(stage, src_x, src_y)
    streak = 1 + 2 * round(0.05 * h * m)
    return cv2.blur(out, (1, streak)) if streak > 1 else out


Effect = Callable[[Stage, float], np.ndarray]

EFFECTS: dict[str, Effect] = {
    "rotation": rotation,
    "carousel": carousel,
    "flying": flying,
    "squish": squish,
    "inflate": inflate,
    "poke": poke,
    "dissolve": dissolve,
    "melt": melt,
}
TEMPLATES = frozenset(EFFECTS)


def effect_frame(name: str, stage: Stage, index: int, num_frames: int) -> np.ndarray:
    """Frame ``index`` of ``num_frames`` of template ``name`` (RGB); frame 0 is the picture."""
    t = index / (num_frames - 1) if num_frames > 1 else 0.0
    return EFFECTS[name](stage, t)


def focus_point(picture: np.ndarray) -> tuple[float, float]:
    """The most salient point of ``picture`` (output pixels), or its centre."""
    h, w = picture.shape[:2]
    scale = SALIENCY_WIDTH / max(w, h)
    thumb = Image.fromarray(picture).resize(
        (max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.BOX
    )
    points = find_focus_points(np.asarray(thumb.convert("L")))
    fx, fy = points[0] if points else (0.5, 0.5)
    return fx * w, fy * h


class TemplateSource:
    """Draws the frames of template ``name`` over ``image`` (as yuv420p planes)."""

    def __init__(
        self, name: str, image: Image.Image, size: tuple[int, int], num_frames: int, seed: int
    ) -> None:
        picture = np.asarray(fit_to_output(image, size))
        focus = focus_point(picture) if name == "poke" else (size[0] / 2, size[1] / 2)
        self.name, self.num_frames = name, num_frames
        self.stage = make_stage(picture, focus, seed)

    def draw(self, index: int) -> tuple[Image.Image, Image.Image, Image.Image]:
        rgb = effect_frame(self.name, self.stage, index, self.num_frames)
        return yuv420p_planes(Image.fromarray(rgb, "RGB"))

    def close(self) -> None:
        return None

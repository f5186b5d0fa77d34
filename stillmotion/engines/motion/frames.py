"""Drawing the frames of a motion plan as yuv420p planes, cheaply and subpixel-exact.

Each shot's region of the still is pre-scaled once (Lanczos) to what its closest frame
needs, converted to BT.709 planes and enlarged ``k`` times (bicubic); a frame is then a
nearest-neighbour affine sample of those planes (see :class:`ShotSource`). The next shot
is prepared on a thread while the current one plays.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from stillmotion.engines.motion.plan import MotionPlan
from stillmotion.media.encode import yuv420p_planes

MAX_PRESCALED_PIXELS = 16_000_000
#: How much a shot's pre-scaled planes are enlarged for nearest sampling, best first, and
#: the budget (luma pixels) that decides.
UPSAMPLE = (3, 2)
MAX_UPSAMPLED_PIXELS = 48_000_000
#: Frames drawn by filtered resizes while the first shot's planes are being enlarged.
WARMUP_FRAMES = 8
AFFINE = Image.Transform.AFFINE

Planes = tuple[Image.Image, Image.Image, Image.Image]
Box = tuple[float, float, float, float]


class ShotSource:
    """One shot's part of the picture, ready to draw any of its frames cheaply.

    The region the shot looks at is pre-scaled once (Lanczos) to what its closest frame
    needs and split into yuv420p planes. Those planes are then enlarged ``k`` times
    (bicubic, on the shared thread pool), and a frame becomes a nearest-neighbour affine
    sample of the enlarged planes: subpixel to ``1/k`` of a pre-scaled pixel, with the
    quality of a filtered resize at a tenth of its cost. The first ``warmup`` frames (and
    every frame where ``k = 1``: too big to enlarge) are filtered resizes of the pre-scaled
    planes instead, so that encoding starts while the enlargement is still running. The
    switch happens at a fixed frame, so the output does not depend on timing.
    """

    def __init__(
        self,
        canvas: Image.Image,
        boxes: list[Box],
        size: tuple[int, int],
        pool: ThreadPoolExecutor,
        warmup: int = 0,
    ) -> None:
        self.size = size
        x0 = max(0, int(min(b[0] for b in boxes)) - 2)
        y0 = max(0, int(min(b[1] for b in boxes)) - 2)
        x1 = min(canvas.width, int(np.ceil(max(b[2] for b in boxes))) + 2)
        y1 = min(canvas.height, int(np.ceil(max(b[3] for b in boxes))) + 2)
        w, h = x1 - x0, y1 - y0
        s = size[0] / min(b[2] - b[0] for b in boxes)
        s = min(s, (MAX_PRESCALED_PIXELS / (w * h)) ** 0.5)
        target = (2 * max(1, round(w * s / 2)), 2 * max(1, round(h * s / 2)))  # even: 4:2:0
        region = (float(x0), float(y0), float(x1), float(y1))
        pre = _join(*_halves(canvas, target, region, Image.Resampling.LANCZOS, pool))
        self.origin = (float(x0), float(y0))
        self.scale = (target[0] / w, target[1] / h)
        self.bounds = target
        self.planes = yuv420p_planes(pre)
        fits = [k for k in UPSAMPLE if target[0] * target[1] * k * k <= MAX_UPSAMPLED_PIXELS]
        self.k = fits[0] if fits else 1
        self.warmup = warmup if self.k > 1 else len(boxes)
        self._enlarging = _enlarge(self.planes, self.k, pool) if self.k > 1 else None
        self._big: Planes | None = None

    def big(self) -> Planes:
        """The enlarged planes (waits for the pool the first time)."""
        if self._big is None:
            assert self._enlarging is not None
            top, bottom, u, v = self._enlarging
            self._big, self._enlarging = (_join(top, bottom), u.result(), v.result()), None
        return self._big

    def draw(self, box: Box, n: int) -> Planes:
        """Y, U, V of the shot's frame ``n`` showing the canvas region ``box``."""
        (ox, oy), (sx, sy), (bw, bh) = self.origin, self.scale, self.bounds
        left = max(0.0, (box[0] - ox) * sx)
        top = max(0.0, (box[1] - oy) * sy)
        right = min(float(bw), (box[2] - ox) * sx)
        bottom = min(float(bh), (box[3] - oy) * sy)
        width, height = self.size
        sizes = ((width, height), (width // 2, height // 2), (width // 2, height // 2))
        filtered = n < self.warmup
        planes = self.planes if filtered else self.big()
        out = []
        for plane, (pw, ph), div in zip(planes, sizes, (1, 2, 2), strict=True):
            if filtered:
                crop = (left / div, top / div, right / div, bottom / div)
                out.append(plane.resize((pw, ph), Image.Resampling.BILINEAR, box=crop))
                continue
            k = self.k / div
            ax, ay = (right - left) * k / pw, (bottom - top) * k / ph
            data = (ax, 0.0, left * k, 0.0, ay, top * k)
            out.append(plane.transform((pw, ph), AFFINE, data, Image.Resampling.NEAREST))
        return out[0], out[1], out[2]


def _enlarge(planes: Planes, k: int, pool: ThreadPoolExecutor) -> list[Future[Image.Image]]:
    """Start enlarging the planes ``k`` times (bicubic): luma as two halves, then U, V."""
    bicubic = Image.Resampling.BICUBIC
    jobs = []
    for i, plane in enumerate(planes):
        size = (plane.width * k, plane.height * k)
        whole = (0.0, 0.0, float(plane.width), float(plane.height))
        if i == 0:
            jobs += _halves(plane, size, whole, bicubic, pool)
        else:
            jobs.append(pool.submit(plane.resize, size, bicubic, whole))
    return jobs


def _halves(
    image: Image.Image,
    size: tuple[int, int],
    box: Box,
    resample: Image.Resampling,
    pool: ThreadPoolExecutor,
) -> list[Future[Image.Image]]:
    """Resize ``box`` of ``image`` to ``size`` as a top and a bottom half, in parallel.

    Bit-identical to one resize: both halves keep the scale, and Pillow's filters read
    across a box's edges.
    """
    x0, y0, x1, y1 = box
    half = size[1] // 2
    cut = y0 + half * (y1 - y0) / size[1]
    return [
        pool.submit(image.resize, (size[0], half), resample, (x0, y0, x1, cut)),
        pool.submit(image.resize, (size[0], size[1] - half), resample, (x0, cut, x1, y1)),
    ]


def _join(top: Future[Image.Image], bottom: Future[Image.Image]) -> Image.Image:
    upper, lower = top.result(), bottom.result()
    whole = Image.new(upper.mode, (upper.width, upper.height + lower.height))
    whole.paste(upper, (0, 0))
    whole.paste(lower, (0, upper.height))
    return whole


class FrameSource:
    """Draws the frames of a plan, shot by shot, preparing the next shot while one plays.

    ``span`` (``start, stop``): only those frames will be drawn (a piece of the video), so
    each shot's source covers only the part of the still those frames show.
    """

    def __init__(
        self,
        image: Image.Image,
        plan: MotionPlan,
        size: tuple[int, int],
        span: tuple[int, int] | None = None,
    ) -> None:
        self.plan, self.size = plan, size
        self.span = span or (0, plan.num_frames)
        mx, my = (int(np.ceil(v)) for v in plan.overflows)
        self.canvas = _with_backdrop(image, mx, my) if mx or my else image
        self.offset = (float(mx), float(my))
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="enlarge")  # Pillow drops the GIL
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="next-shot")
        self._next: Future[ShotSource] | None = None
        self._shot = -1
        self._source: ShotSource | None = None

    def box(self, index: int) -> Box:
        """Frame ``index``'s crop in canvas pixels."""
        x0, y0, x1, y1 = self.plan.rect(index).box
        ox, oy = self.offset
        return (x0 + ox, y0 + oy, x1 + ox, y1 + oy)

    def _frames(self, shot: int) -> range:
        """The frames of ``shot`` this source draws."""
        s = self.plan.shots[shot]
        return range(max(s.start, self.span[0]), min(s.end, self.span[1]))

    def _make(self, shot: int, warmup: int = 0) -> ShotSource:
        boxes = [self.box(i) for i in self._frames(shot)]
        return ShotSource(self.canvas, boxes, self.size, self._pool, warmup)

    def draw(self, index: int) -> Planes:
        shot = next(n for n, s in enumerate(self.plan.shots) if s.start <= index < s.end)
        if shot != self._shot or self._source is None:
            if self._next is not None and shot == self._shot + 1:
                self._source = self._next.result()
            else:
                self._source = self._make(shot, warmup=WARMUP_FRAMES)
            self._shot = shot
            more = shot + 1 < len(self.plan.shots) and len(self._frames(shot + 1)) > 0
            self._next = self._ahead.submit(self._make, shot + 1) if more else None
        return self._source.draw(self.box(index), index - self._frames(shot).start)

    def close(self) -> None:
        self._ahead.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)


def _with_backdrop(image: Image.Image, mx: int, my: int) -> Image.Image:
    """``image`` on a larger canvas whose margin is a blurred, dimmed copy of it."""
    w, h = image.width + 2 * mx, image.height + 2 * my
    small = image.resize((max(1, w // 8), max(1, h // 8)), Image.Resampling.BILINEAR)
    small = small.filter(ImageFilter.GaussianBlur(max(2.0, min(small.size) / 40)))
    canvas = small.resize((w, h), Image.Resampling.BILINEAR).point(lambda v: int(v * 0.7))
    feather = max(2, min(image.size) // 160)
    mask = Image.new("L", (image.width - 2 * feather, image.height - 2 * feather), 255)
    mask = ImageOps.expand(mask, feather, fill=0).filter(ImageFilter.BoxBlur(feather / 2))
    canvas.paste(image, (mx, my), mask)
    return canvas

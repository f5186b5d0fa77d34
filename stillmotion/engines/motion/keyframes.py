"""First-to-last-frame videos: a camera move over the first frame, then a morph to the last.

The first ``MOVE_SHARE`` of the frames are the camera move the prompt asks for (the plan of
:mod:`plan`, drawn by :class:`~stillmotion.engines.motion.frames.FrameSource`). The rest
carry the camera's last frame ``E`` to the given last frame ``L``, fitted to the output the
way the first frame is (the centred crop at the output's aspect when they differ, resized):

* one dense optical flow ``F`` from ``E`` to ``L`` (OpenCV's DIS, on a grey copy at most
  ``FLOW_WIDTH`` wide, smoothed, scaled up), so that ``E(p) ~ L(p + F(p))``;
* frame ``t`` (eased from 0 to 1) is ``(1 - t) E(p - t F(p)) + t L(p + (1 - t) F(p))``: both
  pictures slide along the flow towards each other while one fades into the other. Where
  the flow is smooth the second term is ``L'(p - t F(p))``, with ``L' = L(p + F(p))`` warped
  once, so a frame is the blend of ``E`` and ``L'`` warped once; over the last ``SETTLE`` of
  the morph it fades into ``L`` itself, so the video ends exactly on the last frame.

When the flow explains too little of the difference (unrelated pictures: ``L`` warped by it
is still more than ``FLOW_GAIN`` of the plain difference away from ``E``), ``F`` is zero and
the morph is a plain cross-fade. Everything works on the yuv420p planes (chroma with the flow
halved), so a morph frame costs one remap and two blends per plane. Weight-free and
deterministic.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from stillmotion.engines.motion.frames import FrameSource
from stillmotion.engines.motion.plan import _base_rect, ease, plan_motion
from stillmotion.media.encode import yuv420p_planes

#: The share of the frames (from the start) that are the camera move over the first frame.
MOVE_SHARE = 0.3
#: The flow is computed on grey copies at most this wide.
FLOW_WIDTH = 480
#: The flow is kept when warping by it leaves at most this share of the plain difference.
FLOW_GAIN = 0.6
#: Over this last share of the morph, the warped blend fades into the last frame itself.
SETTLE = 0.2

NpPlanes = tuple[np.ndarray, np.ndarray, np.ndarray]


def fit_to_output(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` as a first frame becomes frame 0: its centred crop at the output's aspect
    (when the two differ by more than 3 %), Lanczos-resized to ``size``."""
    box = _base_rect(image.width, image.height, size[0] / size[1]).box
    return image.resize(size, Image.Resampling.LANCZOS, box=box)


def move_frames(num_frames: int) -> int:
    """How many of ``num_frames`` frames are the camera move (at least one, and at least one
    frame left for the morph when there are two)."""
    if num_frames < 2:
        return num_frames
    return min(num_frames - 1, max(1, round(num_frames * MOVE_SHARE)))


def dense_flow(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The flow ``F`` (``h x w x 2``, float32, pixels of these images) with
    ``start(p) ~ end(p + F(p))`` for two grey uint8 images, or zeros when it explains
    too little (see the module's doc)."""
    h, w = start.shape
    scale = min(1.0, FLOW_WIDTH / w)
    small = (max(8, round(w * scale)), max(8, round(h * scale)))
    a = cv2.resize(start, small, interpolation=cv2.INTER_AREA)
    b = cv2.resize(end, small, interpolation=cv2.INTER_AREA)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # type: ignore[attr-defined]
    flow = dis.calc(a, b, None)
    sigma = max(1.0, small[0] / 80)
    flow = cv2.GaussianBlur(flow, (0, 0), sigma)
    if not _flow_helps(a, b, flow):
        return np.zeros((h, w, 2), np.float32)
    up = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
    up[..., 0] *= w / small[0]
    up[..., 1] *= h / small[1]
    return up


def _flow_helps(a: np.ndarray, b: np.ndarray, flow: np.ndarray) -> bool:
    grid = _grid(a.shape[1], a.shape[0])
    warped = cv2.remap(b, grid + flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    plain = float(np.abs(b.astype(np.float32) - a).mean())
    moved = float(np.abs(warped.astype(np.float32) - a).mean())
    return plain > 1.0 and moved <= FLOW_GAIN * plain


def _grid(w: int, h: int) -> np.ndarray:
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return np.dstack([xx, yy])


class Morph:
    """The morph from planes ``start`` to planes ``end`` along a flow (see the module)."""

    def __init__(self, start: NpPlanes, end: NpPlanes) -> None:
        self.start, self.end = start, end
        flow = dense_flow(start[0], end[0])
        h, w = start[0].shape
        self.still = not flow.any()  # a cross-fade: nothing to warp
        flows = (flow, cv2.resize(flow, (w // 2, h // 2), interpolation=cv2.INTER_AREA) * 0.5)
        self.flows = (flows[0], flows[1], flows[1])
        grids = (_grid(w, h), _grid(w // 2, h // 2))
        self.grids = (grids[0], grids[1], grids[1])
        self.aligned = tuple(
            plane if self.still else _warp(plane, grid, flow, 1.0)
            for plane, grid, flow in zip(end, self.grids, self.flows, strict=True)
        )  # end(p + F(p)): the end as the start's pixels see it

    def draw(self, t: float) -> NpPlanes:
        """The planes at ``t`` in [0, 1] (not eased here): ``start`` at 0, ``end`` at 1.

        ``end(p + (1 - t) F(p))`` is ``aligned(p - t F(p))`` where the flow is smooth, so
        both pictures are blended first and warped once; over the last ``SETTLE`` of the
        morph the result fades into ``end`` itself, which the double warp only approaches.
        """
        settle = ease((t - (1.0 - SETTLE)) / SETTLE)
        out = []
        for n in range(3):
            blend = cv2.addWeighted(self.start[n], 1.0 - t, self.aligned[n], t, 0.0)
            if not self.still:
                blend = _warp(blend, self.grids[n], self.flows[n], -t)
            if settle > 0.0:
                blend = cv2.addWeighted(blend, 1.0 - settle, self.end[n], settle, 0.0)
            out.append(blend)
        return out[0], out[1], out[2]


def _warp(plane: np.ndarray, grid: np.ndarray, flow: np.ndarray, amount: float) -> np.ndarray:
    """``plane`` sampled at ``p + amount * flow(p)`` (bilinear, edges repeated)."""
    where = cv2.scaleAdd(flow, amount, grid)
    return cv2.remap(plane, where, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class KeyframeSource:
    """Draws frame ``i`` of a first-to-last-frame video: the camera move, then the morph.

    ``span`` (``start, stop``): only those frames will be drawn (a piece of the video); a
    piece that draws no morph frame computes no flow, one that draws no camera frame
    prepares no shot.
    """

    def __init__(
        self,
        image: Image.Image,
        last: Image.Image,
        prompt: str,
        seed: int,
        size: tuple[int, int],
        num_frames: int,
        span: tuple[int, int],
    ) -> None:
        self.size, self.num_frames = size, num_frames
        self.moves = move_frames(num_frames)
        plan = plan_motion(prompt, seed, "single", image.size, size, self.moves)
        camera_span = (min(span[0], self.moves), min(span[1], self.moves))
        self.camera = FrameSource(image, plan, size, camera_span)
        self.morph: Morph | None = None
        if span[1] > self.moves:
            end_box = self.camera.box(self.moves - 1)
            held = self.camera.canvas.resize(size, Image.Resampling.LANCZOS, box=end_box)
            self.morph = Morph(_np_planes(held), _np_planes(fit_to_output(last, size)))

    def progress(self, index: int) -> float:
        """The morph's eased ``t`` at frame ``index`` (0 during the camera move)."""
        count = self.num_frames - self.moves
        if index < self.moves or count <= 0:
            return 0.0
        return ease((index - self.moves + 1) / count)

    def draw(self, index: int) -> tuple[Image.Image | np.ndarray, ...]:
        if index < self.moves:
            return self.camera.draw(index)
        assert self.morph is not None
        t = self.progress(index)
        return self.morph.draw(1.0 if math.isclose(t, 1.0) else t)

    def close(self) -> None:
        self.camera.close()


def _np_planes(image: Image.Image) -> NpPlanes:
    y, u, v = yuv420p_planes(image)
    return np.asarray(y), np.asarray(u), np.asarray(v)

"""The render processes of the motion engine: one still in, ``video.mp4`` out.

The frames are the camera plan's (:mod:`frames`), a first-to-last-frame morph's
(:mod:`keyframes`) or an effect template's (:mod:`templates`); see :func:`_frame_source`.

:func:`render_video` runs in a spawned pool process and takes plain values only. It talks
to the engine through files in the job's work dir: it writes its progress file (the
fraction done, atomically, every few frames) and stops when ``cancel`` appears.

A video can be split into consecutive pieces (:func:`split_render`) that render at the same
time in several processes, each to its own H.264 segment starting with an IDR frame;
:func:`join_video` then copies the segments, in order, into ``video.mp4`` and adds the audio.
On 2 cores two single-threaded x264 encoders finish sooner than one with two frame threads.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import cv2
import numpy as np
from PIL import Image

from stillmotion.engines.motion.frames import FrameSource
from stillmotion.engines.motion.keyframes import KeyframeSource
from stillmotion.engines.motion.plan import SALIENCY_WIDTH, find_focus_points, plan_motion
from stillmotion.engines.motion.templates import TemplateSource
from stillmotion.errors import ServiceError
from stillmotion.media.audio import load_audio, synth_ambience
from stillmotion.media.encode import VideoWriter, join_segments
from stillmotion.media.probe import load_image_rgb
from stillmotion.media.watermark import Watermark

VIDEO_NAME = "video.mp4"
PROGRESS_NAME = "progress"
CANCEL_NAME = "cancel"
CHECK_EVERY = 10  # frames between progress reports and cancel checks
#: The still is decoded at least this many times the output's size (single shot, multi-shot),
#: per side, and below twice that: a bigger image is shrunk while it is decoded (see
#: ``load_image_rgb``). Frames never need more: a single shot zooms in at most ~1.3x, and
#: multi-shot crops go up to ~3x, where ``motion_plan.MAX_UPSCALE`` caps them anyway.
SOURCE_SCALE = (2, 3)
#: The still as decoded for this render (raw RGB, ``.npy``), shared by the pieces of a video;
#: the key names the image file (path, size, mtime) and the box it was decoded for.
SOURCE_NAME = "source-{key}.npy"
#: The shortest piece a video is split into: below it an extra IDR frame and process start
#: cost more than the parallel encode saves.
MIN_PIECE_FRAMES = 30


@dataclass(frozen=True)
class RenderArgs:
    """Everything the render process needs; plain values only, so it pickles."""

    image_path: str
    audio_path: str | None
    work_dir: str
    prompt: str
    seed: int
    shot_type: str
    audio: bool
    watermark: bool
    width: int
    height: int
    fps: int
    num_frames: int
    threads: int = 2
    template: str | None = None  # an effect template (templates.py): the prompt is unused
    last_frame_path: str | None = None  # the frame to end on (keyframes.py)
    start: int = 0  # the frames this render draws: [start, stop) of num_frames
    stop: int | None = None
    output: str = VIDEO_NAME
    progress_name: str = PROGRESS_NAME

    @property
    def end(self) -> int:
        return self.num_frames if self.stop is None else self.stop

    @property
    def whole(self) -> bool:
        """Whether this render makes the whole video (and so its audio)."""
        return self.start == 0 and self.end == self.num_frames


def split_render(args: RenderArgs, parts: int) -> list[RenderArgs]:
    """``args`` as up to ``parts`` consecutive pieces of at least ``MIN_PIECE_FRAMES`` frames,
    sharing ``args.threads`` x264 threads; a single piece is ``args`` itself."""
    parts = max(1, min(parts, args.num_frames // MIN_PIECE_FRAMES))
    if parts == 1:
        return [args]
    edges = [round(i * args.num_frames / parts) for i in range(parts + 1)]
    threads = max(1, args.threads // parts)
    return [
        replace(args, start=a, stop=b, output=f"segment-{i}.mp4", threads=threads,
                progress_name=f"{PROGRESS_NAME}-{i}")
        for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False))
    ]  # fmt: skip


class RenderOutcome(NamedTuple):
    canceled: bool
    has_audio: bool
    frames: int


class RenderFailed(Exception):
    """A render error flattened to plain values (message, error code) so it always pickles."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message, code)
        self.message, self.code = message, code

    def __str__(self) -> str:
        return self.message


class _Canceled(Exception):
    pass


# -- the child process ------------------------------------------------------------------

_M_PERTURB = -6  # glibc mallopt(): fill every malloc'd block with a fixed byte


def init_render_process() -> None:
    """Pool initializer: make uninitialised heap memory a fixed pattern.

    libx264 reads a few bytes of uninitialised memory (seen at 832x480 and 816x1104), so
    the same frames could encode to different bytes, and decode to pixels a few levels
    apart, from run to run. With glibc's M_PERTURB that memory holds the same values
    every time, and the output is the same. Elsewhere (no glibc) this does nothing.
    """
    try:
        ctypes.CDLL(None).mallopt(_M_PERTURB, 0xA5)
    except (OSError, AttributeError):
        pass
    cv2.setNumThreads(1)  # the pieces are the parallelism: no OpenCV threads besides


def render_video(args: RenderArgs) -> RenderOutcome:
    """Render ``args`` to ``work_dir/args.output`` (runs in a pool process)."""
    return _in_child(_render, args)


def _in_child(fn: Callable[..., RenderOutcome], *args: Any) -> RenderOutcome:
    """Run ``fn`` in a pool process: a cancel becomes an outcome, errors plain values."""
    try:
        return fn(*args)
    except _Canceled:
        return RenderOutcome(canceled=True, has_audio=False, frames=0)
    except ServiceError as exc:  # e.g. an undecodable image: keep its code
        raise RenderFailed(exc.message, exc.code) from None
    except Exception as exc:
        raise RenderFailed(f"{type(exc).__name__}: {exc}") from None


def join_video(args: RenderArgs, pieces: list[RenderArgs]) -> RenderOutcome:
    """Join the pieces' segments into ``video.mp4`` with the audio (runs in a pool process)."""
    return _in_child(_join, args, pieces)


def _join(args: RenderArgs, pieces: list[RenderArgs]) -> RenderOutcome:
    work = Path(args.work_dir)
    _Control(work).check()
    audio = _audio_for(args)
    segments = [work / p.output for p in pieces]
    frames = join_segments(segments, work / VIDEO_NAME, args.fps, audio=audio)
    for segment in segments:
        segment.unlink(missing_ok=True)
    return RenderOutcome(canceled=False, has_audio=audio is not None, frames=frames)


class _Control:
    """The child's side of the progress and cancel files."""

    def __init__(self, work_dir: Path, progress_name: str = PROGRESS_NAME) -> None:
        self.progress = work_dir / progress_name
        self.cancel = work_dir / CANCEL_NAME

    def check(self) -> None:
        if self.cancel.exists():
            raise _Canceled

    def report(self, fraction: float) -> None:
        tmp = self.progress.with_name(self.progress.name + ".tmp")
        tmp.write_text(f"{fraction:.4f}")
        os.replace(tmp, self.progress)


def _render(args: RenderArgs) -> RenderOutcome:
    work = Path(args.work_dir)
    control = _Control(work, args.progress_name)
    control.check()
    size = (args.width, args.height)
    image = load_source(args)
    mark = Watermark(*size) if args.watermark else None
    audio = _audio_for(args) if args.whole else None  # pieces get theirs when joined
    control.check()
    source = _frame_source(args, image)
    count = args.end - args.start
    try:
        with VideoWriter(
            work / args.output, *size, args.fps, audio=audio, threads=args.threads
        ) as out:
            for n, i in enumerate(range(args.start, args.end)):
                if n % CHECK_EVERY == 0:
                    control.check()
                    control.report(n / count)
                planes = source.draw(i)
                if mark is not None:
                    y, u, v = (_pil(p) for p in planes)
                    mark.apply(y, u, v)
                    planes = (y, u, v)
                out.write_planes(*(np.asarray(p) for p in planes))
    finally:
        source.close()
    control.report(1.0)
    return RenderOutcome(canceled=False, has_audio=audio is not None, frames=count)


class _Drawer(Protocol):
    def draw(self, index: int) -> Sequence[Image.Image | np.ndarray]: ...

    def close(self) -> None: ...


def _frame_source(args: RenderArgs, image: Image.Image) -> _Drawer:
    """What draws this render's frames: a template, a first-to-last-frame morph, or the
    camera plan."""
    size, span = (args.width, args.height), (args.start, args.end)
    if args.template is not None:
        return TemplateSource(args.template, image, size, args.num_frames, args.seed)
    if args.last_frame_path is not None:
        fit = (args.width * SOURCE_SCALE[0], args.height * SOURCE_SCALE[0])
        last = load_image_rgb(Path(args.last_frame_path), fit=fit, field="input.last_frame")
        return KeyframeSource(image, last, args.prompt, args.seed, size, args.num_frames, span)
    focus = _focus_points(image) if args.shot_type == "multi" else []
    plan = plan_motion(
        args.prompt, args.seed, args.shot_type, image.size, size, args.num_frames, focus
    )
    return FrameSource(image, plan, size, span)


def _pil(plane: Image.Image | np.ndarray) -> Image.Image:
    return plane if isinstance(plane, Image.Image) else Image.fromarray(plane)


def load_source(args: RenderArgs) -> Image.Image:
    """The still, decoded only as large as the output needs, once per video.

    The first piece to get here decodes it (the only time a big image is held at full
    size) and leaves it in the work dir for the others, which wait for it instead of
    decoding the same image at the same time.
    """
    scale = SOURCE_SCALE[args.shot_type == "multi"]
    fit = (args.width * scale, args.height * scale)
    try:
        stat = os.stat(args.image_path)
    except OSError:
        stat = None
    if args.whole or stat is None:  # one render, or nothing to share (the load says why)
        return load_image_rgb(Path(args.image_path), fit=fit)
    work = Path(args.work_dir)
    key = f"{args.image_path}:{stat.st_size}:{stat.st_mtime_ns}:{fit}".encode()
    shared = work / SOURCE_NAME.format(key=hashlib.sha256(key).hexdigest()[:16])
    with open(work / (shared.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if shared.exists():
            return Image.fromarray(np.load(shared))
        image = load_image_rgb(Path(args.image_path), fit=fit)
        tmp = shared.with_name(shared.name + ".tmp")
        with open(tmp, "wb") as out:
            np.save(out, np.asarray(image))
        os.replace(tmp, shared)
        return image


def _focus_points(image: Image.Image) -> list[tuple[float, float]]:
    """Where multi-shot close-ups go: the salient parts of a small grey copy."""
    scale = SALIENCY_WIDTH / max(image.size)
    size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
    thumb = image.resize(size, Image.Resampling.BOX).convert("L")
    return find_focus_points(np.asarray(thumb))


def _audio_for(args: RenderArgs) -> np.ndarray | None:
    if not args.audio:
        return None
    duration = args.num_frames / args.fps
    if args.audio_path:
        return load_audio(args.audio_path, duration)
    return synth_ambience(duration, args.seed)

"""The render process of the motion engine: one still in, ``video.mp4`` out.

:func:`render_video` runs in a spawned pool process and takes plain values only. It talks
to the engine through two files in the job's work dir: it writes ``progress`` (the
fraction done, atomically, every few frames) and stops when ``cancel`` appears.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stillmotion.engines.motion_frames import FrameSource
from stillmotion.engines.motion_plan import find_focus_points, plan_motion
from stillmotion.errors import ServiceError
from stillmotion.media.audio import load_audio, synth_ambience
from stillmotion.media.encode import VideoWriter, yuv420p_planes
from stillmotion.media.probe import load_image_rgb

VIDEO_NAME = "video.mp4"
PROGRESS_NAME = "progress"
CANCEL_NAME = "cancel"
CHECK_EVERY = 10  # frames between progress reports and cancel checks
WATERMARK_TEXT = "AI生成"
WATERMARK_FALLBACK = "AI Generated"
#: CJK-capable fonts tried before Pillow's default font (which has no CJK glyphs).
CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)


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


def render_video(args: RenderArgs) -> RenderOutcome:
    """Render ``args`` to ``work_dir/video.mp4`` (runs in a pool process)."""
    try:
        return _render(args)
    except _Canceled:
        return RenderOutcome(canceled=True, has_audio=False, frames=0)
    except ServiceError as exc:  # e.g. an undecodable image: keep its code
        raise RenderFailed(exc.message, exc.code) from None
    except Exception as exc:
        raise RenderFailed(f"{type(exc).__name__}: {exc}") from None


class _Control:
    """The child's side of the progress and cancel files."""

    def __init__(self, work_dir: Path) -> None:
        self.progress = work_dir / PROGRESS_NAME
        self.cancel = work_dir / CANCEL_NAME

    def check(self) -> None:
        if self.cancel.exists():
            raise _Canceled

    def report(self, fraction: float) -> None:
        tmp = self.progress.with_name(PROGRESS_NAME + ".tmp")
        tmp.write_text(f"{fraction:.4f}")
        os.replace(tmp, self.progress)


def _render(args: RenderArgs) -> RenderOutcome:
    work = Path(args.work_dir)
    control = _Control(work)
    control.check()
    size = (args.width, args.height)
    image = load_image_rgb(Path(args.image_path))
    focus = _focus_points(image) if args.shot_type == "multi" else []
    plan = plan_motion(
        args.prompt, args.seed, args.shot_type, image.size, size, args.num_frames, focus
    )
    mark = Watermark(*size) if args.watermark else None
    audio = _audio_for(args)
    control.check()
    source = FrameSource(image, plan, size)
    try:
        with VideoWriter(
            work / VIDEO_NAME,
            *size,
            args.fps,
            audio=audio,
            threads=args.threads,
        ) as out:
            for i in range(args.num_frames):
                if i % CHECK_EVERY == 0:
                    control.check()
                    control.report(i / args.num_frames)
                planes = source.draw(i)
                if mark is not None:
                    mark.apply(*planes)
                out.write_planes(*(np.asarray(p) for p in planes))
    finally:
        source.close()
    control.report(1.0)
    return RenderOutcome(canceled=False, has_audio=audio is not None, frames=args.num_frames)


def _focus_points(image: Image.Image) -> list[tuple[float, float]]:
    """Where multi-shot close-ups go: the most detailed parts of a small grey copy."""
    thumb = image.convert("L").reduce(max(1, min(image.size) // 96))
    return find_focus_points(np.asarray(thumb))


def _audio_for(args: RenderArgs) -> np.ndarray | None:
    if not args.audio:
        return None
    duration = args.num_frames / args.fps
    if args.audio_path:
        return load_audio(args.audio_path, duration)
    return synth_ambience(duration, args.seed)


# -- the watermark ----------------------------------------------------------------------

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


class Watermark:
    """A small semi-transparent label in the bottom-right corner, drawn once.

    Kept as a luma patch with its alpha (full and half size); pasting it also pulls the
    chroma under the label towards grey, as a white/black label does.
    """

    def __init__(self, width: int, height: int) -> None:
        size = max(10, round(min(width, height) * 0.04))
        font, text = watermark_font(size)
        left, top, right, bottom = (int(v) for v in font.getbbox(text))
        pad = max(2, size // 12)
        pw, ph = right - left + 2 * pad, bottom - top + 2 * pad
        patch = Image.new("RGBA", (pw + pw % 2, ph + ph % 2), (0, 0, 0, 0))
        draw = ImageDraw.Draw(patch)
        draw.text((pad - left + 1, pad - top + 1), text, font=font, fill=(0, 0, 0, 90))
        draw.text((pad - left, pad - top), text, font=font, fill=(255, 255, 255, 170))
        self.luma = yuv420p_planes(patch)[0]
        self.alpha = patch.getchannel("A")
        self.alpha_half = self.alpha.reduce(2)
        margin = max(4, round(min(width, height) * 0.025))
        x, y = width - patch.width - margin, height - patch.height - margin
        self.position = (x - x % 2, y - y % 2)

    def apply(self, y: Image.Image, u: Image.Image, v: Image.Image) -> None:
        x0, y0 = self.position
        y.paste(self.luma, (x0, y0), self.alpha)
        hw, hh = self.alpha_half.size
        for plane in (u, v):
            plane.paste(128, (x0 // 2, y0 // 2, x0 // 2 + hw, y0 // 2 + hh), self.alpha_half)


def watermark_font(size: int) -> tuple[Font, str]:
    """A CJK font with "AI生成" when one is installed, else Pillow's default font.

    When the default font lacks the CJK glyphs (it does today), the label is "AI Generated".
    """
    for candidate in CJK_FONTS:
        if os.path.exists(candidate):
            try:
                return ImageFont.truetype(candidate, size), WATERMARK_TEXT
            except OSError:
                continue
    font = ImageFont.load_default(size=size)
    if has_glyphs(font, WATERMARK_TEXT):
        return font, WATERMARK_TEXT
    return font, WATERMARK_FALLBACK


def has_glyphs(font: Font, text: str) -> bool:
    """Whether ``font`` draws every character of ``text`` (not its "missing" box)."""

    def ink(ch: str) -> bytes:
        img = Image.new("L", (64, 64))
        ImageDraw.Draw(img).text((8, 8), ch, font=font, fill=255)
        return img.tobytes()

    missing = ink("\uffff")
    return all(ch.isascii() or ink(ch) != missing for ch in text)

"""The motion engine end to end: real MP4s decoded with PyAV, plus its plan and audio parts."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import signal
import wave
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from stillmotion.catalog import MODELS
from stillmotion.domain import MediaRef, VideoRequest
from stillmotion.engines.base import CancelSignal, EngineJob, EngineResult
from stillmotion.engines.motion.engine import MotionEngine
from stillmotion.engines.motion.plan import (
    MAX_UPSCALE,
    Move,
    detect_move,
    find_focus_points,
    plan_motion,
)
from stillmotion.engines.motion.render import (
    RenderArgs,
    _focus_points,
    load_source,
    split_render,
)
from stillmotion.errors import EngineCanceled, PermanentEngineError, RetryableEngineError
from stillmotion.media import watermark
from stillmotion.media.audio import load_audio, synth_ambience
from stillmotion.media.encode import VideoWriter, yuv420p_planes
from stillmotion.media.watermark import Font, has_glyphs, watermark_font
from stillmotion.testing.frames import displacement, ideal_frame, luma_frames, peak_shift, psnr

SMALL = (256, 144)
FPS = 30


# -- helpers ----------------------------------------------------------------------------


def textured_image(path: Path, size: tuple[int, int] = (640, 360), seed: int = 3) -> Path:
    """Colour gradients, blobs with edges and light grain: every region is distinct."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([60 + 120 * x / w, 60 + 120 * y / h, 200 - 100 * (x + y) / (w + h)], -1)
    img = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 40)
        draw.ellipse(
            (cx - r, cy - r, cx + r, cy + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
        )
    img = img.filter(ImageFilter.GaussianBlur(1.0))
    grain = rng.normal(0, 2, (h, w, 3))
    Image.fromarray(np.clip(np.asarray(img) + grain, 0, 255).astype(np.uint8)).save(path)
    return path


def write_wav(path: Path, seconds: float, rate: int = 44_100, freq: float = 330.0) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.4 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


def make_job(tmp: Path, image: Path, **kw: Any) -> EngineJob:
    size = kw.pop("size", SMALL)
    duration = kw.pop("duration", 2)
    audio_path = kw.pop("audio_path", None)
    fields: dict[str, Any] = {
        "model": "wan2.6-i2v-flash",
        "prompt": "",
        "negative_prompt": "",
        "image": MediaRef(url="http://example.invalid/still.png"),
        "audio_source": None,
        "resolution": "720P",
        "duration": duration,
        "audio": True,
        "shot_type": "single",
        "seed": 1,
        "prompt_extend": False,
        "watermark": False,
    } | kw
    return EngineJob(
        task_id="t",
        spec=MODELS["wan2.6-i2v-flash"],
        request=VideoRequest(**fields),
        width=size[0],
        height=size[1],
        fps=FPS,
        num_frames=duration * FPS,
        work_dir=tmp,
        image_path=image,
        audio_path=audio_path,
    )


async def render(engine: MotionEngine, job: EngineJob) -> EngineResult:
    async def progress(fraction: float) -> None:
        return None

    return await engine.generate(job, progress, CancelSignal())


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def gray(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float32).mean(axis=2)


def top_level_boxes(path: Path) -> list[str]:
    data, pos, names = path.read_bytes(), 0, []
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        names.append(data[pos + 4 : pos + 8].decode("latin-1"))
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        pos += size if size else len(data)
    return names


def shift(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """How far (dx, dy) the content of ``b`` moved relative to ``a`` (phase correlation)."""
    return peak_shift(b, a)


def magnify(frame: np.ndarray, z: float) -> np.ndarray:
    h, w = frame.shape
    cw, ch = w / z, h / z
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return np.asarray(Image.fromarray(frame).resize((w, h), Image.Resampling.BILINEAR, box=box))


def zoom_between(a: np.ndarray, b: np.ndarray) -> float:
    """The magnification of ``a`` (about its centre, any shift) that best matches ``b``."""
    scores = {}
    h, w = a.shape
    for z in np.arange(1.0, 1.45, 0.05):
        m = magnify(a, float(z))
        dx, dy = shift(m, b)
        moved = np.roll(m, (dy, dx), axis=(0, 1))
        scores[float(z)] = float(np.abs(moved - b)[h // 5 : -h // 5, w // 5 : -w // 5].mean())
    return min(scores, key=scores.__getitem__)


def cuts(frames: list[np.ndarray]) -> int:
    diffs = np.array(
        [np.abs(gray(a) - gray(b)).mean() for a, b in zip(frames, frames[1:], strict=False)]
    )
    return int(np.sum(diffs > max(12.0, 5 * float(np.median(diffs)))))


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[MotionEngine]:
    eng = MotionEngine(processes=2)
    yield eng
    asyncio.run(eng.aclose())


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return textured_image(tmp_path_factory.mktemp("img") / "still.png")


# -- end to end -------------------------------------------------------------------------


async def test_output_is_h264_yuv420p_faststart_with_aac(
    engine: MotionEngine, image: Path, tmp_path: Path
) -> None:
    result = await render(engine, make_job(tmp_path, image))
    assert result.video_path == tmp_path / "video.mp4"
    assert (result.width, result.height, result.fps, result.num_frames) == (*SMALL, 30.0, 60)
    assert result.has_audio
    with av.open(str(result.video_path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and v.codec_context.pix_fmt == "yuv420p"
        assert (v.codec_context.width, v.codec_context.height) == SMALL
        assert v.average_rate == 30
        assert a.codec_context.name == "aac" and a.sample_rate == 48_000 and a.channels == 2
        video_s = float(v.duration * v.time_base)
        assert video_s == pytest.approx(2.0, abs=1e-6)
        assert float(a.duration * a.time_base) == pytest.approx(video_s, abs=0.03)
        assert sum(1 for _ in c.decode(video=0)) == 60
    boxes = top_level_boxes(result.video_path)
    assert boxes.index("moov") < boxes.index("mdat")


async def test_silent_when_audio_is_off(engine: MotionEngine, image: Path, tmp_path: Path) -> None:
    result = await render(engine, make_job(tmp_path, image, audio=False))
    assert not result.has_audio
    with av.open(str(result.video_path)) as c:
        assert not c.streams.audio


async def test_first_frame_is_the_input_and_zoom_in_magnifies(
    engine: MotionEngine, image: Path, tmp_path: Path
) -> None:
    result = await render(engine, make_job(tmp_path, image, prompt="slowly zoom in on the lake"))
    frames = frames_of(result.video_path)
    expected = np.asarray(Image.open(image).convert("RGB").resize(SMALL, Image.Resampling.LANCZOS))
    assert np.abs(frames[0].astype(np.float32) - expected).mean() < 6
    assert np.abs(gray(frames[-1]) - gray(frames[0])).mean() > 10
    assert zoom_between(gray(frames[0]), gray(frames[-1])) >= 1.1


async def test_frames_follow_the_planned_move_to_a_fraction_of_a_pixel(
    engine: MotionEngine, image: Path, tmp_path: Path
) -> None:
    """Sub-pixel motion: each frame sits where the plan's unrounded crop puts it. Crops
    rounded the way ffmpeg's zoompan rounds them (size to whole pixels, position to even
    ones) land measurably off that path."""
    size = (640, 360)
    job = make_job(tmp_path, image, prompt="slowly zoom in", audio=False, size=size)
    result = await render(engine, job)
    still = Image.open(image).convert("RGB")
    plan = plan_motion("slowly zoom in", 1, "single", still.size, size, job.num_frames)
    assert plan.overflows == (0.0, 0.0)  # no backdrop: plan boxes are still pixels
    luma = yuv420p_planes(still)[0]
    rounded_off = []
    for n, frame in enumerate(luma_frames(str(result.video_path), every=6)):
        box = plan.rect(n * 6).box
        ideal = ideal_frame(luma, box, size)
        assert math.hypot(*displacement(frame, ideal)) < 0.1
        assert psnr(frame, ideal) > 35
        x0, y0 = 2 * (box[0] // 2), 2 * (box[1] // 2)  # zoompan's crop on 4:2:0 input
        whole = ideal_frame(
            luma, (x0, y0, x0 + int(box[2] - box[0]), y0 + int(box[3] - box[1])), size
        )
        rounded_off.append(math.hypot(*displacement(whole, ideal)))
    assert len(rounded_off) == 10 and max(rounded_off) > 0.5


async def test_pull_out_starts_from_the_input_and_shrinks(
    engine: MotionEngine, image: Path, tmp_path: Path
) -> None:
    result = await render(engine, make_job(tmp_path, image, prompt="镜头拉远"))
    frames = frames_of(result.video_path)
    expected = np.asarray(Image.open(image).convert("RGB").resize(SMALL, Image.Resampling.LANCZOS))
    assert np.abs(frames[0].astype(np.float32) - expected).mean() < 6
    assert zoom_between(gray(frames[-1]), gray(frames[0])) >= 1.1


async def test_pan_left_and_right_move_opposite_ways_in_english_and_chinese(
    engine: MotionEngine, image: Path, tmp_path: Path
) -> None:
    moved = {}
    for prompt in ("pan left", "pan right", "镜头向左"):
        result = await render(
            engine, make_job(tmp_path / prompt, image, prompt=prompt, audio=False)
        )
        frames = [gray(f) for f in frames_of(result.video_path)]
        moved[prompt] = frames, sum(shift(frames[i], frames[i + 6])[0] for i in range(15, 40, 6))
    assert moved["pan left"][1] >= 3  # the camera turns left: the picture slides right
    assert moved["pan right"][1] <= -3
    assert all(
        np.array_equal(a, b)
        for a, b in zip(moved["pan left"][0], moved["镜头向左"][0], strict=True)
    )


async def test_multi_shot_cuts_two_or_three_times_single_never(
    engine: MotionEngine, image: Path, tmp_path: Path
) -> None:
    single = await render(engine, make_job(tmp_path / "s", image, audio=False))
    assert cuts(frames_of(single.video_path)) == 0
    for seed in (1, 2, 3):
        multi = await render(
            engine,
            make_job(tmp_path / f"m{seed}", image, shot_type="multi", seed=seed, audio=False),
        )
        assert 2 <= cuts(frames_of(multi.video_path)) <= 3


async def test_same_seed_same_frames_other_seed_differs(
    engine: MotionEngine, image: Path, tmp_path: Path
) -> None:
    runs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        # 832x480: a size where libx264 read uninitialised memory (see encode.py)
        job = make_job(
            tmp_path / name, image, seed=seed, shot_type="multi", watermark=True, size=(832, 480)
        )
        runs.append(frames_of((await render(engine, job)).video_path))
    assert len(runs[0]) == len(runs[1]) == 60
    assert all(np.array_equal(x, y) for x, y in zip(runs[0], runs[1], strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(runs[0], runs[2], strict=True))


def test_split_render_makes_consecutive_pieces_of_at_least_a_second() -> None:
    args = RenderArgs(
        image_path="i.png", audio_path=None, work_dir="w", prompt="", seed=1,
        shot_type="single", audio=True, watermark=False, width=64, height=64, fps=30,
        num_frames=150, threads=2,
    )  # fmt: skip
    pieces = split_render(args, 2)
    assert [(p.start, p.end) for p in pieces] == [(0, 75), (75, 150)]
    assert [p.threads for p in pieces] == [1, 1] and not any(p.whole for p in pieces)
    assert len({p.output for p in pieces} | {p.progress_name for p in pieces}) == 4
    assert [(p.start, p.end) for p in split_render(args, 8)] == [
        (0, 30), (30, 60), (60, 90), (90, 120), (120, 150)
    ]  # fmt: skip
    short = replace(args, num_frames=59)
    assert split_render(short, 2) == [short] and short.whole


async def test_pieces_join_into_the_video_one_render_makes(
    engine: MotionEngine, image: Path, tmp_path: Path
) -> None:
    """The pool of 2 renders a 2 s video as two pieces joined without re-encoding."""
    single = MotionEngine(processes=1)
    try:
        one = await render(single, make_job(tmp_path / "one", image, prompt="pan left"))
    finally:
        await single.aclose()
    joined = await render(engine, make_job(tmp_path / "two", image, prompt="pan left"))
    assert not list((tmp_path / "two").glob("segment-*"))  # the pieces were cleaned up
    with av.open(str(joined.video_path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        pts = [f.pts for f in c.decode(v)]
        assert float(a.duration * a.time_base) == pytest.approx(2.0, abs=0.03)
    assert len(pts) == 60 and pts == sorted(pts) and len(set(pts)) == 60
    pairs = list(zip(frames_of(one.video_path), frames_of(joined.video_path), strict=True))
    # The same pictures, in the same place, up to resampling and encoding noise (each piece
    # pre-scales only the part of the still its frames show).
    assert max(np.abs(gray(x) - gray(y)).mean() for x, y in pairs) < 3.0
    assert all(shift(gray(x), gray(y)) == (0, 0) for x, y in pairs[::10])


@pytest.mark.parametrize("seconds", [4.0, 0.5])
async def test_audio_track_is_cut_or_padded_to_the_video(
    engine: MotionEngine, image: Path, tmp_path: Path, seconds: float
) -> None:
    wav = write_wav(tmp_path / "voice.wav", seconds)
    result = await render(engine, make_job(tmp_path / "out", image, audio_path=wav))
    with av.open(str(result.video_path)) as c:
        a = c.streams.audio[0]
        assert float(a.duration * a.time_base) == pytest.approx(2.0, abs=0.03)
        pcm = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    tail = np.sqrt(np.mean(pcm[:, int(1.2 * 48_000) : int(1.9 * 48_000)] ** 2))
    head = np.sqrt(np.mean(pcm[:, int(0.1 * 48_000) : int(0.4 * 48_000)] ** 2))
    assert head > 0.1  # the user's tone, not the synthetic ambience
    assert (tail > 0.1) if seconds > 2 else (tail < 0.01)


async def test_watermark_marks_the_bottom_right_corner_only(
    engine: MotionEngine, image: Path, tmp_path: Path
) -> None:
    plain = await render(engine, make_job(tmp_path / "p", image, audio=False))
    marked = await render(engine, make_job(tmp_path / "m", image, audio=False, watermark=True))
    a, b = gray(frames_of(plain.video_path)[30]), gray(frames_of(marked.video_path)[30])
    h, w = a.shape
    assert np.abs(a - b)[int(h * 0.8) :, int(w * 0.55) :].mean() > 3
    assert np.abs(a - b)[: h // 2, : w // 2].mean() < 0.5


async def test_progress_rises_to_one_and_720p_is_exact(
    engine: MotionEngine, image: Path, tmp_path: Path
) -> None:
    seen: list[float] = []

    async def progress(fraction: float) -> None:
        seen.append(fraction)

    job = make_job(tmp_path, image, size=(1280, 720), duration=3, shot_type="multi")
    engine.poll_interval = 0.02  # several reports even on a fast machine
    try:
        result = await engine.generate(job, progress, CancelSignal())
    finally:
        engine.poll_interval = 0.25
    assert seen == sorted(seen) and len(set(seen)) == len(seen) and seen[-1] == 1.0
    assert len(seen) >= 3 and 0.0 < seen[0] < 0.9
    with av.open(str(result.video_path)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (1280, 720)
        assert sum(1 for _ in c.decode(video=0)) == 90


async def test_cancel_stops_the_render_quickly(
    engine: MotionEngine, image: Path, tmp_path: Path
) -> None:
    """Canceled at the first progress report, every piece stops at its next check: far from
    its end, with its partial segment removed, and the engine returns only once they have."""
    cancel = CancelSignal()
    reported: list[float] = []

    async def progress(fraction: float) -> None:
        reported.append(fraction)
        cancel.set()

    job = make_job(tmp_path, image, size=(1280, 720), duration=15)
    pieces = split_render(engine._args(job), engine.processes)
    assert len(pieces) == 2 and all(p.end - p.start == 225 for p in pieces)
    engine.poll_interval = 0.05  # the first report comes early in the pieces
    try:
        with pytest.raises(EngineCanceled):
            await engine.generate(job, progress, cancel)
    finally:
        engine.poll_interval = 0.25
    assert len(reported) == 1 and 0.0 < reported[0] < 0.5  # canceled at the first report
    assert (tmp_path / "cancel").exists()  # the children were told
    done = [_progress_of(tmp_path / p.progress_name) for p in pieces]
    # A piece reports every CHECK_EVERY frames and checks for cancel just before: a piece
    # that ran to its end would read 1.0. Each stopped with most of its frames undrawn.
    assert all(d < 0.5 for d in done), done
    assert not (tmp_path / "video.mp4").exists()
    assert sorted(tmp_path.glob("segment-*.mp4")) == []  # each writer aborted: children ended
    snapshot = [_mtime(tmp_path / p.progress_name) for p in pieces]
    await asyncio.sleep(0.5)  # nothing renders on after the engine returned
    assert [_mtime(tmp_path / p.progress_name) for p in pieces] == snapshot


def _progress_of(path: Path) -> float:
    """What a render piece last reported (0.0: it stopped before its first frame)."""
    return float(path.read_text()) if path.exists() else 0.0


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


async def test_killed_render_process_is_retryable_and_the_pool_recovers(
    image: Path, tmp_path: Path
) -> None:
    eng = MotionEngine(processes=1)
    before = {p.pid for p in multiprocessing.active_children()}

    async def progress(fraction: float) -> None:
        for child in multiprocessing.active_children():
            if child.pid not in before and child.pid is not None:
                os.kill(child.pid, signal.SIGKILL)

    try:
        job = make_job(tmp_path / "a", image, size=(1280, 720), duration=10)
        with pytest.raises(RetryableEngineError):
            await eng.generate(job, progress, CancelSignal())
        result = await render(eng, make_job(tmp_path / "b", image))
        assert result.num_frames == 60
    finally:
        await eng.aclose()


async def test_unreadable_image_is_a_permanent_error(engine: MotionEngine, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(PermanentEngineError, match="motion render failed") as caught:
        await render(engine, make_job(tmp_path / "w", bad))
    assert caught.value.code == "BadRequest.UnsupportedFileFormat"


def _rgba16_png(path: Path, pixels: np.ndarray) -> Path:
    """Write ``pixels`` (``H x W x 4`` uint16) as a 16-bit RGBA PNG (Pillow cannot)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    h, w, _ = pixels.shape
    rows = np.zeros((h, 1 + w * 8), np.uint8)
    rows[:, 1:] = pixels.astype(">u2").view(np.uint8).reshape(h, w * 8)
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + idat + chunk(b"IEND", b""))
    return path


def _palette_png(path: Path) -> Path:
    pal = Image.new("P", (640, 360), 1)
    pal.putpalette([200, 30, 60, 20, 90, 220] + [0] * 762)
    pal.paste(0, (0, 0, 320, 360))
    pal.save(path)
    return path


def _halves_mean(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean RGB of the middle of the left and of the right half of a frame."""
    h, w, _ = frame.shape
    mid = frame[h // 4 : 3 * h // 4]
    return mid[:, w // 16 : 7 * w // 16].mean((0, 1)), mid[:, 9 * w // 16 : 15 * w // 16].mean(
        (0, 1)
    )


async def test_16_bit_rgba_and_palette_images_render_their_colours(
    engine: MotionEngine, tmp_path: Path
) -> None:
    """The first frame (the input itself) decoded from the MP4 has the input's colours:
    16-bit samples scaled to 8 bits, half-transparent pixels composited on black."""
    pixels = np.empty((360, 640, 4), np.uint16)
    pixels[:] = (0x3000, 0x8000, 0xC000, 0xFFFF)  # (48, 128, 192), opaque
    pixels[:, 320:] = (0xF000, 0xD000, 0x2000, 0x8000)  # (240, 208, 32) at half alpha
    cases = {
        _rgba16_png(tmp_path / "deep.png", pixels): ((48, 128, 192), (120, 104, 16)),
        _palette_png(tmp_path / "pal.png"): ((200, 30, 60), (20, 90, 220)),
    }
    for path, (left, right) in cases.items():
        job = make_job(tmp_path / path.stem, path, audio=False, watermark=False)
        first = frames_of((await render(engine, job)).video_path)[0]
        got_left, got_right = _halves_mean(first)
        assert np.abs(got_left - left).max() < 6, (path.name, got_left)
        assert np.abs(got_right - right).max() < 6, (path.name, got_right)


def test_a_maximal_png_is_handed_to_rendering_reduced_and_decoded_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8000x8000 in a small file, for a 960x960 video in two pieces: the first piece
    decodes it to at most twice the output's sides times ``SOURCE_SCALE``, the second reads
    that instead of decoding the image again."""
    import stillmotion.engines.motion.render as motion_render

    path = tmp_path / "huge.png"
    img = Image.new("RGB", (8000, 8000), (40, 90, 150))
    img.paste((230, 200, 60), (4000, 0, 8000, 8000))
    img.save(path, compress_level=1)
    args = RenderArgs(str(path), None, str(tmp_path), "", 1, "single", False, False,
                      960, 960, 30, 150)  # fmt: skip
    decodes: list[Path] = []
    real = motion_render.load_image_rgb

    def counting(p: Path, **kw: Any) -> Image.Image:
        decodes.append(p)
        return real(p, **kw)

    monkeypatch.setattr(motion_render, "load_image_rgb", counting)
    scale = motion_render.SOURCE_SCALE[0]
    sizes = []
    for piece in split_render(args, 2):
        source = load_source(piece)
        assert 960 * scale <= source.width < 2 * 960 * scale
        assert source.size == (source.width, source.width)
        assert source.getpixel((10, 10)) == (40, 90, 150)
        assert source.getpixel((source.width - 10, 10)) == (230, 200, 60)
        sizes.append(source.size)
    assert len(decodes) == 1 and sizes[0] == sizes[1]


# -- plan and audio units ---------------------------------------------------------------


@pytest.mark.parametrize("src", [(1280, 720), (1920, 1080), (3840, 2160), (640, 360)])
def test_multi_shot_crops_never_blow_the_source_up_past_the_cap(src: tuple[int, int]) -> None:
    """No medium or close crop is narrower than the output / MAX_UPSCALE (or the whole
    image, if that is narrower): the source does not run out of pixels."""
    out = (1280, 720)
    floor = min(src[0], out[0] / MAX_UPSCALE)
    closest = []
    for seed in range(30):
        for prompt in ("", "pan left", "drift", "zoom out"):
            plan = plan_motion(prompt, seed, "multi", src, out, 150, [(0.3, 0.4), (0.7, 0.6)])
            later = plan.rects[plan.shots[1].start :]
            assert min(r.w for r in later) >= floor - 1e-6
            closest.append(min(r.w for r in later))
    if src[0] >= 2 * out[0]:  # room to zoom: close-ups still happen
        assert min(closest) < src[0] / 2


def _object_image(size: tuple[int, int], centre: tuple[float, float]) -> Image.Image:
    """A flat, lightly graded background with one bright, textured object."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    background = np.stack([70 + 20 * x / w, 90 + 10 * y / h, np.full_like(x, 110)], -1)
    img = Image.fromarray(background.astype(np.uint8))
    rng = np.random.default_rng(4)
    side = h // 5
    texture = rng.integers(120, 256, (side, side, 3), dtype=np.uint8)
    img.paste(
        Image.fromarray(texture), (int(centre[0] * w) - side // 2, int(centre[1] * h) - side // 2)
    )
    return img


@pytest.mark.parametrize("centre", [(0.3, 0.6), (0.7, 0.35), (0.5, 0.5), (0.25, 0.3)])
def test_multi_shot_framings_aim_at_the_salient_object(centre: tuple[float, float]) -> None:
    """Spectral-residual saliency finds the one object on a flat background; every medium
    and close shot is framed on it and keeps it in view."""
    size = (1280, 720)
    img = _object_image(size, centre)
    half = (size[1] // 10) / size[0], (size[1] // 10) / size[1]  # the object's half sides
    focus = _focus_points(img)
    assert focus
    for fx, fy in focus:
        assert abs(fx - centre[0]) <= half[0] + 0.02 and abs(fy - centre[1]) <= half[1] + 0.02
    ox, oy = centre[0] * size[0], centre[1] * size[1]
    for seed in range(10):
        plan = plan_motion("", seed, "multi", size, (640, 360), 150, focus)
        for shot in plan.shots[1:]:
            start = plan.rect(shot.start)
            assert abs(start.cx - ox) < 0.1 * size[0] and abs(start.cy - oy) < 0.1 * size[1]
            for r in plan.rects[shot.start : shot.end]:
                x0, y0, x1, y1 = r.box
                assert x0 < ox < x1 and y0 < oy < y1


def test_focus_points_on_a_flat_image_are_none() -> None:
    assert find_focus_points(np.full((36, 64), 128, np.uint8)) == []


@pytest.mark.parametrize(
    ("prompt", "move"),
    [
        ("A cat on a sofa", Move.PUSH_IN),
        ("close-up of the eyes", Move.PUSH_IN),
        ("镜头缓慢推近", Move.PUSH_IN),
        ("the camera pulls back to reveal the city", Move.PULL_OUT),
        ("Pan to the left across the valley", Move.PAN_LEFT),
        ("镜头右摇", Move.PAN_RIGHT),
        ("tilt up to the sky", Move.TILT_UP),
        ("俯拍街道", Move.TILT_DOWN),
        ("clouds drifting", Move.DRIFT),
        ("环绕拍摄", Move.DRIFT),
        ("固定镜头，人物说话", Move.STATIC),
        ("a still lake at dawn", Move.PUSH_IN),
        ("zoom out, then pan left", Move.PULL_OUT),
    ],
)
def test_detect_move(prompt: str, move: Move) -> None:
    assert detect_move(prompt) is move


@pytest.mark.parametrize("prompt", ["", "zoom out", "pan left", "tilt down", "drift", "static"])
@pytest.mark.parametrize("shot_type", ["single", "multi"])
def test_plans_are_smooth_and_stay_in_the_image(prompt: str, shot_type: str) -> None:
    plan = plan_motion(prompt, 11, shot_type, (1000, 750), (816, 608), 150)
    assert plan.num_frames == 150
    assert plan.rect(0) == (500.0, 375.0, 1000.0, 750.0)
    assert plan == plan_motion(prompt, 11, shot_type, (1000, 750), (816, 608), 150)
    cut_set = set(plan.cuts)
    for i, r in enumerate(plan.rects):
        assert r.w / r.h == pytest.approx(1000 / 750)
        if plan.overflows == (0.0, 0.0):
            x0, y0, x1, y1 = r.box
            assert x0 >= -1e-6 and y0 >= -1e-6 and x1 <= 1000 + 1e-6 and y1 <= 750 + 1e-6
        if i and i not in cut_set:
            prev = plan.rect(i - 1)
            assert abs(r.cx - prev.cx) < 6 and abs(r.w - prev.w) < 8  # no jumps within a shot
    assert (2 <= len(plan.cuts) <= 3) if shot_type == "multi" else not plan.cuts
    assert plan.overflows != (0.0, 0.0) if prompt == "zoom out" else plan.overflows == (0.0, 0.0)


def test_seed_varies_the_move_slightly() -> None:
    ends = {
        plan_motion("", seed, "single", (1920, 1080), (1280, 720), 60).rect(59) for seed in range(5)
    }
    assert len(ends) == 5
    assert all(1.15 < 1920 / r.w < 1.3 for r in ends)


def test_ambience_is_deterministic_soft_and_not_silent() -> None:
    a = synth_ambience(15, 42)
    assert a.shape == (2, 15 * 48_000) and a.dtype == np.float32
    assert np.array_equal(a, synth_ambience(15, 42))
    assert not np.array_equal(a, synth_ambience(15, 43))
    assert 0.3 < float(np.abs(a).max()) < 0.9
    assert float(np.sqrt(np.mean(a[:, 48_000 * 5 : 48_000 * 10] ** 2))) > 0.05
    assert float(np.abs(a[:, :10]).max()) < 0.01  # fades in


def test_load_audio_resamples_to_stereo_and_fits_the_duration(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "tone.wav", 1.0, rate=22_050)
    out = load_audio(wav, 1.5)
    assert out.shape == (2, 72_000) and out.dtype == np.float32
    assert float(np.abs(out[:, 1000:40_000]).max()) > 0.2
    assert float(np.abs(out[:, 50_000:]).max()) == 0.0
    assert load_audio(wav, 0.25).shape == (2, 12_000)


def glyph_problems(font: Font, text: str) -> list[str]:
    """What keeps ``font`` from drawing ``text`` legibly, by an oracle of its own: every
    character must put ink down, and different characters must draw different bitmaps (a
    font without a character draws the same "missing" box, or nothing, for all of them)."""
    drawn: dict[bytes, str] = {}
    problems = []
    for ch in dict.fromkeys(text.replace(" ", "")):
        left, top, right, bottom = (int(v) for v in font.getbbox(ch))
        img = Image.new("L", (right - left + 4, bottom - top + 4))
        ImageDraw.Draw(img).text((2 - left, 2 - top), ch, font=font, fill=255)
        if not img.getbbox():
            problems.append(f"{ch!r} draws nothing")
        bitmap = img.tobytes() + repr(img.size).encode()
        if bitmap in drawn:
            problems.append(f"{ch!r} draws the same as {drawn[bitmap]!r}")
        drawn.setdefault(bitmap, ch)
    return problems


@pytest.mark.parametrize("size", [10, 20, 43])  # the smallest label, 480P, 1080P
def test_watermark_falls_back_when_the_font_lacks_cjk(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(watermark, "CJK_FONTS", ())  # no CJK font: Pillow's default font
    default = ImageFont.load_default(size=size)
    assert glyph_problems(default, "生成")  # the premise: it draws no CJK
    assert not has_glyphs(default, "AI生成")
    font, text = watermark_font(size)
    assert text == "AI Generated"
    assert glyph_problems(font, text) == []


def test_watermark_skips_cjk_fonts_that_are_missing_or_unreadable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.ttc"
    broken.write_bytes(b"not a font at all")
    monkeypatch.setattr(watermark, "CJK_FONTS", (str(tmp_path / "absent.ttc"), str(broken)))
    font, text = watermark_font(20)
    assert text == "AI Generated"
    assert glyph_problems(font, text) == []


def test_the_watermark_label_this_machine_draws_is_legible() -> None:
    """Whatever fonts are installed: the label chosen is one the chosen font can draw."""
    font, text = watermark_font(20)
    assert glyph_problems(font, text) == []
    assert has_glyphs(font, text)


def test_writer_takes_rgb_frames_and_abort_removes_the_file(tmp_path: Path) -> None:
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
    path = tmp_path / "rgb.mp4"
    with VideoWriter(path, 64, 48, 30, background=False) as out:
        for colour in colours * 4:
            out.write(np.full((48, 64, 3), colour, np.uint8))
    decoded = frames_of(path)
    assert len(decoded) == 12
    for frame, colour in zip(decoded, colours * 4, strict=True):
        assert np.abs(frame.astype(int) - colour).mean() < 6
    partial = tmp_path / "partial.mp4"
    writer = VideoWriter(partial, 64, 48, 30, audio=synth_ambience(1, 1))
    writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.abort()
    assert not partial.exists()
    with pytest.raises(ValueError):
        VideoWriter(tmp_path / "odd.mp4", 63, 48, 30)

"""The motion engine's first-to-last-frame videos: real MP4s decoded with PyAV."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from stillmotion.domain import MediaRef
from stillmotion.engines.base import EngineJob
from stillmotion.engines.motion.engine import MotionEngine
from stillmotion.engines.motion.keyframes import (
    Morph,
    dense_flow,
    fit_to_output,
    move_frames,
)
from stillmotion.errors import PermanentEngineError
from stillmotion.runtime import Runtime
from stillmotion.testing.frames import displacement
from tests.conftest import poll
from tests.test_motion import SMALL, frames_of, gray, make_job, render, textured_image, write_wav


@pytest.fixture(scope="module")
def engine() -> Iterator[MotionEngine]:
    eng = MotionEngine(processes=2)
    yield eng
    asyncio.run(eng.aclose())


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return textured_image(tmp_path_factory.mktemp("first") / "first.png")


@pytest.fixture(scope="module")
def last(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another picture, of another aspect ratio (4:3 against the output's 16:9)."""
    return textured_image(tmp_path_factory.mktemp("last") / "last.png", (480, 360), seed=11)


def keyframe_job(tmp: Path, first: Path, last: Path, **kw: object) -> EngineJob:
    job = make_job(tmp, first, last_frame=MediaRef(url="http://example.invalid/l.png"), **kw)
    return replace(job, last_frame_path=last)


def fitted(path: Path, size: tuple[int, int] = SMALL) -> np.ndarray:
    return np.asarray(fit_to_output(Image.open(path).convert("RGB"), size)).astype(np.float32)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of the grey (channel mean) pictures."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    a, b = (gray(x) if x.ndim == 3 else x for x in (a, b))
    return float(np.abs(a - b).mean())


# -- end to end -------------------------------------------------------------------------


async def test_starts_on_the_first_frame_and_ends_on_the_last(
    engine: MotionEngine, first: Path, last: Path, tmp_path: Path
) -> None:
    result = await render(engine, keyframe_job(tmp_path, first, last, prompt="zoom in"))
    frames = frames_of(result.video_path)
    assert len(frames) == result.num_frames == 60  # two pieces, joined
    want_first, want_last = fitted(first), fitted(last)
    assert mad(frames[0], want_first) < 3.0
    assert mad(frames[-1], want_last) < 3.0  # cropped to 16:9 like a first frame would be
    assert mad(frames[-1], want_first) > 5 * mad(frames[-1], want_last)  # the control
    whole = Image.open(last).convert("RGB").resize(SMALL, Image.Resampling.LANCZOS)
    assert mad(frames[-1], whole) > 2 * mad(frames[-1], want_last)  # not squeezed


async def test_the_morph_is_gradual_across_the_pieces(
    engine: MotionEngine, first: Path, last: Path, tmp_path: Path
) -> None:
    result = await render(engine, keyframe_job(tmp_path, first, last, prompt="static"))
    frames = [gray(f) for f in frames_of(result.video_path)]
    target = gray(fitted(last))
    moves = move_frames(len(frames))
    to_last = [mad(f, target) for f in frames[moves - 1 :]]
    assert all(b <= a + 0.5 for a, b in zip(to_last, to_last[1:], strict=False))  # approaches
    total = mad(frames[0], target)
    steps = [mad(a, b) for a, b in zip(frames, frames[1:], strict=False)]
    assert max(steps) < total / 5  # no cut anywhere, the seam between the pieces included
    assert max(mad(f, frames[0]) for f in frames[:moves]) < 2.0  # "static": the camera holds


async def test_a_related_last_frame_is_reached_by_moving_not_only_fading(
    engine: MotionEngine, first: Path, tmp_path: Path
) -> None:
    """The last frame is the first one shifted 24 px right: half-way through the morph the
    picture sits about half-way (a cross-fade would show both pictures, unshifted)."""
    still = Image.open(first).convert("RGB")
    moved = still.transform(
        still.size, Image.Transform.AFFINE, (1, 0, -60, 0, 1, 0), Image.Resampling.BICUBIC
    )  # 60 source px = 24 output px at 256 wide
    moved_path = tmp_path / "moved.png"
    moved.save(moved_path)
    job = keyframe_job(tmp_path / "w", first, moved_path, prompt="static", duration=1)
    frames = [gray(f) for f in frames_of((await render(engine, job)).video_path)]
    moves = move_frames(len(frames))
    mid = moves + (len(frames) - moves) // 2 - 1
    inner = (slice(16, -16), slice(40, -40))
    full, _ = displacement(gray(fitted(moved_path))[inner], gray(fitted(first))[inner])
    dx, dy = displacement(frames[mid][inner], frames[0][inner])
    assert 0.25 * full < dx < 0.75 * full and abs(dy) < 1.5
    dx_end, _ = displacement(frames[-1][inner], frames[0][inner])
    assert abs(dx_end - full) < 0.5


async def test_driving_audio_is_muxed_and_the_watermark_kept(
    engine: MotionEngine, first: Path, last: Path, tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "drive.wav", 3.0)
    audio = MediaRef(url="http://example.invalid/a.wav")
    job = keyframe_job(
        tmp_path / "w", first, last, audio_source=audio, audio_path=wav, watermark=True
    )
    result = await render(engine, job)
    assert result.has_audio
    with av.open(str(result.video_path)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
        assert abs(float(c.streams.audio[0].duration * c.streams.audio[0].time_base) - 2.0) < 0.1
    plain = frames_of((await render(engine, keyframe_job(tmp_path / "p", first, last))).video_path)
    marked = frames_of(result.video_path)
    h, w = SMALL[1], SMALL[0]
    for n in (10, 50):  # in the camera move and in the morph
        corner = (slice(int(h * 0.8), h), slice(int(w * 0.55), w))
        mark = mad(marked[n][corner], plain[n][corner])
        assert mark > 3.0
        assert mad(marked[n][: h // 2, : w // 2], plain[n][: h // 2, : w // 2]) < mark / 3


async def test_the_same_request_renders_the_same_bytes(
    engine: MotionEngine, first: Path, last: Path, tmp_path: Path
) -> None:
    a = await render(engine, keyframe_job(tmp_path / "a", first, last, prompt="pan left"))
    b = await render(engine, keyframe_job(tmp_path / "b", first, last, prompt="pan left"))
    assert a.video_path.read_bytes() == b.video_path.read_bytes()


async def test_a_missing_last_frame_file_is_a_permanent_error(
    engine: MotionEngine, first: Path, last: Path, tmp_path: Path
) -> None:
    job = replace(keyframe_job(tmp_path, first, last), last_frame_path=None)
    with pytest.raises(PermanentEngineError, match="last-frame"):
        await render(engine, job)


# -- the parts --------------------------------------------------------------------------


def test_flow_recovers_a_shift_and_unrelated_pictures_cross_fade(first: Path) -> None:
    picture = np.asarray(Image.open(first).convert("L"))
    shifted = np.roll(picture, (5, -9), axis=(0, 1))  # content 9 px left, 5 px down
    flow = dense_flow(picture, shifted)
    inner = flow[60:-60, 100:-100]
    assert abs(float(np.median(inner[..., 0])) + 9) < 0.5
    assert abs(float(np.median(inner[..., 1])) - 5) < 0.5
    other = np.asarray(Image.open(textured_image(Path(first).with_name("o.png"), seed=9)))
    assert not dense_flow(picture, np.asarray(Image.fromarray(other).convert("L"))).any()


def test_morph_is_exact_at_both_ends(first: Path) -> None:
    a = tuple(np.asarray(p) for p in _planes(first, 0))
    b = tuple(np.asarray(p) for p in _planes(first, 7))
    morph = Morph(a, b)  # type: ignore[arg-type]
    assert all(np.array_equal(x, y) for x, y in zip(morph.draw(0.0), a, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(morph.draw(1.0), b, strict=True))


def test_move_frames_leaves_a_morph() -> None:
    assert move_frames(150) == 45 and move_frames(2) == 1 and move_frames(1) == 1


def _planes(path: Path, roll: int) -> tuple[np.ndarray, ...]:
    from stillmotion.media.encode import yuv420p_planes

    rgb = np.roll(np.asarray(Image.open(path).convert("RGB")), roll, axis=1)
    return tuple(np.asarray(p) for p in yuv420p_planes(Image.fromarray(rgb)))


# -- through the API --------------------------------------------------------------------


def _data_uri(path: Path) -> str:
    out = io.BytesIO()
    Image.open(path).convert("RGB").save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


async def test_a_kf2v_submit_renders_to_the_last_frame(
    runtime: Runtime,
    client: httpx.AsyncClient,
    auth: dict[str, str],
    first: Path,
    last: Path,
    tmp_path: Path,
) -> None:
    await runtime.start_worker()
    body = {
        "model": "wan2.2-kf2v-flash",
        "input": {
            "prompt": "the camera pushes in",
            "first_frame_url": _data_uri(first),
            "last_frame_url": _data_uri(last),
        },
        "parameters": {"resolution": "480P"},
    }
    resp = await client.post("/task/bailian/image2video", json=body, headers=auth)
    assert resp.status_code == 200, resp.text
    task = await poll(client, resp.json()["output"]["task_id"], auth, timeout=120)
    assert task["output"]["task_status"] == "SUCCEEDED", task
    video = await client.get(task["output"]["video_url"])
    path = tmp_path / "kf2v.mp4"
    path.write_bytes(video.content)
    frames = frames_of(path)
    assert len(frames) == 150
    size = (frames[0].shape[1], frames[0].shape[0])
    assert mad(frames[-1], fitted(last, size)) < 4.0
    assert mad(frames[0], fitted(first, size)) < 4.0

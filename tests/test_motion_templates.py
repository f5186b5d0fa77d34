"""The motion engine's effect templates: each rendered, decoded and its motion measured."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from stillmotion.catalog import MODELS
from stillmotion.engines.motion.engine import MotionEngine
from stillmotion.engines.motion.keyframes import fit_to_output
from stillmotion.engines.motion.plan import ease
from stillmotion.engines.motion.templates import (
    DESCRIPTIONS,
    EFFECTS,
    TEMPLATES,
    backdrop,
    focus_point,
    inflate_amount,
    make_stage,
    poke_depth,
    poke_radius,
    squish_amount,
)
from stillmotion.engines.registry import check_request
from stillmotion.errors import InvalidParameter
from stillmotion.runtime import Runtime
from tests.conftest import poll
from tests.test_motion import SMALL, frames_of, gray, make_job, render, textured_image

W, H = SMALL


@pytest.fixture(scope="module")
def engine() -> Iterator[MotionEngine]:
    eng = MotionEngine(processes=2)
    yield eng
    asyncio.run(eng.aclose())


@pytest.fixture(scope="module")
def textured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return textured_image(tmp_path_factory.mktemp("tex") / "still.png")


def marker_image(path: Path, points: list[tuple[float, float]], radius: float = 0.07) -> Path:
    """A grey, lightly textured 640x360 picture with red discs at ``points`` (fractions of the
    size; ``radius`` a fraction of the height)."""
    w, h = 640, 360
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    grey = 110 + 40 * x / w + 20 * y / h + rng.normal(0, 3, (h, w))
    img = Image.fromarray(np.clip(np.stack([grey] * 3, -1), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = radius * h
    for fx, fy in points:
        draw.ellipse((fx * w - r, fy * h - r, fx * w + r, fy * h + r), fill=(230, 20, 20))
    img.save(path)
    return path


def red_blobs(frame: np.ndarray) -> list[tuple[float, float, float]]:
    """``(x, y, area)`` of each red disc in a decoded frame, largest first."""
    rgb = frame.astype(np.int16)
    red = (rgb[..., 0] - np.maximum(rgb[..., 1], rgb[..., 2])) > 70
    count, _, stats, centroids = cv2.connectedComponentsWithStats(red.astype(np.uint8))
    blobs = [
        (float(centroids[i][0]), float(centroids[i][1]), float(stats[i][cv2.CC_STAT_AREA]))
        for i in range(1, count)
        if stats[i][cv2.CC_STAT_AREA] >= 6
    ]
    return sorted(blobs, key=lambda b: -b[2])


async def template_frames(
    engine: MotionEngine, image: Path, tmp: Path, name: str, duration: int = 1, **kw: object
) -> list[np.ndarray]:
    job = make_job(tmp, image, template=name, audio=False, duration=duration, **kw)
    return frames_of((await render(engine, job)).video_path)


def nondecreasing(values: list[float], slack: float) -> bool:
    return all(b >= a - slack for a, b in zip(values, values[1:], strict=False))


def times(frames: list[np.ndarray]) -> list[float]:
    return [i / (len(frames) - 1) for i in range(len(frames))]


# -- every template ---------------------------------------------------------------------


def test_the_engine_draws_these_templates_and_describes_each() -> None:
    assert MotionEngine.templates == TEMPLATES == set(DESCRIPTIONS) == set(EFFECTS)
    assert TEMPLATES == {
        "rotation", "carousel", "flying", "squish", "inflate", "poke", "dissolve", "melt",
    }  # fmt: skip
    catalog = set().union(*(MODELS[m].templates for m in MODELS if MODELS[m].templates))
    assert TEMPLATES <= catalog


@pytest.mark.parametrize("name", sorted(EFFECTS))
def test_each_effect_starts_on_the_first_frame_and_moves(name: str, textured: Path) -> None:
    picture = np.asarray(fit_to_output(Image.open(textured), SMALL))
    stage = make_stage(picture, focus_point(picture), 1)
    first = EFFECTS[name](stage, 0.0)
    assert np.abs(first.astype(np.int16) - picture).max() <= 1
    later = [EFFECTS[name](stage, t) for t in (0.25, 0.5, 0.75)]
    assert max(np.percentile(np.abs(f.astype(np.float32) - picture), 99) for f in later) > 20


def test_other_templates_are_refused_at_submit_naming_the_supported_ones() -> None:
    job = make_job(Path("/nonexistent"), Path("/nonexistent.png"), template="dance1")
    request = replace(job.request, model="wan2.6-i2v")
    with pytest.raises(InvalidParameter) as caught:
        check_request("motion", request)
    assert "supported templates: " + ", ".join(sorted(TEMPLATES)) in caught.value.message


# -- their motion, measured -------------------------------------------------------------


async def test_rotation_turns_one_full_turn_monotonically_across_pieces(
    engine: MotionEngine, tmp_path: Path
) -> None:
    image = marker_image(tmp_path / "m.png", [(0.5 + 0.3 * 360 / 640, 0.5)])
    frames = await template_frames(engine, image, tmp_path / "w", "rotation", duration=2)
    assert len(frames) == 60  # rendered as two pieces
    angles = []
    for f in frames:
        x, y, _ = red_blobs(f)[0]
        angles.append(math.atan2(-(y - H / 2), x - W / 2))  # counter-clockwise on screen
    turned = np.degrees(np.unwrap(angles))
    assert nondecreasing(list(turned), slack=2.0)
    assert abs(turned[-1] - turned[0] - 360) < 6
    for n, t in enumerate(times(frames)):  # eased in and out
        assert abs(turned[n] - turned[0] - 360 * ease(t)) < 8


async def test_carousel_rides_round_the_ring_bigger_in_front(
    engine: MotionEngine, tmp_path: Path
) -> None:
    image = marker_image(tmp_path / "m.png", [(0.5, 0.5)], radius=0.12)
    frames = await template_frames(engine, image, tmp_path / "w", "carousel")
    blobs = [red_blobs(f)[0] for f in frames]
    ride = [(b, t) for b, t in zip(blobs, times(frames), strict=True) if t >= 0.2]
    angles = np.unwrap([math.atan2(b[0] - W / 2, b[1] - H / 2) for b, _ in ride])
    assert nondecreasing(list(angles), slack=0.1)
    assert abs(angles[-1] - angles[0] - 2 * math.pi) < 0.35
    back = min(ride, key=lambda r: r[0][1])[0]  # highest on screen: the far side
    front = ride[0][0]
    assert front[2] > 2 * back[2]
    assert max(abs(b[0] - W / 2) for b, _ in ride) > 0.25 * W  # goes wide to the sides


async def test_flying_rises_and_shrinks_steadily(engine: MotionEngine, tmp_path: Path) -> None:
    image = marker_image(tmp_path / "m.png", [(0.5, 0.5)], radius=0.12)
    frames = await template_frames(engine, image, tmp_path / "w", "flying")
    blobs = [red_blobs(f)[0] for f in frames]
    heights = [H - b[1] for b in blobs]
    assert nondecreasing(heights, slack=0.3)
    assert heights[-1] - heights[0] > 0.25 * H
    assert blobs[-1][2] < 0.55 * blobs[0][2]  # scale 0.65: area 0.42


async def test_squish_flattens_and_widens_twice_and_springs_back(
    engine: MotionEngine, tmp_path: Path
) -> None:
    points = [(0.5, 0.2), (0.5, 0.8), (0.25, 0.5), (0.75, 0.5)]
    image = marker_image(tmp_path / "m.png", points, radius=0.05)
    frames = await template_frames(engine, image, tmp_path / "w", "squish")
    tall, wide = [], []
    for f in frames:
        blobs = red_blobs(f)[:4]
        by_y, by_x = sorted(b[1] for b in blobs), sorted(b[0] for b in blobs)
        tall.append(by_y[-1] - by_y[0])
        wide.append(by_x[-1] - by_x[0])
    for n, t in enumerate(times(frames)):
        u = squish_amount(t)
        assert tall[n] / tall[0] == pytest.approx(1 - 0.4 * u, abs=0.05)
        assert wide[n] / wide[0] == pytest.approx(1 + 0.3 * u, abs=0.05)
    assert min(tall) < 0.7 * tall[0]


async def test_inflate_swells_from_the_centre(engine: MotionEngine, tmp_path: Path) -> None:
    d = 0.18
    points = [
        (0.5 + d * 360 / 640, 0.5),
        (0.5 - d * 360 / 640, 0.5),
        (0.5, 0.5 - d),
        (0.5, 0.5 + d),
    ]
    image = marker_image(tmp_path / "m.png", points, radius=0.04)
    frames = await template_frames(engine, image, tmp_path / "w", "inflate")
    spread = []
    for f in frames:
        blobs = red_blobs(f)[:4]
        spread.append(float(np.mean([math.hypot(x - W / 2, y - H / 2) for x, y, _ in blobs])))
    assert nondecreasing(spread, slack=0.3)
    assert spread[-1] > 1.15 * spread[0]
    assert inflate_amount(1.0) == 1.0


async def test_poke_dents_the_salient_point_and_springs_back(
    engine: MotionEngine, textured: Path, tmp_path: Path
) -> None:
    frames = await template_frames(engine, textured, tmp_path / "w", "poke")
    picture = np.asarray(fit_to_output(Image.open(textured), SMALL))
    cx, cy = focus_point(picture)
    sigma = poke_radius(make_stage(picture, (cx, cy), 1))
    yy, xx = np.mgrid[0:H, 0:W]
    r = np.hypot(xx - cx, yy - cy)
    near, far = r < sigma, r > 2.5 * sigma
    first = gray(frames[0])
    change = [float(np.abs(gray(f) - first)[near].mean()) for f in frames]
    peak = int(np.argmax(change))
    depths = [poke_depth(t) for t in times(frames)]
    assert depths[peak] > 0.8 and change[peak] > 8
    assert float(np.abs(gray(frames[peak]) - first)[far].mean()) < 2  # only there
    assert change[-1] < change[peak] / 5  # sprung back


async def test_dissolve_leaves_the_backdrop_progressively_left_to_right(
    engine: MotionEngine, textured: Path, tmp_path: Path
) -> None:
    frames = await template_frames(engine, textured, tmp_path / "w", "dissolve")
    picture = np.asarray(fit_to_output(Image.open(textured), SMALL)).astype(np.float32)
    ground = backdrop(picture.astype(np.uint8)).astype(np.float32)

    def gone(frame: np.ndarray) -> np.ndarray:
        f = frame.astype(np.float32)
        return np.abs(f - ground).sum(-1) < np.abs(f - picture).sum(-1)

    shares = [float(gone(f).mean()) for f in frames]
    assert shares[0] < 0.02 and shares[-1] > 0.97
    assert nondecreasing(shares, slack=0.01)
    mid = gone(frames[len(frames) // 2])
    assert mid[:, : W // 4].mean() > 0.8 and mid[:, -W // 4 :].mean() < 0.2


async def test_melt_sinks_from_the_top(
    engine: MotionEngine, textured: Path, tmp_path: Path
) -> None:
    frames = await template_frames(engine, textured, tmp_path / "w", "melt")
    picture = np.asarray(fit_to_output(Image.open(textured), SMALL)).astype(np.float32)
    ground = backdrop(picture.astype(np.uint8)).astype(np.float32)
    top = []
    for f in frames:
        top_half = f[: H // 2].astype(np.float32)
        gone = np.abs(top_half - ground[: H // 2]).sum(-1) < 30
        top.append(float(gone.mean()))
    assert top[0] < 0.02 and top[-1] > 0.7
    assert nondecreasing(top, slack=0.02)
    assert gray(frames[-1])[-H // 8 :].std() > 5  # the bottom still holds the picture


async def test_the_prompt_plays_no_part(
    engine: MotionEngine, textured: Path, tmp_path: Path
) -> None:
    a = await template_frames(engine, textured, tmp_path / "a", "squish", prompt="zoom in")
    b = await template_frames(engine, textured, tmp_path / "b", "squish", prompt="pan left")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# -- through the API --------------------------------------------------------------------


async def test_a_template_submit_succeeds_with_a_decodable_video(
    runtime: Runtime, client: httpx.AsyncClient, auth: dict[str, str], tmp_path: Path
) -> None:
    from tests.conftest import seed_body

    await runtime.start_worker()
    body = seed_body(duration=2, resolution="720P")
    body["model"] = "wan2.6-i2v"
    body["input"]["template"] = "rotation"
    resp = await client.post("/task/bailian/image2video", json=body, headers=auth)
    assert resp.status_code == 200, resp.text
    task = await poll(client, resp.json()["output"]["task_id"], auth, timeout=120)
    assert task["output"]["task_status"] == "SUCCEEDED", task
    path = tmp_path / "rotation.mp4"
    path.write_bytes((await client.get(task["output"]["video_url"])).content)
    frames = frames_of(path)
    assert len(frames) == 60
    assert np.abs(gray(frames[30]) - gray(frames[0])).mean() > 10  # turned half-way


async def test_an_undrawn_template_is_refused_with_the_supported_ones(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    from tests.conftest import seed_body

    body = seed_body(duration=2)
    body["model"] = "wan2.6-i2v"
    body["input"]["template"] = "dance1"
    resp = await client.post("/task/bailian/image2video", json=body, headers=auth)
    assert resp.status_code == 400, resp.text
    assert "supported templates: carousel, dissolve" in resp.text

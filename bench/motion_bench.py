"""Motion engine vs ffmpeg zoompan: 5 s of 720P push-in from a 1920x1080 still.

    python bench/motion_bench.py

Both render the same eased push-in (the zoom the engine's plan picks for the seed) to
H.264 with the same preset and CRF, yuv420p, no audio; zoompan with 2 x264 threads, the
engine as served with a pool of 2 (two pieces of the video at once, one x264 thread each,
joined without re-encoding) and, for comparison, as one render with 2 x264 frame threads.

Plain zoompan crops whole pixels, so a slow push-in wobbles by a pixel or two from frame to
frame; the usual cure is to enlarge the still first (``scale=...,zoompan=...``). Each
output is therefore also scored on every 5th frame against its ideal frame, a Lanczos
resize of the exact (unrounded) crop its own path asks for at that frame (BT.709 luma for
the engine, BT.601 for zoompan: what ffmpeg converts RGB to by default): luma PSNR, and how
far the frame sits from the ideal one (``stillmotion.testing.frames``). The
target compares the engine with the cheapest zoompan whose mean PSNR comes within
``MATCH_DB`` of the engine's: zoompan doing the same push-in. Plain zoompan's ratio is
printed too.

The runs are interleaved (motion, zoompan, motion, ...) so that a noisy neighbour hits all
alike; each figure is the best of 5, with the median beside it. The engine's pools are
warmed first (its cold start is printed too). For information: the engine with audio and
a watermark. Only prints.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stillmotion.catalog import MODELS  # noqa: E402
from stillmotion.domain import MediaRef, VideoRequest  # noqa: E402
from stillmotion.engines.base import CancelSignal, EngineJob  # noqa: E402
from stillmotion.engines.motion.engine import MotionEngine  # noqa: E402
from stillmotion.engines.motion.plan import MotionPlan, plan_motion  # noqa: E402
from stillmotion.media.encode import DEFAULT_CRF, DEFAULT_PRESET, yuv420p_planes  # noqa: E402
from stillmotion.testing.frames import (  # noqa: E402
    Box,
    displacement,
    ideal_frame,
    luma_frames,
    psnr,
)

SOURCE = (1920, 1080)
WIDTH, HEIGHT, FPS, SECONDS = 1280, 720, 30, 5
FRAMES = FPS * SECONDS
SEED = 7
PROMPT = "zoom in"
TARGET_S = 5.0
RUNS = 5
SUPERSAMPLE = (1, 2, 3, 4)  # zoompan variants: the still enlarged this many times first
QUALITY_STEP = 5  # every 5th frame is scored
MATCH_DB = 0.5  # "the same push-in": mean PSNR at most this far below the engine's
#: BT.601 limited-range luma, as ffmpeg's default RGB -> yuv420p conversion makes it.
BT601_LUMA = (0.299 * 219 / 255, 0.587 * 219 / 255, 0.114 * 219 / 255, 16.0)


def make_image(path: Path) -> None:
    """A 1920x1080 picture with gradients, shapes, edges and grain."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:1080, 0:1920].astype(np.float32)
    sky = np.stack([90 + 0.05 * y, 140 + 0.04 * y, 220 - 0.05 * y], axis=-1)
    img = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(60):
        cx, cy, r = rng.uniform(0, 1920), rng.uniform(300, 1080), rng.uniform(20, 160)
        color = tuple(int(c) for c in rng.integers(30, 230, 3))
        draw.ellipse((cx - r, cy - r * 0.7, cx + r, cy + r * 0.7), fill=color)
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    grain = rng.normal(0, 4, (1080, 1920, 3))
    Image.fromarray(np.clip(np.asarray(img) + grain, 0, 255).astype(np.uint8)).save(path)


def zoompan_cmd(image: Path, out: Path, zoom: float, supersample: int = 1) -> list[str]:
    """ffmpeg zoompan doing the push-in; ``supersample`` > 1 first enlarges the still that
    many times (the usual cure for zoompan's whole-pixel crops), 1 is plain zoompan."""
    z = f"1+{zoom - 1:.5f}*(0.5-0.5*cos(PI*on/{FRAMES - 1}))"
    pre = f"scale={SOURCE[0] * supersample}:-1," if supersample > 1 else ""
    vf = (
        f"{pre}zoompan=z='{z}':x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)'"
        f":d={FRAMES}:s={WIDTH}x{HEIGHT}:fps={FPS},format=yuv420p"
    )
    return [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-y",
        "-loglevel",
        "error",
        "-i",
        str(image),
        "-vf",
        vf,
        "-frames:v",
        str(FRAMES),
        "-c:v",
        "libx264",
        "-preset",
        DEFAULT_PRESET,
        "-crf",
        str(DEFAULT_CRF),
        "-threads",
        "2",
        "-pix_fmt",
        "yuv420p",
        "-movflags",
        "+faststart",
        str(out),
    ]


def zoompan_box(index: int, zoom: float) -> Box:
    """The crop zoompan's expressions ask for at frame ``index``, unrounded."""
    z = 1 + (zoom - 1) * (0.5 - 0.5 * math.cos(math.pi * index / (FRAMES - 1)))
    w, h = SOURCE[0] / z, SOURCE[1] / z
    cx, cy = SOURCE[0] / 2, SOURCE[1] / 2
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


class Accuracy(NamedTuple):
    psnr: float  # mean luma PSNR against the ideal frames, dB
    worst: float  # the lowest frame's
    off: float  # mean distance from the ideal frame's position, output pixels
    off_max: float


def accuracy(video: Path, luma: Image.Image, box: Callable[[int], Box]) -> Accuracy:
    """How closely every ``QUALITY_STEP``-th frame of ``video`` matches its ideal frame: a
    Lanczos resize of the exact, unrounded crop ``box(i)`` of ``luma``."""
    psnrs, offs = [], []
    for n, got in enumerate(luma_frames(str(video), QUALITY_STEP)):
        want = ideal_frame(luma, box(n * QUALITY_STEP), (WIDTH, HEIGHT))
        psnrs.append(psnr(got, want))
        offs.append(math.hypot(*displacement(got, want)))
    return Accuracy(statistics.fmean(psnrs), min(psnrs), statistics.fmean(offs), max(offs))


def request(*, audio: bool, watermark: bool) -> VideoRequest:
    return VideoRequest(
        model="wan2.6-i2v-flash",
        prompt=PROMPT,
        negative_prompt="",
        image=MediaRef(url="bench"),
        audio_source=None,
        resolution="720P",
        duration=SECONDS,
        audio=audio,
        shot_type="single",
        seed=SEED,
        prompt_extend=False,
        watermark=watermark,
    )


async def _noop(fraction: float) -> None:
    return None


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        image = root / "still.png"
        make_image(image)
        plan = plan_motion(PROMPT, SEED, "single", SOURCE, (WIDTH, HEIGHT), FRAMES)
        zoom = plan.rect(0).w / plan.rect(FRAMES - 1).w
        # The engine as served (a pool of 2: the video renders as 2 pieces at once, joined
        # without re-encoding) and, for comparison, one render with 2 x264 frame threads.
        engines = {"motion": MotionEngine(processes=2), "single": MotionEngine(processes=1)}
        outputs: dict[str, Path] = {}
        count = 0

        async def motion(extras: bool = False, engine: str = "motion") -> None:
            nonlocal count
            count += 1
            job = EngineJob(
                task_id=f"bench-{count}",
                spec=MODELS["wan2.6-i2v-flash"],
                request=request(audio=extras, watermark=extras),
                width=WIDTH,
                height=HEIGHT,
                fps=FPS,
                num_frames=FRAMES,
                work_dir=root / f"work-{count}",
                image_path=image,
            )
            result = await engines[engine].generate(job, _noop, CancelSignal())
            outputs["full" if extras else engine] = result.video_path

        def zoompan(k: int) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                out = root / f"zoompan-{k}.mp4"
                await asyncio.to_thread(
                    subprocess.run, zoompan_cmd(image, out, zoom, k), check=True
                )
                outputs[f"zoompan-{k}"] = out

            return run

        runs: dict[str, Callable[[], Awaitable[None]]] = {
            "motion": motion,
            "single": lambda: motion(engine="single"),
            "full": lambda: motion(extras=True),
            **{f"zoompan-{k}": zoompan(k) for k in SUPERSAMPLE},
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        try:
            cold = await timed(motion)
            await motion(engine="single")  # warm its pool too
            for _ in range(RUNS):
                for name, run in runs.items():
                    times[name].append(await timed(run))
        finally:
            for engine in engines.values():
                await engine.aclose()
        quality = score(image, plan, zoom, outputs)
        sizes = {name: path.stat().st_size for name, path in outputs.items()}
    report(zoom, cold, times, sizes, quality)


def score(
    image: Path, plan: MotionPlan, zoom: float, outputs: dict[str, Path]
) -> dict[str, Accuracy]:
    """How closely each output follows its own ideal path."""
    rgb = Image.open(image).convert("RGB")
    bt709, bt601 = yuv420p_planes(rgb)[0], rgb.convert("L", BT601_LUMA)
    quality = {}
    for name, path in outputs.items():
        if name.startswith("zoompan"):
            quality[name] = accuracy(path, bt601, lambda i: zoompan_box(i, zoom))
        elif name != "full":  # the watermark is not part of the ideal frame
            quality[name] = accuracy(path, bt709, lambda i: plan.rect(i).box)
    return quality


def same_push_in(quality: dict[str, Accuracy]) -> str:
    """The cheapest zoompan variant within ``MATCH_DB`` of the engine (else the best)."""
    target = quality["motion"].psnr - MATCH_DB
    for k in SUPERSAMPLE:
        if quality[f"zoompan-{k}"].psnr >= target:
            return f"zoompan-{k}"
    return max((f"zoompan-{k}" for k in SUPERSAMPLE), key=lambda name: quality[name].psnr)


def report(
    zoom: float,
    cold: float,
    times: dict[str, list[float]],
    sizes: dict[str, int],
    quality: dict[str, Accuracy],
) -> None:
    best = {k: min(v) for k, v in times.items()}
    mid = {k: statistics.median(v) for k, v in times.items()}

    def line(label: str, key: str) -> str:
        size = sizes[key] / 1e6
        text = f"{label:<44}{best[key]:6.2f} s  (median {mid[key]:.2f})  {size:5.2f} MB"
        if key in quality:
            q = quality[key]
            text += f"  {q.psnr:5.2f} dB ({q.worst:5.2f})  {q.off:4.2f} px ({q.off_max:4.2f})"
        return text

    print(f"5 s of 720P ({WIDTH}x{HEIGHT}, {FRAMES} frames), push-in x{zoom:.3f}, ", end="")
    print(f"libx264 {DEFAULT_PRESET} crf {DEFAULT_CRF}, best of {RUNS}; ", end="")
    print("luma PSNR against the ideal frames, mean (worst); off the ideal path, mean (max)")
    print(line("motion engine (2 pieces at once, warm pool)", "motion"))
    print(line("motion engine, one render (2 x264 threads)", "single"))
    print(line("motion engine, audio + watermark", "full"))
    print(f"{'motion engine, cold (spawns its pool)':<44}{cold:6.2f} s")
    for k in SUPERSAMPLE:
        label = (
            "ffmpeg zoompan (whole-pixel crops)" if k == 1 else f"ffmpeg zoompan, still x{k} first"
        )
        print(line(label, f"zoompan-{k}"))
    same = same_push_in(quality)
    print(f"same push-in: {same} (cheapest zoompan within {MATCH_DB} dB of the engine's PSNR)")
    for label, key in (("same push-in", same), ("plain zoompan", "zoompan-1")):
        ratios = best[key] / best["motion"], mid[key] / mid["motion"]
        print(f"{'ratio ' + label + ' / motion, best (median)':<44}", end="")
        print("{:6.2f}x ({:.2f}x)".format(*ratios))
    verdict = "PASS" if best["motion"] < best[same] else "FAIL"
    print(f"faster than zoompan doing the same push-in: {verdict}")
    print(f"under {TARGET_S:.0f} s:                               ", end="")
    print("PASS" if best["motion"] < TARGET_S else "FAIL")


if __name__ == "__main__":
    asyncio.run(main())

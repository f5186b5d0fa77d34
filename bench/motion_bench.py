"""Motion engine vs ffmpeg zoompan: 5 s of 720P push-in from a 1920x1080 still.

    python bench/motion_bench.py

Both render the same eased push-in (the zoom the engine's plan picks for the seed) to
H.264 with the same preset and CRF, yuv420p, no audio; zoompan with 2 x264 threads, the
engine as served with a pool of 2 (two pieces of the video at once, one x264 thread each,
joined without re-encoding) and, for comparison, as one render with 2 x264 frame threads.
The runs are interleaved (motion, zoompan, motion, ...) so that a noisy neighbour hits all
alike; each figure is the best of 5, with the median beside it. The engine's pools are
warmed first (its cold start is printed too). For information: the engine with audio and
a watermark. The targets (PASS/FAIL) are judged on the plain engine. Only prints.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stillmotion.catalog import MODELS  # noqa: E402
from stillmotion.domain import MediaRef, VideoRequest  # noqa: E402
from stillmotion.engines.base import CancelSignal, EngineJob  # noqa: E402
from stillmotion.engines.motion import MotionEngine  # noqa: E402
from stillmotion.engines.motion_plan import plan_motion  # noqa: E402
from stillmotion.media.encode import DEFAULT_CRF, DEFAULT_PRESET  # noqa: E402

WIDTH, HEIGHT, FPS, SECONDS = 1280, 720, 30, 5
FRAMES = FPS * SECONDS
SEED = 7
PROMPT = "zoom in"
TARGET_S = 5.0
RUNS = 5


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


def zoompan_cmd(image: Path, out: Path, zoom: float) -> list[str]:
    z = f"1+{zoom - 1:.5f}*(0.5-0.5*cos(PI*on/{FRAMES - 1}))"
    vf = (
        f"zoompan=z='{z}':x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)'"
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
        plan = plan_motion(PROMPT, SEED, "single", (1920, 1080), (WIDTH, HEIGHT), FRAMES)
        zoom = plan.rect(0).w / plan.rect(FRAMES - 1).w
        # The engine as served (a pool of 2: the video renders as 2 pieces at once, joined
        # without re-encoding) and, for comparison, one render with 2 x264 frame threads.
        engines = {"motion": MotionEngine(processes=2), "single": MotionEngine(processes=1)}
        count = 0
        sizes: dict[str, int] = {}

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
            sizes["full" if extras else engine] = result.video_path.stat().st_size

        async def zoompan() -> None:
            cmd = zoompan_cmd(image, root / "zoompan.mp4", zoom)
            await asyncio.to_thread(subprocess.run, cmd, check=True)
            sizes["zoompan"] = (root / "zoompan.mp4").stat().st_size

        runs: dict[str, Callable[[], Awaitable[None]]] = {
            "motion": motion,
            "single": lambda: motion(engine="single"),
            "zoompan": zoompan,
            "full": lambda: motion(extras=True),
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
    report(zoom, cold, times, sizes)


def report(zoom: float, cold: float, times: dict[str, list[float]], sizes: dict[str, int]) -> None:
    best = {k: min(v) for k, v in times.items()}
    mid = {k: statistics.median(v) for k, v in times.items()}

    def line(label: str, key: str) -> str:
        size = sizes[key] / 1e6
        return f"{label:<44}{best[key]:6.2f} s  (median {mid[key]:.2f})  {size:5.2f} MB"

    print(f"5 s of 720P ({WIDTH}x{HEIGHT}, {FRAMES} frames), push-in x{zoom:.3f}, ", end="")
    print(f"libx264 {DEFAULT_PRESET} crf {DEFAULT_CRF}, best of {RUNS}")
    print(line("motion engine (2 pieces at once, warm pool)", "motion"))
    print(line("motion engine, one render (2 x264 threads)", "single"))
    print(line("motion engine, audio + watermark", "full"))
    print(f"{'motion engine, cold (spawns its pool)':<44}{cold:6.2f} s")
    print(line("ffmpeg zoompan", "zoompan"))
    ratio = best["zoompan"] / best["motion"]
    print(f"{'ratio zoompan / motion (best of each)':<44}{ratio:6.2f}x")
    print(f"{'ratio zoompan / motion (medians)':<44}{mid['zoompan'] / mid['motion']:6.2f}x")
    print(f"faster than zoompan: {'PASS' if best['motion'] < best['zoompan'] else 'FAIL'}")
    print(f"under {TARGET_S:.0f} s:           {'PASS' if best['motion'] < TARGET_S else 'FAIL'}")


if __name__ == "__main__":
    asyncio.run(main())

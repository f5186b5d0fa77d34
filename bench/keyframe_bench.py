"""First-to-last-frame vs first-frame renders of the motion engine, in the same run.

    python bench/keyframe_bench.py [--templates]

5 s of 720P (1280x720, 150 frames) from a 1920x1080 still, the engine as served (a pool of
2: the video renders as 2 pieces at once, joined without re-encoding), no audio: the plain
first-frame render (a push-in) against the same request with a last frame (a related
picture: the scene shifted, zoomed and with some shapes moved), which adds the flow between
the camera's last frame and the given one (in each piece that draws the morph) and two
remaps and a blend per plane for every morph frame. The runs are interleaved (plain, last
frame, plain, ...) so a noisy neighbour hits both alike; each figure is the best of
``RUNS``, with the median beside it; the target is a ratio of at most ``TARGET``.

With ``--templates`` it also times each effect template at the same size, for information.
Only prints.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stillmotion.catalog import MODELS  # noqa: E402
from stillmotion.domain import MediaRef, VideoRequest  # noqa: E402
from stillmotion.engines.base import CancelSignal, EngineJob  # noqa: E402
from stillmotion.engines.motion.engine import MotionEngine  # noqa: E402
from stillmotion.engines.motion.templates import TEMPLATES  # noqa: E402

SOURCE = (1920, 1080)
WIDTH, HEIGHT, FPS, SECONDS = 1280, 720, 30, 5
RUNS = 5
TARGET = 1.5


def make_images(first: Path, last: Path) -> None:
    """A 1920x1080 scene with gradients, shapes and grain, and the same scene a moment
    later: shifted and zoomed a little, a third of the shapes moved."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:1080, 0:1920].astype(np.float32)
    sky = np.clip(np.stack([90 + 0.05 * y, 140 + 0.04 * y, 220 - 0.05 * y], axis=-1), 0, 255)
    shapes = [
        (rng.uniform(0, 1920), rng.uniform(300, 1080), rng.uniform(20, 160),
         tuple(int(c) for c in rng.integers(30, 230, 3)))
        for _ in range(60)
    ]  # fmt: skip
    offsets = rng.uniform(-1, 1, (len(shapes), 2)) * (80, 40)
    moved = [
        (cx + dx, cy + dy, r, c) if i % 3 == 0 else (cx, cy, r, c)
        for i, ((cx, cy, r, c), (dx, dy)) in enumerate(zip(shapes, offsets, strict=True))
    ]
    for path, scene, shift in ((first, shapes, 0.0), (last, moved, 1.0)):
        img = Image.fromarray(sky.astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for cx, cy, r, color in scene:
            draw.ellipse((cx - r, cy - r * 0.7, cx + r, cy + r * 0.7), fill=color)
        img = img.filter(ImageFilter.GaussianBlur(1.2))
        if shift:  # the camera moved a little between the two
            zoom = (0.94, 0, 90, 0, 0.94, 40)
            img = img.transform(img.size, Image.Transform.AFFINE, zoom, Image.Resampling.BICUBIC)
        grain = rng.normal(0, 4, (1080, 1920, 3))
        Image.fromarray(np.clip(np.asarray(img) + grain, 0, 255).astype(np.uint8)).save(path)


def job(root: Path, n: int, image: Path, last: Path | None, template: str | None) -> EngineJob:
    request = VideoRequest(
        model="wan2.6-i2v-flash",
        prompt="zoom in",
        negative_prompt="",
        image=MediaRef(url="bench"),
        audio_source=None,
        resolution="720P",
        duration=SECONDS,
        audio=False,
        shot_type="single",
        seed=7,
        prompt_extend=False,
        watermark=False,
        template=template,
    )
    if last is not None:
        request = replace(request, last_frame=MediaRef(url="bench-last"))
    return EngineJob(
        task_id=f"bench-{n}",
        spec=MODELS["wan2.6-i2v-flash"],
        request=request,
        width=WIDTH,
        height=HEIGHT,
        fps=FPS,
        num_frames=FPS * SECONDS,
        work_dir=root / f"work-{n}",
        image_path=image,
        last_frame_path=last,
    )


async def _noop(fraction: float) -> None:
    return None


async def main(templates: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        first, last = root / "first.png", root / "last.png"
        make_images(first, last)
        engine = MotionEngine(processes=2)
        count = 0
        used: tuple[list[float], list[float]] = ([], [])  # CPU seconds: plain, last frame

        async def timed(last_frame: Path | None, template: str | None = None) -> float:
            nonlocal count
            count += 1
            start, cpu = time.perf_counter(), pool_cpu(engine)
            await engine.generate(
                job(root, count, first, last_frame, template), _noop, CancelSignal()
            )
            used[last_frame is not None].append(pool_cpu(engine) - cpu)
            return time.perf_counter() - start

        try:
            await timed(None)  # warm the pool
            await timed(last)
            plain, keyed = [], []
            for spent in used:  # the warm-up runs are not counted
                spent.clear()
            for _ in range(RUNS):
                plain.append(await timed(None))
                keyed.append(await timed(last))
            cpu = (list(used[0]), list(used[1]))
            effects = (
                {name: await timed(None, name) for name in sorted(TEMPLATES)} if templates else {}
            )
        finally:
            await engine.aclose()
    report(plain, keyed, cpu, effects)


def pool_cpu(engine: MotionEngine) -> float:
    """CPU seconds (user + system) the engine's pool processes have used so far (Linux's
    ``/proc``; 0 elsewhere)."""
    pool = engine._pool  # a benchmark may look inside
    ticks = 0
    for pid in list(getattr(pool, "_processes", None) or {}):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def report(
    plain: list[float],
    keyed: list[float],
    cpu: tuple[list[float], list[float]],
    effects: dict[str, float],
) -> None:
    print(f"5 s of 720P ({WIDTH}x{HEIGHT}, {FPS * SECONDS} frames), pool of 2, best of {RUNS}:")
    rows = (("first frame (push-in)", plain, cpu[0]), ("first to last frame", keyed, cpu[1]))
    for label, times, used in rows:
        print(f"  {label:<28}{min(times):6.2f} s  (median {statistics.median(times):.2f})", end="")
        print(f"  CPU {statistics.median(used):.2f} s")
    ratio, median = min(keyed) / min(plain), statistics.median(keyed) / statistics.median(plain)
    print(f"  {'ratio, best (median)':<28}{ratio:6.2f}x ({median:.2f}x)", end="")
    print(f"  CPU {statistics.median(cpu[1]) / statistics.median(cpu[0]):.2f}x")
    print(f"  at most {TARGET}x: {'PASS' if ratio <= TARGET else 'FAIL'}")
    for name, seconds in effects.items():
        print(f"  template {name:<19}{seconds:6.2f} s  ({seconds / min(plain):.2f}x)")


if __name__ == "__main__":
    asyncio.run(main("--templates" in sys.argv[1:]))

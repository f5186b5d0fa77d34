"""The ``wan`` engine: Wan 2.x image-to-video from local open weights, through diffusers.

Runs Wan 2.1 I2V-14B, Wan 2.2 I2V-A14B or Wan 2.2 TI2V-5B from a local directory of
diffusers-format weights (never downloads). Creating the engine only checks the set-up
(the ``wan`` extra is installed, the weights directory is complete, which family it is);
torch and the pipeline load on the first task, once per worker process, and stay loaded.

All GPU work runs on one dedicated thread, so the event loop keeps renewing the task's
lease; one generation runs at a time (``max_concurrency = 1``). The engine never runs in the
API process (``api_process = False``): run it with ``stillmotion worker --engine wan``.

Progress is reported per denoising step; a cancel stops the pipeline after the current step.
Wan makes silent video: the audio track follows the ``motion`` engine's rules (the request's
``audio_url``, else a synthesised ambience, or none when ``audio`` is off).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stillmotion.domain import DRIVING_AUDIO, FIRST_FRAME
from stillmotion.engines.base import CancelSignal, EngineJob, EngineResult, ProgressFn
from stillmotion.engines.wan import loader as wan_loader
from stillmotion.engines.wan.config import (
    Family,
    WanOptions,
    check_extra,
    flow_shift_for,
    resolve_family,
    wan_num_frames,
    wan_size,
)
from stillmotion.engines.wan.loader import CallArgs, Interrupted
from stillmotion.errors import EngineCanceled, PermanentEngineError
from stillmotion.media.audio import load_audio, synth_ambience
from stillmotion.media.encode import VideoWriter, yuv420p_planes
from stillmotion.media.probe import load_image_rgb
from stillmotion.media.watermark import Watermark

log = logging.getLogger("stillmotion.engines.wan")

VIDEO_NAME = "video.mp4"
#: The official Wan negative prompt (Wan 2.1/2.2 ``sample_neg_prompt``), used when the
#: request has none.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
    "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
#: Progress milestones: loading and encoding the inputs, then the steps, then decode + mux.
STEPS_START, STEPS_END = 0.05, 0.9


@dataclass(frozen=True)
class WanPlan:
    """What one task becomes: the pipeline call plus how to write the video."""

    call: CallArgs
    fps: int
    audio: bool
    audio_path: Path | None
    watermark: bool
    out_path: Path


def plan_job(job: EngineJob, family: Family, options: WanOptions, image: Image.Image) -> WanPlan:
    """Map a request to a Wan call: size, 4k+1 frames at the family's fps, sampling."""
    width, height = wan_size(job.width, job.height, family.multiple, options.max_area)
    req = job.request
    guidance_2 = options.guidance_2 if options.guidance_2 is not None else family.guidance_2
    call = CallArgs(
        image=image.resize((width, height), Image.Resampling.LANCZOS),
        prompt=req.prompt,
        negative_prompt=req.negative_prompt or DEFAULT_NEGATIVE_PROMPT,
        width=width,
        height=height,
        num_frames=wan_num_frames(req.duration, family.fps),
        steps=options.steps or family.steps,
        guidance=options.guidance if options.guidance is not None else family.guidance,
        guidance_2=guidance_2 if family.guidance_2 is not None else None,
        flow_shift=flow_shift_for(family, width, height, options.flow_shift),
        seed=req.seed,
    )
    return WanPlan(
        call=call,
        fps=family.fps,
        audio=req.audio,
        audio_path=job.audio_path,
        watermark=req.watermark,
        out_path=job.work_dir / VIDEO_NAME,
    )


class StepTracker:
    """Shared between the event loop and the GPU thread: progress out, cancel in."""

    def __init__(self, steps: int) -> None:
        self.steps = max(1, steps)
        self.fraction = 0.0
        self.cancel = threading.Event()

    def check(self) -> None:
        if self.cancel.is_set():
            raise Interrupted

    def on_step(self, done: int) -> None:
        self.fraction = STEPS_START + (STEPS_END - STEPS_START) * min(done, self.steps) / self.steps
        self.check()


def write_video(plan: WanPlan, frames: np.ndarray) -> bool:
    """Encode ``frames`` (and the audio track, if any) to ``plan.out_path``; has audio?"""
    count, height, width, _ = frames.shape
    duration = count / plan.fps
    audio = None
    if plan.audio:
        if plan.audio_path is not None:
            audio = load_audio(plan.audio_path, duration)
        else:
            audio = synth_ambience(duration, plan.call.seed)
    mark = Watermark(width, height) if plan.watermark else None
    with VideoWriter(plan.out_path, width, height, plan.fps, audio=audio) as out:
        for frame in frames:
            if mark is None:
                out.write(frame)
                continue
            planes = yuv420p_planes(Image.fromarray(frame, "RGB"))
            mark.apply(*planes)
            out.write_planes(*(np.asarray(p) for p in planes))
    return audio is not None


class WanEngine:
    """Wan 2.x image-to-video on one GPU (or the CPU), loaded once per worker process."""

    name = "wan"
    #: what submits routed here may carry (engines/registry.py: check_request)
    media_kinds = frozenset({FIRST_FRAME, DRIVING_AUDIO})
    templates: frozenset[str] = frozenset()
    needs_media = True
    max_concurrency = 1
    #: never run inside `stillmotion serve`: the GPU work belongs to a dedicated worker
    api_process = False

    def __init__(self, poll_interval: float = 0.1, **options: Any) -> None:
        check_extra()
        self.options = WanOptions(**options)
        self.options.validate()
        self.family = resolve_family(self.options.weights_dir, self.options.family)
        self.poll_interval = poll_interval
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="wan")
        self._loaded: wan_loader.Loaded | None = None
        self._trackers: set[StepTracker] = set()

    def _ensure_loaded(self) -> wan_loader.Loaded:
        if self._loaded is None:
            try:
                self._loaded = wan_loader.load_pipeline(self.options, self.family)
            except Exception as exc:
                log.exception("could not load the Wan pipeline")
                raise PermanentEngineError(
                    f"could not load the {self.family.label} weights from "
                    f"{self.options.weights_dir}: {type(exc).__name__}: {exc}"
                ) from exc
        return self._loaded

    def _render(self, job: EngineJob, tracker: StepTracker) -> tuple[WanPlan, int, bool]:
        """On the GPU thread: load (first time), plan, denoise, decode, encode."""
        tracker.check()
        loaded = self._ensure_loaded()
        tracker.check()
        assert job.image_path is not None
        image = load_image_rgb(job.image_path)
        plan = plan_job(job, self.family, self.options, image)
        tracker.steps = plan.call.steps
        tracker.fraction = STEPS_START
        try:
            frames = wan_loader.generate_frames(loaded, plan.call, tracker.on_step)
        except Interrupted:
            raise
        except Exception as exc:
            log.exception("Wan generation failed")
            raise PermanentEngineError(
                f"wan generation failed: {type(exc).__name__}: {exc}"
            ) from exc
        tracker.check()
        has_audio = write_video(plan, frames)
        return plan, int(frames.shape[0]), has_audio

    async def generate(
        self, job: EngineJob, progress: ProgressFn, cancel: CancelSignal
    ) -> EngineResult:
        if job.image_path is None:
            raise PermanentEngineError("the wan engine needs the first-frame image")
        if cancel.is_set:
            raise EngineCanceled("canceled before generation started")
        job.work_dir.mkdir(parents=True, exist_ok=True)
        tracker = StepTracker(self.options.steps or self.family.steps)
        self._trackers.add(tracker)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._thread, self._render, job, tracker)
        try:
            await self._supervise(future, tracker, progress, cancel)
            plan, frames, has_audio = await future
        except Interrupted:
            raise EngineCanceled("canceled while generating") from None
        except asyncio.CancelledError:
            tracker.cancel.set()  # the thread stops after its current step
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise
        finally:
            self._trackers.discard(tracker)
        await progress(1.0)
        return EngineResult(
            video_path=plan.out_path,
            width=plan.call.width,
            height=plan.call.height,
            fps=float(plan.fps),
            num_frames=frames,
            has_audio=has_audio,
        )

    async def _supervise(
        self,
        future: asyncio.Future[Any],
        tracker: StepTracker,
        progress: ProgressFn,
        cancel: CancelSignal,
    ) -> None:
        """Relay progress and the cancel signal until the thread is done."""
        last = -1.0
        while not future.done():
            if cancel.is_set:
                tracker.cancel.set()
            await asyncio.wait({future}, timeout=self.poll_interval)
            if tracker.fraction != last:
                last = tracker.fraction
                await progress(last)

    async def aclose(self) -> None:
        for tracker in self._trackers:
            tracker.cancel.set()
        self._thread.shutdown(wait=False, cancel_futures=True)
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            await asyncio.to_thread(wan_loader.release, loaded)

"""The built-in ``motion`` engine: animate the still first frame with a camera move.

No model weights. The camera move comes from the prompt and seed (:mod:`plan`), the
frames are drawn as yuv420p planes (:mod:`frames`) and go to libx264 on a thread
while the next one is drawn; audio is the request's track (``audio_url`` or driving audio,
cut or padded), a synthetic ambience, or none (:mod:`render`). A request with a last frame
ends on it: the camera move, then a flow-guided morph (:mod:`keyframes`); one with an effect
template draws that effect over the first frame instead, the prompt unused
(:mod:`templates`, which lists the ones drawn: :data:`MotionEngine.templates`).

All of that CPU work runs in a process pool (spawn), never on the event loop. A video of
at least two seconds is split into as many consecutive pieces as the pool has processes;
the pieces render side by side and are then joined without re-encoding. The engine polls
the children's progress files, and creates a ``cancel`` file to stop them.

Every pool future is awaited to its end, or handed to :func:`_settle`: a render stopped by
cancel, by an error in another piece or by the worker's shutdown is told to stop and
waited for (up to ``CANCEL_GRACE_S``) before the engine returns, so the runner never
removes a work directory under a render that still writes in it, and no future's error
goes unretrieved. The render processes ignore SIGINT and SIGTERM: the engine stops them
(cancel file, pool shutdown), and a Ctrl-C or a service manager's SIGTERM to the whole
group no longer kills them mid-piece.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import signal
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from stillmotion.domain import DRIVING_AUDIO, FIRST_FRAME, LAST_FRAME
from stillmotion.engines.base import CancelSignal, EngineJob, EngineResult, ProgressFn
from stillmotion.engines.motion.render import (
    CANCEL_NAME,
    PROGRESS_NAME,
    VIDEO_NAME,
    RenderArgs,
    RenderFailed,
    RenderOutcome,
    init_render_process,
    join_video,
    render_video,
    split_render,
)
from stillmotion.engines.motion.templates import TEMPLATES
from stillmotion.errors import (
    EngineCanceled,
    EngineError,
    PermanentEngineError,
    RetryableEngineError,
)

CANCEL_GRACE_S = 5.0  # how long the engine waits for a canceled render to stop


class MotionEngine:
    """Camera-motion video from a still, rendered in ``processes`` spawned processes.

    A video is split into up to ``processes`` pieces rendered at once (see
    ``motion_render.split_render``), which share ``threads`` x264 threads. The output is
    byte-identical for the same image, prompt, seed and ``processes`` (which sets where the
    pieces start): the render processes fix the contents of fresh heap memory
    (``motion_render.init_render_process``), which libx264 partly reads uninitialised.
    """

    name = "motion"
    #: what submits routed here may carry (engines/registry.py: check_request)
    media_kinds = frozenset({FIRST_FRAME, LAST_FRAME, DRIVING_AUDIO})
    #: the effect templates it draws (templates.py); the submit check refuses the others
    templates: frozenset[str] = TEMPLATES
    needs_media = True

    def __init__(
        self,
        processes: int = 2,
        *,
        threads: int = 2,
        poll_interval: float = 0.25,
    ) -> None:
        self.processes = max(1, processes)
        self.threads = threads
        self.poll_interval = poll_interval
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._active: set[Path] = set()

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_child,
            )
        return self._pool

    def _drop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def generate(
        self, job: EngineJob, progress: ProgressFn, cancel: CancelSignal
    ) -> EngineResult:
        if job.image_path is None:
            raise PermanentEngineError("the motion engine needs the first-frame image")
        if cancel.is_set:
            raise EngineCanceled("canceled before rendering started")
        work = job.work_dir
        work.mkdir(parents=True, exist_ok=True)
        for name in (PROGRESS_NAME, CANCEL_NAME, VIDEO_NAME):
            (work / name).unlink(missing_ok=True)
        for stale in [*work.glob(f"{PROGRESS_NAME}-*"), *work.glob("segment-*.mp4")]:
            stale.unlink(missing_ok=True)
        args = self._args(job)
        self._active.add(work)
        try:
            outcome, reported = await self._run(args, work, progress, cancel)
        finally:
            self._active.discard(work)
        if outcome.canceled:
            raise EngineCanceled("canceled while rendering")
        if reported < 1.0:
            await progress(1.0)
        return EngineResult(
            video_path=work / VIDEO_NAME,
            width=job.width,
            height=job.height,
            fps=float(job.fps),
            num_frames=outcome.frames,
            has_audio=outcome.has_audio,
        )

    def _args(self, job: EngineJob) -> RenderArgs:
        req = job.request
        if req.template is not None and req.template not in TEMPLATES:
            drawn = ", ".join(sorted(TEMPLATES))
            raise PermanentEngineError(
                f"the motion engine draws no template {req.template!r}; it draws: {drawn}"
            )
        if req.last_frame is not None and job.last_frame_path is None:
            raise PermanentEngineError("the motion engine needs the last-frame image")
        if req.template is not None and req.last_frame is not None:
            raise PermanentEngineError("a template and a last frame cannot be combined")
        return RenderArgs(
            image_path=str(job.image_path),
            audio_path=str(job.audio_path) if job.audio_path else None,
            work_dir=str(job.work_dir),
            prompt=req.prompt,
            seed=req.seed,
            shot_type=req.shot_type,
            audio=req.audio,
            watermark=req.watermark,
            width=job.width,
            height=job.height,
            fps=job.fps,
            num_frames=job.num_frames,
            threads=self.threads,
            template=req.template,
            last_frame_path=str(job.last_frame_path) if job.last_frame_path else None,
        )

    async def _run(
        self, args: RenderArgs, work: Path, progress: ProgressFn, cancel: CancelSignal
    ) -> tuple[RenderOutcome, float]:
        """Render ``args`` in the pool (in pieces, then joined, when it splits); returns the
        outcome and the last progress reported."""
        pieces = split_render(args, self.processes)
        futures: list[asyncio.Future[Any]] = []
        try:
            futures = self._submit([(render_video, (piece,)) for piece in pieces])
            paths = [work / piece.progress_name for piece in pieces]
            reported = await self._supervise(futures, work, paths, progress, cancel)
            outcomes = _results(futures)
            if len(pieces) == 1:
                return outcomes[0], reported
            if any(o.canceled for o in outcomes):
                return RenderOutcome(canceled=True, has_audio=False, frames=0), reported
            futures = self._submit([(join_video, (args, pieces))])
            return await asyncio.shield(futures[0]), reported  # a cancel waits in _settle
        except asyncio.CancelledError:
            await _settle(futures, work)
            raise
        except BrokenProcessPool as exc:
            self._drop_pool()
            raise RetryableEngineError("the motion render process died; it can be retried") from exc
        except RenderFailed as exc:
            await _settle(futures, work)  # stops the other pieces
            message = f"motion render failed: {exc.message}"
            raise PermanentEngineError(message, code=exc.code) from exc
        except EngineError:
            raise
        except Exception as exc:  # e.g. the job could not be handed to the pool
            await _settle(futures, work)
            message = f"motion render failed: {type(exc).__name__}: {exc}"
            raise PermanentEngineError(message) from exc

    def _submit(self, calls: list[tuple[Any, tuple[Any, ...]]]) -> list[asyncio.Future[Any]]:
        """Hand ``calls`` to the pool; a broken or shut-down pool is replaced once. Each
        future's error is marked retrieved when it ends, whoever still awaits it."""
        loop = asyncio.get_running_loop()
        try:
            futures = [loop.run_in_executor(self._executor(), fn, *a) for fn, a in calls]
        except (BrokenProcessPool, RuntimeError):
            self._drop_pool()
            futures = [loop.run_in_executor(self._executor(), fn, *a) for fn, a in calls]
        for future in futures:
            future.add_done_callback(_retrieve)
        return futures

    async def _supervise(
        self,
        futures: Sequence[asyncio.Future[Any]],
        work: Path,
        progress_paths: list[Path],
        progress: ProgressFn,
        cancel: CancelSignal,
    ) -> float:
        """Relay progress (the pieces' mean) until every piece is done or one failed; on
        cancel, tell the children and wait a bit. Returns the last fraction reported.
        """
        last = 0.0
        while not all(f.done() for f in futures):
            if any(f.done() and not f.cancelled() and f.exception() for f in futures):
                return last  # the caller reads the error, and settles the others
            if cancel.is_set:
                if not await _settle(futures, work):  # they stop at their next check
                    raise EngineCanceled("canceled while rendering")
                return last
            await asyncio.wait(
                futures, timeout=self.poll_interval, return_when=asyncio.FIRST_EXCEPTION
            )
            value = sum(_read_progress(p) for p in progress_paths) / len(progress_paths)
            if value > last:
                last = value
                await progress(value)
        return last

    async def aclose(self) -> None:
        for work in list(self._active):
            (work / CANCEL_NAME).touch()
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)


def _read_progress(path: Path) -> float:
    try:
        return min(1.0, max(0.0, float(path.read_text())))
    except (OSError, ValueError):
        return 0.0


def _init_child() -> None:
    """Pool initializer: the engine, not a signal to the process group, stops a render."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    init_render_process()


def _results(futures: Sequence[asyncio.Future[Any]]) -> list[Any]:
    """The pieces' outcomes; raises the error of a piece that failed (others may still run)."""
    for future in futures:
        if future.done() and not future.cancelled() and future.exception() is not None:
            raise future.exception()  # type: ignore[misc]
    return [future.result() for future in futures]


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # marks it retrieved: no "exception was never retrieved" later


async def _settle(futures: Sequence[asyncio.Future[Any]], work: Path) -> bool:
    """Tell the children to stop (the ``cancel`` file) and wait up to ``CANCEL_GRACE_S`` for
    ``futures`` to end, whatever their outcome; whether they all ended."""
    pending = [f for f in futures if not f.done()]
    if not pending:
        return True
    with contextlib.suppress(OSError):
        (work / CANCEL_NAME).touch()
    _, still = await asyncio.wait(pending, timeout=CANCEL_GRACE_S)
    return not still

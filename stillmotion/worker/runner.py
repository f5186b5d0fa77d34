"""Run one claimed task: fetch and check media, call the engine with progress and cancel,
store the video, and finish (fenced) or retry."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stillmotion import catalog
from stillmotion.catalog import ModelSpec
from stillmotion.domain import MediaRef, TaskStatus, VideoRequest
from stillmotion.engines.base import CancelSignal, Engine, EngineJob, EngineResult
from stillmotion.errors import (
    EngineCanceled,
    EngineDeferred,
    LeaseLost,
    PermanentEngineError,
    ServiceError,
)
from stillmotion.logfmt import TASK_ID
from stillmotion.media.fetch import FetchPolicy, fetch_to_file
from stillmotion.media.geometry import frame_count, output_size
from stillmotion.media.probe import probe_audio, probe_image
from stillmotion.metrics import observe_task_finished
from stillmotion.storage.base import Storage
from stillmotion.tasks.service import video_key
from stillmotion.tasks.store import TaskRow, TaskStore

log = logging.getLogger("stillmotion.worker")


@dataclass(frozen=True)
class RunnerConfig:
    work_root: Path
    lease_seconds: float = 30.0
    allow_private_urls: bool = False
    fetch_timeout: float = 30.0
    fetch_max_redirects: int = 5
    retry_base_delay: float = 2.0


class TaskRunner:
    def __init__(
        self,
        store: TaskStore,
        storage: Storage,
        engines: Mapping[str, Engine],
        config: RunnerConfig,
    ):
        self.store = store
        self.storage = storage
        self.engines = engines
        self.config = config

    async def run(self, row: TaskRow) -> None:
        """Run a claimed task; ``row.worker_id`` is this claim's fencing token."""
        TASK_ID.set(row.id)  # this asyncio task's log lines carry it (logfmt.py)
        if row.cancel_requested:
            await self._finish(self.store.finish_canceled(row.id, _claim(row)), row, CANCELED)
            return
        cancel = CancelSignal()
        beat = _Heartbeat(self, row.id, _claim(row), cancel)
        # unique per run: a render orphaned by a stopped worker must not write into it
        work_dir = self.config.work_root / f"{row.id}-{row.attempts}-{uuid.uuid4().hex[:8]}"
        beat_task = asyncio.create_task(beat.loop())
        try:
            await self._run(row, work_dir, beat, cancel)
        except asyncio.CancelledError:
            raise  # shutdown: release_worker() hands the task back
        except Exception:
            log.exception("task %s: unexpected error", row.id)
            retry = self._retry(row, "InternalError", "An internal error occurred.")
            await self._finish(retry, row, _retry_status(row))
        finally:
            beat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat_task
            await asyncio.to_thread(shutil.rmtree, work_dir, True)

    async def _run(
        self, row: TaskRow, work_dir: Path, beat: _Heartbeat, cancel: CancelSignal
    ) -> None:
        engine = self.engines[row.engine]
        request = VideoRequest.from_json(row.request)
        spec = catalog.get_model(row.model)
        if spec is None:
            failed = self._fail(row, "InvalidParameter", f"unknown model {row.model}")
            await self._finish(failed, row, FAILED)
            return
        work_dir.mkdir(parents=True, exist_ok=True)
        try:
            job = await self._prepare(row, spec, request, engine, work_dir)
            result = await engine.generate(job, beat.progress, cancel)
            # a lease that expired meanwhile may be claimed by now: check before storing
            if beat.lost or not await beat.beat():
                raise LeaseLost("lease lost while rendering")
            stored = await self._store_result(row, result)
        except EngineDeferred as exc:
            await self._finish(self.store.release_worker(_claim(row), exc.delay))
        except EngineCanceled:
            await self._finish(self.store.finish_canceled(row.id, _claim(row)), row, CANCELED)
        except LeaseLost:
            log.warning("task %s: lease lost; result dropped", row.id)
        except ServiceError as exc:
            if getattr(exc, "retryable", False):
                await self._finish(self._retry(row, exc.code, exc.message), row, _retry_status(row))
            else:
                await self._finish(self._fail(row, exc.code, exc.message), row, FAILED)
        else:
            done = self.store.finish_success(row.id, _claim(row), stored)
            ok = await self._finish(done, row, SUCCEEDED)
            if not ok:
                log.warning("task %s: finished after losing its lease; result dropped", row.id)

    async def _prepare(
        self, row: TaskRow, spec: ModelSpec, request: VideoRequest, engine: Engine, work_dir: Path
    ) -> EngineJob:
        image_path = audio_path = last_path = None
        width = height = 0
        if engine.needs_media:
            if request.image is None:  # refused at submit for engines that need one
                raise PermanentEngineError(f"engine {engine.name} needs a first frame")
            image_path = await self._media(
                request.image, work_dir / "input-image", "input.img_url", spec.image_max_bytes
            )
            info = await asyncio.to_thread(probe_image, image_path, max_bytes=spec.image_max_bytes)
            width, height = output_size(info.width, info.height, request.resolution)
            if request.audio and request.audio_source is not None:
                audio_path = await self._media(
                    request.audio_source,
                    work_dir / "input-audio",
                    "input.audio_url",
                    catalog.AUDIO_MAX_BYTES,
                )
                await asyncio.to_thread(probe_audio, audio_path)
            if request.last_frame is not None:
                last_path = await self._media(
                    request.last_frame,
                    work_dir / "input-last-frame",
                    "input.last_frame",
                    spec.image_max_bytes,
                )
                await asyncio.to_thread(probe_image, last_path, max_bytes=spec.image_max_bytes)
        return EngineJob(
            task_id=row.id,
            spec=spec,
            request=request,
            width=width,
            height=height,
            fps=spec.fps,
            num_frames=frame_count(request.duration, spec.fps),
            work_dir=work_dir,
            image_path=image_path,
            audio_path=audio_path,
            last_frame_path=last_path,
            state=dict(row.engine_state),
            save_state=functools.partial(self.store.save_state, row.id, _claim(row)),
        )

    async def _media(self, ref: MediaRef, dest: Path, what: str, max_bytes: int) -> Path:
        if ref.storage_key:  # a decoded data: URI: copied into this run's scratch dir
            return await self.storage.fetch_to(ref.storage_key, dest)
        assert ref.url is not None
        policy = FetchPolicy(
            allow_private=self.config.allow_private_urls,
            timeout=self.config.fetch_timeout,
            max_redirects=self.config.fetch_max_redirects,
            max_bytes=max_bytes,
        )
        fetched = await fetch_to_file(ref.url, dest, policy, what=what)
        return fetched.path

    async def _store_result(self, row: TaskRow, result: EngineResult) -> dict[str, Any]:
        if not result.video_path.is_file():
            raise PermanentEngineError("the engine produced no video file")
        key = video_key(row.id, row.attempts)
        size = await self.storage.put_file(key, result.video_path)
        return {
            "video_key": key,
            "bytes": size,
            "width": result.width,
            "height": result.height,
            "fps": result.fps,
            "num_frames": result.num_frames,
            "has_audio": result.has_audio,
            "usage": result.usage,
            "extra_output": result.extra_output,
        }

    def _fail(self, row: TaskRow, code: str, message: str) -> Any:
        return self.store.finish_failure(row.id, _claim(row), code, message)

    def _retry(self, row: TaskRow, code: str, message: str) -> Any:
        delay = self.config.retry_base_delay * (2 ** max(0, row.attempts - 1))
        return self.store.retry_later(row.id, _claim(row), delay, code, message)

    async def _finish(
        self, coro: Any, row: TaskRow | None = None, final: TaskStatus | None = None
    ) -> bool:
        """The final write survives cancellation of the task that makes it. With ``final``
        (the status the write ends the task in), a write that took is counted in metrics."""
        ok = bool(await asyncio.shield(coro))
        if ok and row is not None and final is not None:
            observe_task_finished(
                engine=row.engine,
                status=final.value,
                created_at=row.created_at,
                scheduled_at=row.scheduled_at,
                started_at=row.updated_at,  # the claim's time
                ended_at=self.store.now(),
            )
        return ok


CANCELED, FAILED, SUCCEEDED = TaskStatus.CANCELED, TaskStatus.FAILED, TaskStatus.SUCCEEDED


def _retry_status(row: TaskRow) -> TaskStatus | None:
    """What ``retry_later`` ends the task in: FAILED after its last attempt, else nothing."""
    return FAILED if row.attempts >= row.max_attempts else None


def _claim(row: TaskRow) -> str:
    assert row.worker_id is not None, "a claimed task carries its claim id"
    return row.worker_id


class _Heartbeat:
    """Renews the lease, records progress and notices cancel requests and a lost lease."""

    def __init__(self, runner: TaskRunner, task_id: str, claim: str, cancel: CancelSignal):
        self.runner = runner
        self.task_id = task_id
        self.claim = claim
        self.cancel = cancel
        self.lost = False
        self._progress: float | None = None

    async def progress(self, fraction: float) -> None:
        self._progress = max(0.0, min(1.0, fraction))

    async def loop(self) -> None:
        """Write when progress moved (checked every ``min(lease/3, 2 s)``) and at least every
        ``lease/3`` to renew the lease; a quiet task (a relay waiting upstream) costs one
        write per third of a lease, not one every 2 s."""
        lease = self.runner.config.lease_seconds
        interval = min(lease / 3, 2.0)
        clock = asyncio.get_running_loop().time
        last_write, last_progress = clock(), None
        while True:
            await asyncio.sleep(interval)
            progress = None if self._progress is None else round(self._progress, 2)
            if progress == last_progress and clock() - last_write < lease / 3 - interval / 2:
                continue
            last_write, last_progress = clock(), progress
            if not await self.beat():
                return

    async def beat(self) -> bool:
        """One renewal; False once the lease is lost (a failed write counts as held)."""
        try:
            row = await self.runner.store.heartbeat(
                self.task_id, self.claim, self.runner.config.lease_seconds, self._progress
            )
        except Exception:
            log.exception("task %s: heartbeat failed", self.task_id)
            return True
        if row is None:
            self.lost = True
            self.cancel.set()
            return False
        if row.cancel_requested:
            self.cancel.set()
        return True

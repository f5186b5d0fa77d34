"""Worker: a claim loop with a concurrency limit, lease renewal and graceful shutdown, beside
its housekeeping (registration, heartbeat, reclaim of dead workers' tasks, reaper, sweeper:
``worker/housekeeping.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Mapping
from typing import Any

from stillmotion.engines.base import Engine
from stillmotion.storage.base import Storage
from stillmotion.tasks.store import TaskStore
from stillmotion.worker.housekeeping import Housekeeper, HousekeepingConfig
from stillmotion.worker.runner import RunnerConfig, TaskRunner
from stillmotion.worker.sweeper import worker_dir_name
from stillmotion.worker.webhooks import Render, WebhookConfig, WebhookSender

log = logging.getLogger("stillmotion.worker")


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        store: TaskStore,
        storage: Storage,
        engines: Mapping[str, Engine],
        config: RunnerConfig,
        *,
        concurrency: int = 2,
        poll_interval: float = 0.5,
        worker_id: str | None = None,
        housekeeping: HousekeepingConfig | None = None,
        render: Render | None = None,
        webhooks: WebhookConfig | None = None,
    ):
        """``config.work_root`` is the shared ``work/``; this worker works in its own
        directory under it (removed by the sweeper once the worker is gone). With ``render``
        (the task body renderer) it also delivers the webhook outbox (``worker/webhooks.py``)."""
        self.store = store
        self.engines = dict(engines)
        self.concurrency = max(1, concurrency)
        self.poll_interval = poll_interval
        self.worker_id = worker_id or make_worker_id()
        own = config.work_root / worker_dir_name(self.worker_id)
        self.runner = TaskRunner(
            store, storage, self.engines, dataclasses.replace(config, work_root=own)
        )
        keeping = housekeeping or HousekeepingConfig(work_base=config.work_root)
        self.housekeeper = Housekeeper(
            store, storage, self.worker_id, sorted(self.engines), keeping
        )
        self._housekeeping: asyncio.Task[None] | None = None
        self.webhooks = (
            WebhookSender(store, render, webhooks or WebhookConfig(), self.worker_id)
            if render is not None
            else None
        )
        self._webhooks: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._active: dict[asyncio.Task[None], tuple[str, str]] = {}  # task -> (claim, engine)
        self._claims = 0
        self._loop_task: asyncio.Task[None] | None = None
        self.completed = 0

    def wake(self, *_: Any) -> None:
        self._wake.set()

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.worker_id,
            "engines": sorted(self.engines),
            "concurrency": self.concurrency,
            "active": len(self._active),
            "completed": self.completed,
        }

    def drain(self) -> None:
        """Stop claiming (SIGTERM's first step); running tasks go on until :meth:`stop`."""
        self._stop.set()
        self._wake.set()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self.run(), name="stillmotion-worker")

    async def run(self) -> None:
        log.info("worker %s started (engines: %s)", self.worker_id, ", ".join(self.engines))
        await self._guard(self.housekeeper.start())
        self._housekeeping = asyncio.create_task(self.housekeeper.loop(), name="housekeeping")
        if self.webhooks is not None:
            self._webhooks = asyncio.create_task(self.webhooks.run(), name="webhooks")
        while not self._stop.is_set():
            free = self._free_engines()
            claimed = bool(free) and await self._claim_one(free)
            if not claimed:
                await self._idle()

    def limit(self, engine: str) -> int:
        """Tasks of ``engine`` run at once: the engine's own ``max_concurrency`` (a relay may
        keep hundreds in flight) or the worker's ``concurrency``."""
        own = getattr(self.engines[engine], "max_concurrency", None)
        return int(own) if own else self.concurrency

    def _free_engines(self) -> list[str]:
        busy: dict[str, int] = {}
        for _, engine in self._active.values():
            busy[engine] = busy.get(engine, 0) + 1
        return [e for e in self.engines if busy.get(e, 0) < self.limit(e)]

    async def _claim_one(self, engines: list[str]) -> bool:
        # Each claim gets its own fencing token, so a stale run of a task this worker claimed
        # again can never finish it.
        self._claims += 1
        claim_id = f"{self.worker_id}#{self._claims}"
        lease = self.runner.config.lease_seconds
        row = await self._guard(self.store.claim(claim_id, lease, engines))
        if row is None:
            return False
        task = asyncio.create_task(self.runner.run(row), name=f"task-{row.id}")
        self._active[task] = (claim_id, row.engine)
        task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Task[None]) -> None:
        self._active.pop(task, None)
        self.completed += 1
        self._wake.set()
        if self.webhooks is not None:
            self.webhooks.wake()  # its outbox rows, if it ended

    async def _idle(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _guard(self, coro: Any) -> Any:
        """Database hiccups must not kill the loop: log and carry on."""
        try:
            return await coro
        except Exception:
            log.exception("worker %s: store call failed", self.worker_id)
            await asyncio.sleep(self.poll_interval)
            return None

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming, give running tasks ``grace`` seconds, hand the rest back to the queue."""
        self._stop.set()
        self._wake.set()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
        released = 0
        if self._active:
            claims = dict(self._active)
            _, pending = await asyncio.wait(set(claims), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in pending:
                released += await self._guard(self.store.release_worker(claims[task][0])) or 0
        if released:
            log.info("worker %s handed %d task(s) back to the queue", self.worker_id, released)
        for engine in self.engines.values():
            await engine.aclose()
        await self._stop_housekeeping()

    async def _stop_housekeeping(self) -> None:
        if self._webhooks is not None:  # an unfinished POST is sent again by another
            self._webhooks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._webhooks
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        await self.housekeeper.stop()
        await asyncio.to_thread(shutil.rmtree, self.runner.config.work_root, True)

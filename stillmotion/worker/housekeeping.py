"""A worker's housekeeping: its registration and heartbeat, the reclaim of dead workers'
tasks, the reaper of expired leases and the sweeper, on one timer beside the claim loop.

At start the worker registers, reclaims the tasks of every worker known dead (a `serve`
restarted after `kill -9` finds its predecessor's process gone and takes its tasks back at
once) and sweeps ``work/``. Then, every ``heartbeat_seconds``: beat (register again if the
row is gone: this worker was declared dead and its claims were reclaimed), reclaim dead
workers' tasks (and sweep ``work/`` when it reclaimed any), reap expired leases; every
``sweep_seconds``: sweep ``work/`` and orphaned inputs, and run retention (results past
``result_ttl_hours``, task records past ``task_ttl_days``: ``tasks/retention.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from stillmotion.storage.base import Storage
from stillmotion.tasks.store import TaskStore
from stillmotion.worker import liveness, sweeper

log = logging.getLogger("stillmotion.worker")
T = TypeVar("T")


@dataclass(frozen=True)
class HousekeepingConfig:
    work_base: Path  # <data_dir>/work: one directory per worker under it
    heartbeat_seconds: float = 5.0
    reap_seconds: float = 15.0
    sweep_seconds: float = 300.0
    orphan_grace_seconds: float = 600.0
    result_ttl_hours: float = 168.0  # retention (tasks/retention.py), on the sweep timer
    task_ttl_days: float | None = None  # None: task records are kept
    retention_batch: int = 500


class Housekeeper:
    def __init__(
        self,
        store: TaskStore,
        storage: Storage,
        worker_id: str,
        engines: list[str],
        config: HousekeepingConfig,
    ) -> None:
        self.store = store
        self.storage = storage
        self.worker_id = worker_id
        self.engines = engines
        self.config = config
        self.reclaimed = 0

    async def start(self) -> None:
        """Register, reclaim the tasks of dead workers, reap, sweep ``work/``."""
        await self.register()
        await self.reclaim_dead()
        await _guarded(self.store.reap_expired())
        base = self.config.work_base
        await _guarded(sweeper.sweep_work(base, self.store, self.config.orphan_grace_seconds))

    async def register(self) -> None:
        row = liveness.this_worker(self.worker_id, self.engines, self.store.now())
        await self.store.workers.register(row)

    async def stop(self) -> None:
        await _guarded(self.store.workers.deregister(self.worker_id))

    async def reclaim_dead(self) -> int:
        """Reclaim the tasks of every registered worker known dead; how many tasks."""
        count = 0
        now = self.store.now()
        for row in await self.store.workers.registered():
            reason = None if row.id == self.worker_id else liveness.why_dead(
                row, now, self.config.heartbeat_seconds
            )  # fmt: skip
            if reason is None:
                continue
            done = await self.store.workers.reclaim(row, reason)
            if done is None:
                continue
            count += len(done.pending) + len(done.failed)
            log.warning(
                "worker %s is dead (%s): %d task(s) back to the queue, %d failed",
                row.id, reason, len(done.pending), len(done.failed),
            )  # fmt: skip
        self.reclaimed += count
        return count

    async def loop(self) -> None:
        cfg = self.config
        clock = asyncio.get_running_loop().time
        last_beat = last_reap = last_sweep = clock()
        while True:
            await asyncio.sleep(min(cfg.heartbeat_seconds, cfg.reap_seconds))
            if clock() - last_beat >= cfg.heartbeat_seconds * 0.99:
                last_beat = clock()
                await self.beat()
            if clock() - last_reap >= cfg.reap_seconds * 0.99:
                last_reap = clock()
                await _guarded(self.store.reap_expired())
            if clock() - last_sweep >= cfg.sweep_seconds:
                last_sweep = clock()
                await self.sweep()

    async def beat(self) -> None:
        """Renew the heartbeat (register again if declared dead), reclaim dead workers'."""
        if not await _guarded(self.store.workers.beat(self.worker_id), True):
            log.warning("worker %s was declared dead; registering again", self.worker_id)
            await _guarded(self.register())
        if await _guarded(self.reclaim_dead()):  # their work directories go at once
            grace = self.config.orphan_grace_seconds
            await _guarded(sweeper.sweep_work(self.config.work_base, self.store, grace))

    async def sweep(self) -> None:
        grace = self.config.orphan_grace_seconds
        await _guarded(sweeper.sweep_work(self.config.work_base, self.store, grace))
        await _guarded(sweeper.sweep_inputs(self.storage, self.store, grace))
        cfg = self.config
        await _guarded(
            self.store.retention.sweep(
                self.storage, cfg.result_ttl_hours, cfg.task_ttl_days, cfg.retention_batch
            )
        )


async def _guarded(call: Awaitable[T], default: T | None = None) -> T | None:
    """A database or disk hiccup must not end housekeeping: log it and carry on."""
    try:
        return await call
    except Exception:
        log.exception("housekeeping step failed")
        return default

"""Group commit for submits: concurrent ``create_task`` calls share one write transaction.

Each submit is an INSERT into ``tasks`` plus one into ``task_events``. Under load, sending
them one transaction each costs a full round of driver hops and a commit per task; here the
submits that arrive while a transaction is in flight are written together by one
``executemany``. A batch that fails is retried row by row, so one bad row fails only itself.
On SQLite the batch runs on a plain ``sqlite3`` connection in one dedicated thread: the whole
transaction is one hop off the event loop instead of four aiosqlite round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from stillmotion.tasks.schema import task_events, tasks

_Item = tuple[dict[str, Any], dict[str, Any], "asyncio.Future[None]"]


class InsertBatcher:
    def __init__(
        self, engine: AsyncEngine, max_batch: int = 128, sync_engine: Engine | None = None
    ):
        self._engine = engine
        self._sync = sync_engine
        self._thread = ThreadPoolExecutor(1, "task-inserts") if sync_engine else None
        self._max = max_batch
        self._queue: asyncio.Queue[_Item] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def insert(self, task: dict[str, Any], event: dict[str, Any]) -> None:
        if self._queue is None or self._writer is None or self._writer.done():
            self._queue = asyncio.Queue()
            self._writer = asyncio.create_task(self._run(self._queue), name="task-inserts")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((task, event, future))
        await future

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._sync is not None:
            self._sync.dispose()

    async def _run(self, queue: asyncio.Queue[_Item]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self._max and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._write(batch)
            except Exception:
                await self._write_one_by_one(batch)
            else:
                for _, _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _write(self, batch: list[_Item]) -> None:
        if self._thread is not None:
            rows = [(item[0], item[1]) for item in batch]
            await asyncio.get_running_loop().run_in_executor(self._thread, self._write_sync, rows)
            return
        async with self._engine.begin() as conn:
            await conn.execute(sa.insert(tasks), [item[0] for item in batch])
            await conn.execute(sa.insert(task_events), [item[1] for item in batch])

    def _write_sync(self, rows: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        assert self._sync is not None
        with self._sync.begin() as conn:
            conn.execute(sa.insert(tasks), [row[0] for row in rows])
            conn.execute(sa.insert(task_events), [row[1] for row in rows])

    async def _write_one_by_one(self, batch: list[_Item]) -> None:
        for item in batch:
            future = item[2]
            try:
                await self._write([item])
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(None)

"""The cluster-wide task figures of ``GET /metrics``: one grouped query, cached briefly.

``(model, engine, status) -> count`` and the oldest PENDING ``created_at`` come from a single
``GROUP BY`` over the task table on the read engine. The answer is kept ``ttl`` seconds and
concurrent scrapes share one query, so a scrape storm costs the database one query per
``ttl``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import sqlalchemy as sa

from stillmotion.metrics import TaskCounts
from stillmotion.tasks.schema import tasks
from stillmotion.tasks.store import TaskStore

DEFAULT_TTL = 1.5


async def read_counts(store: TaskStore) -> TaskCounts:
    """One query: tasks by model, engine and status, with each group's oldest ``created_at``."""
    query = sa.select(
        tasks.c.model,
        tasks.c.engine,
        tasks.c.status,
        sa.func.count(),
        sa.func.min(tasks.c.created_at),
    ).group_by(tasks.c.model, tasks.c.engine, tasks.c.status)
    by_group: dict[tuple[str, str, str], int] = {}
    oldest: float | None = None
    async with store._read.connect() as conn:  # the store's read engine (its own module's)
        for model, engine, status, count, first in await conn.execute(query):
            by_group[(str(model), str(engine), str(status))] = int(count)
            if status == "PENDING" and first is not None:
                oldest = float(first) if oldest is None else min(oldest, float(first))
    return TaskCounts(by_group=by_group, oldest_pending=oldest, taken_at=store.now())


async def ping(store: TaskStore) -> None:
    """``SELECT 1`` on the read engine: raises when the database does not answer."""
    async with store._read.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))


class CountsCache:
    """:func:`read_counts`, at most once per ``ttl`` seconds, shared by concurrent callers.

    A database that does not answer gives ``TaskCounts(up=False)`` (cached too, so an outage
    is not hammered either)."""

    def __init__(
        self,
        store: TaskStore,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.ttl = ttl
        self._clock = clock
        self._value: TaskCounts | None = None
        self._at = -float("inf")
        self._lock = asyncio.Lock()

    async def get(self) -> TaskCounts:
        if self._value is not None and self._clock() - self._at < self.ttl:
            return self._value
        async with self._lock:  # one query for every scrape waiting here
            if self._value is not None and self._clock() - self._at < self.ttl:
                return self._value
            try:
                value = await read_counts(self.store)
            except Exception:  # the database is down: the scrape still answers
                value = TaskCounts(up=False)
            self._value, self._at = value, self._clock()
            return value

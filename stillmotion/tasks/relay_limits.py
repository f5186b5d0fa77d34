"""Relay limits shared by every worker process: ``engines/relay_limits.py``'s arithmetic on
rows of the database (``relay_channels``, ``relay_slots``), so N workers on one upstream
account keep its cap, its rates and its 429 block together, not N times over.

Each call is one short write transaction. PostgreSQL: the channel's row is created if need
be (``INSERT ... ON CONFLICT DO NOTHING``) and then locked (``SELECT ... FOR UPDATE``), so
admits on one channel queue on that row while other channels go on; SQLite: the write
transaction is ``BEGIN IMMEDIATE`` (``tasks/db.py``), one writer at a time.

A slot is the task's row in ``relay_slots``. The relay frees it when it lets go of the task;
a worker killed with its tasks in flight leaves them, and rightly so: the upstream tasks
still run, and the tasks go back to PENDING and are resumed (``attach``) by another worker.
A slot whose task has ended (or is gone) no longer counts and is deleted at the channel's
next admit. Time is the wall clock (``time.time``), the one all machines share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stillmotion.domain import TaskStatus
from stillmotion.engines.relay_limits import (
    ChannelState,
    Limit,
    refill,
    reserve,
    wait_for_token,
)
from stillmotion.tasks.schema import relay_channels, relay_slots, tasks

_LIVE = [TaskStatus.PENDING.value, TaskStatus.RUNNING.value]
_C = relay_channels.c
_S = relay_slots.c


def _task_live() -> sa.Exists:
    """Whether the slot's task (in the enclosing query's ``relay_slots`` row) waits or runs."""
    return sa.exists().where(tasks.c.id == _S.task_id, tasks.c.status.in_(_LIVE))


class DatabaseLimits:
    """:class:`~stillmotion.engines.relay_limits.RelayLimits` in the database."""

    def __init__(
        self, read: AsyncEngine, write: AsyncEngine, clock: Callable[[], float] = time.time
    ) -> None:
        self._read = read
        self._write = write
        self.clock = clock

    async def _row(self, conn: AsyncConnection, name: str) -> Any:
        """The channel's row, created if new, locked until the transaction ends (PG)."""
        module = postgresql if conn.dialect.name == "postgresql" else sqlite
        await conn.execute(module.insert(relay_channels).values(name=name).on_conflict_do_nothing())
        query = sa.select(relay_channels).where(_C.name == name)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return (await conn.execute(query)).mappings().one()

    async def admit(self, limit: Limit, task_id: str, max_wait: float) -> float | None:
        now = self.clock()
        async with self._write.begin() as conn:
            row = await self._row(conn, limit.name)
            await conn.execute(
                sa.delete(relay_slots).where(_S.channel == limit.name, ~_task_live())
            )
            others = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(relay_slots)
                .where(_S.channel == limit.name, _S.task_id != task_id)
            )
            if int(others or 0) >= limit.max_in_flight or row["blocked_until"] > now:
                return None
            tokens = refill(row["submit_tokens"], row["submit_at"], now, limit.submit_rate)
            taken = reserve(tokens, limit.submit_rate, max_wait)
            if taken is None:
                return None
            left, wait = taken
            await conn.execute(
                sa.update(relay_channels)
                .where(_C.name == limit.name)
                .values(submit_tokens=left, submit_at=now)
            )
            await self._hold(conn, limit.name, task_id, now)
            return wait

    async def _hold(self, conn: AsyncConnection, name: str, task_id: str, now: float) -> None:
        module = postgresql if conn.dialect.name == "postgresql" else sqlite
        insert = module.insert(relay_slots).values(task_id=task_id, channel=name, acquired_at=now)
        await conn.execute(
            insert.on_conflict_do_update(
                index_elements=[_S.task_id], set_={"channel": name, "acquired_at": now}
            )
        )

    async def attach(self, limit: Limit, task_id: str) -> None:
        async with self._write.begin() as conn:
            await self._hold(conn, limit.name, task_id, self.clock())

    async def release(self, task_id: str) -> None:
        async with self._write.begin() as conn:
            await conn.execute(sa.delete(relay_slots).where(_S.task_id == task_id))

    async def take_query(self, limit: Limit) -> float:
        now = self.clock()
        async with self._write.begin() as conn:
            row = await self._row(conn, limit.name)
            tokens = refill(row["query_tokens"], row["query_at"], now, limit.query_rate)
            left, wait = reserve(tokens, limit.query_rate, float("inf")) or (tokens, 0.0)
            await conn.execute(
                sa.update(relay_channels)
                .where(_C.name == limit.name)
                .values(query_tokens=left, query_at=now)
            )
            return wait

    async def pause_queries(self, limit: Limit, seconds: float) -> None:
        now = self.clock()
        async with self._write.begin() as conn:
            row = await self._row(conn, limit.name)
            tokens = refill(row["query_tokens"], row["query_at"], now, limit.query_rate)
            paused = min(tokens, -max(limit.query_rate, 1e-6) * seconds)
            await conn.execute(
                sa.update(relay_channels)
                .where(_C.name == limit.name)
                .values(query_tokens=paused, query_at=now)
            )

    async def block(self, limit: Limit, seconds: float) -> None:
        until = self.clock() + seconds
        async with self._write.begin() as conn:
            await self._row(conn, limit.name)
            await conn.execute(
                sa.update(relay_channels)
                .where(_C.name == limit.name, _C.blocked_until < until)
                .values(blocked_until=until)
            )

    async def states(self, limits: Iterable[Limit]) -> dict[str, ChannelState]:
        """Read without a lock (an estimate for ordering; :meth:`admit` decides)."""
        wanted = {limit.name: limit for limit in limits}
        now = self.clock()
        names = list(wanted)
        counts = (
            sa.select(_S.channel, sa.func.count())
            .where(_S.channel.in_(names), _task_live())
            .group_by(_S.channel)
        )
        async with self._read.connect() as conn:
            rows = await conn.execute(sa.select(relay_channels).where(_C.name.in_(names)))
            by_name = {r["name"]: r for r in rows.mappings().all()}
            in_flight = {name: int(n) for name, n in (await conn.execute(counts)).all()}
        out = {}
        for name, limit in wanted.items():
            row = by_name.get(name)
            if row is None:
                out[name] = ChannelState(in_flight.get(name, 0), 0.0, 0.0)
                continue
            tokens = refill(row["submit_tokens"], row["submit_at"], now, limit.submit_rate)
            out[name] = ChannelState(
                in_flight.get(name, 0),
                max(0.0, float(row["blocked_until"]) - now),
                wait_for_token(tokens, limit.submit_rate),
            )
        return out

"""The worker registry: workers register, heartbeat and deregister in the ``workers`` table,
and the tasks of a worker known dead are reclaimed in one transaction.

Which worker is dead is the caller's judgement (``worker/liveness.py``: its process is gone
from this machine, or its heartbeat is too old); :meth:`WorkerRegistry.reclaim` only acts
if the row still carries the heartbeat the caller judged, so a worker that beat in between,
or a second reclaimer, changes nothing. A reclaim hands each RUNNING task of the worker's
claims back to PENDING, due at once, its attempt *kept* (the attempt that died counts), or
fails it with :data:`WORKER_LOST_CODE` when that was its last attempt (its hold released in
the same transaction, ``tasks/ledger.py``). The claim ids are
``<worker id>#<n>``, so a claim still held by the dead worker's stale run is fenced out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stillmotion.domain import TaskStatus
from stillmotion.tasks.ledger import ENDED_COLUMNS, settle_ended
from stillmotion.tasks.schema import task_events, tasks, workers
from stillmotion.tasks.transitions import log_transition

WORKER_LOST_CODE = "InternalError.WorkerLost"
RUNNING = TaskStatus.RUNNING.value
PENDING = TaskStatus.PENDING.value
FAILED = TaskStatus.FAILED.value


@dataclass(frozen=True)
class WorkerRow:
    id: str
    host: str
    machine: str  # hostname, boot id and pid namespace: where ``pid`` means this process
    pid: int
    process_start: float | None  # the process's start time on ``machine`` (pid reuse check)
    engines: list[str]
    version: str
    started_at: float
    heartbeat_at: float

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> WorkerRow:
        data = {f.name: row[f.name] for f in fields(cls)}
        for name in ("started_at", "heartbeat_at"):
            data[name] = float(data[name])
        if data["process_start"] is not None:
            data["process_start"] = float(data["process_start"])
        return cls(**data)


@dataclass(frozen=True)
class Reclaimed:
    """What one reclaim did: the tasks handed back and those failed (out of attempts)."""

    pending: list[str]
    failed: list[str]


def claims_of(worker_id: str) -> sa.ColumnElement[bool]:
    """The RUNNING tasks held by any claim of ``worker_id``."""
    prefix = tasks.c.worker_id.startswith(f"{worker_id}#", autoescape=True)
    return sa.and_(tasks.c.status == RUNNING, prefix)


class WorkerRegistry:
    def __init__(
        self,
        read: AsyncEngine,
        write: AsyncEngine,
        clock: Callable[[], float],
        forget: Callable[..., None],
    ) -> None:
        self._read = read
        self._write = write
        self._clock = clock
        self._forget = forget  # drops task ids from the store's row cache

    async def register(self, row: WorkerRow) -> None:
        """Insert (or refresh) the row of a worker; its heartbeat is now."""
        values = {f.name: getattr(row, f.name) for f in fields(row)}
        values["heartbeat_at"] = self._clock()
        async with self._write.begin() as conn:
            await conn.execute(sa.delete(workers).where(workers.c.id == row.id))
            await conn.execute(sa.insert(workers).values(**values))

    async def beat(self, worker_id: str) -> bool:
        """Renew the heartbeat; ``False`` when the row is gone (the worker was declared dead
        and must register again: its claims were reclaimed)."""
        stmt = (
            sa.update(workers).where(workers.c.id == worker_id).values(heartbeat_at=self._clock())
        )
        async with self._write.begin() as conn:
            return bool((await conn.execute(stmt)).rowcount)

    async def deregister(self, worker_id: str) -> None:
        async with self._write.begin() as conn:
            await conn.execute(sa.delete(workers).where(workers.c.id == worker_id))

    async def registered(self) -> list[WorkerRow]:
        query = sa.select(workers).order_by(workers.c.started_at, workers.c.id)
        async with self._read.connect() as conn:
            return [WorkerRow.from_row(r._mapping) for r in await conn.execute(query)]

    async def reclaim(self, dead: WorkerRow, reason: str) -> Reclaimed | None:
        """Declare ``dead`` dead and reclaim its tasks; ``None`` when its row changed since it
        was read (it beat again, or another worker reclaimed it first)."""
        now = self._clock()
        gone = sa.delete(workers).where(
            workers.c.id == dead.id, workers.c.heartbeat_at == dead.heartbeat_at
        )
        async with self._write.begin() as conn:
            if not (await conn.execute(gone)).rowcount:
                return None
            pending = await self._hand_back(conn, dead.id, now, reason)
            failed = await self._fail(conn, dead.id, now, reason)
        self._forget(*pending, *failed)
        return Reclaimed(pending, failed)

    async def _hand_back(
        self, conn: AsyncConnection, worker_id: str, now: float, reason: str
    ) -> list[str]:
        stmt = (
            sa.update(tasks)
            .where(claims_of(worker_id), tasks.c.attempts < tasks.c.max_attempts)
            .values(
                status=PENDING, worker_id=None, lease_expires_at=None, run_after=now, updated_at=now
            )  # fmt: skip
            .returning(tasks.c.id, tasks.c.engine, tasks.c.attempts, tasks.c.max_attempts)
        )
        rows = list(await conn.execute(stmt))
        detail = {"worker": worker_id, "reason": reason}
        await _events(
            conn, now, "reclaimed", [(r.id, {**detail, "attempt": r.attempts}) for r in rows]
        )
        for r in rows:
            log_transition(r.id, RUNNING, PENDING, r.engine, r.attempts, r.max_attempts,
                           f"reclaimed: worker {worker_id} {reason}")  # fmt: skip
        return [r.id for r in rows]

    async def _fail(
        self, conn: AsyncConnection, worker_id: str, now: float, reason: str
    ) -> list[str]:
        message = (
            sa.literal("the worker running this task died on each of its ")
            + sa.cast(tasks.c.attempts, sa.String)
            + sa.literal(" attempts")
        )
        stmt = (
            sa.update(tasks)
            .where(claims_of(worker_id), tasks.c.attempts >= tasks.c.max_attempts)
            .values(
                status=FAILED,
                ended_at=now,
                lease_expires_at=None,
                updated_at=now,
                error_code=WORKER_LOST_CODE,
                error_message=message,
                cost=0,
                billed_ms=0,
            )  # fmt: skip
            .returning(
                tasks.c.engine,
                tasks.c.attempts,
                tasks.c.max_attempts,
                *(tasks.c[name] for name in ENDED_COLUMNS),
            )  # fmt: skip
        )
        rows = list(await conn.execute(stmt))
        await settle_ended(conn, [r._mapping for r in rows], now, WORKER_LOST_CODE)
        detail = {"code": WORKER_LOST_CODE, "worker": worker_id, "reason": reason}
        await _events(
            conn, now, "failed", [(r.id, {**detail, "attempts": r.attempts}) for r in rows]
        )
        for r in rows:
            log_transition(r.id, RUNNING, FAILED, r.engine, r.attempts, r.max_attempts,
                           f"{WORKER_LOST_CODE}: worker {worker_id} {reason}")  # fmt: skip
        return [r.id for r in rows]


async def _events(
    conn: AsyncConnection, now: float, kind: str, items: list[tuple[str, dict[str, Any]]]
) -> None:
    if items:
        rows = [dict(task_id=i, at=now, kind=kind, detail=d) for i, d in items]
        await conn.execute(sa.insert(task_events), rows)

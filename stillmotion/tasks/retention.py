"""Retention: a task's stored objects go ``result_ttl`` after it ended, its record ``task_ttl``
after (``STILLMOTION_RESULT_TTL_HOURS``, ``STILLMOTION_TASK_TTL_DAYS``).

The sweep works in batches of terminal tasks, oldest end first. *Expiring* a task deletes
its videos (``videos/<id>-<attempt>.mp4``, every attempt's) and its kept inputs
(``inputs/<id>/``) through the storage protocol, then marks the row: ``result`` gets
``expired_at`` (and the TTL it was swept under) and a ``result_expired`` event is written.
The objects go first, so a sweep that dies half-way leaves unmarked rows that the next sweep
takes again (deleting an object twice is harmless). *Purging* deletes task rows with their
events, idempotency keys and webhook deliveries (a task whose webhook is still pending
waits), after deleting any objects not yet deleted; ledger entries stay (``tasks/audit.py``
accepts a settled hold whose task is gone).

Several workers may sweep at once. PostgreSQL: each batch is picked ``FOR UPDATE SKIP
LOCKED`` and its transaction is held while its objects are deleted, so sweepers take
disjoint batches. SQLite: the batch is read without a lock (holding the one write lock while
talking to the store would stop every submit), the objects deleted, and the rows marked or
deleted in a short write transaction whose conditions make a second sweeper's writes no-ops.

``result_expired`` also answers at render time: a result past its TTL is expired whether or
not a sweep has reached it yet, so no body hands out a URL that the sweep is about to break.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stillmotion.domain import TaskStatus
from stillmotion.storage.base import Storage
from stillmotion.tasks.rows import TaskRow
from stillmotion.tasks.schema import (
    idempotency_keys,
    task_events,
    tasks,
    webhook_attempts,
    webhook_deliveries,
)

log = logging.getLogger("stillmotion.tasks")

#: the key in a task's ``result`` that says its objects were deleted (epoch seconds)
EXPIRED_AT = "expired_at"
#: the code and the body flag of a SUCCEEDED task whose result was deleted
EXPIRED_CODE = "ResultExpired"
TTL_SETTING = "STILLMOTION_RESULT_TTL_HOURS"
#: set in ``result`` (with ``expired_at``) when the owner deleted the result before its TTL
DELETED = "deleted"
_TERMINAL = [s.value for s in TaskStatus if s.terminal and s is not TaskStatus.UNKNOWN]
_NOT_MARKED = tasks.c.result[EXPIRED_AT].as_float().is_(None)
_PENDING_DELIVERY = "pending"


def result_expired(row: TaskRow, now: float, ttl_seconds: float | None) -> bool:
    """Whether the task's stored objects are gone (or due to go): swept, or ended more than
    ``ttl_seconds`` ago (``None``: only a sweep's mark counts)."""
    if not row.status.terminal:
        return False
    if row.result and row.result.get(EXPIRED_AT) is not None:
        return True
    return (
        ttl_seconds is not None and row.ended_at is not None and now - row.ended_at >= ttl_seconds
    )


def expired_message(row: TaskRow, ttl_seconds: float | None) -> str:
    """The body's ``message`` for an expired result, naming the TTL it went under."""
    if (row.result or {}).get(DELETED):
        return "The result of this task was deleted by its owner (DELETE /v1/videos/{id})."
    hours = (row.result or {}).get("ttl_hours")
    if hours is None and ttl_seconds is not None:
        hours = ttl_seconds / 3600
    after = f" {float(hours):g} hours after the task ended" if hours is not None else ""
    return f"The result of this task was deleted{after} ({TTL_SETTING})."


def video_from_key(key: str) -> str | None:
    """The task id of a result key (``videos/<task id>-<attempt>.mp4``), else ``None``."""
    if not key.startswith("videos/") or not key.endswith(".mp4"):
        return None
    task_id, sep, attempt = key[len("videos/") : -len(".mp4")].rpartition("-")
    return task_id if sep and task_id and attempt.isdigit() else None


def _object_keys(row: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``(result keys, input prefixes)`` a task may have stored: a video per claim (a claim
    that lost its lease may have left one) and ``inputs/<id>/`` when a data: URI was kept."""
    task_id = str(row["id"])
    videos = {f"videos/{task_id}-{n}.mp4" for n in range(1, int(row["attempts"] or 0) + 1)}
    key = (row["result"] or {}).get("video_key")
    if isinstance(key, str):
        videos.add(key)
    request = row["request"] or {}
    kept = any(
        isinstance(ref, dict) and ref.get("storage_key")
        for ref in (request.get("image"), request.get("last_frame"), request.get("audio_source"))
    )
    return sorted(videos), [f"inputs/{task_id}/"] if kept else []


async def _delete_objects(storage: Storage, rows: Sequence[Mapping[str, Any]]) -> None:
    videos: list[str] = []
    for row in rows:
        keys, prefixes = _object_keys(row)
        videos.extend(keys)
        for prefix in prefixes:
            await storage.delete_prefix(prefix)
    if videos:
        await storage.delete_keys(videos)


@dataclass(frozen=True)
class SweepCounts:
    expired: int  # tasks whose objects were deleted and rows marked
    purged: int  # task rows deleted


class Retention:
    """The sweep's queries (``store.retention``); the storage comes with each call."""

    def __init__(
        self,
        read: AsyncEngine,
        write: AsyncEngine,
        clock: Callable[[], float],
        dialect: str,
        drop: Callable[..., None],
    ) -> None:
        self._read = read
        self._write = write
        self._clock = clock
        self._pg = dialect == "postgresql"
        self._drop = drop  # the row cache's: rows this process changed or deleted

    async def sweep(
        self,
        storage: Storage,
        result_ttl_hours: float,
        task_ttl_days: float | None = None,
        batch: int = 500,
    ) -> SweepCounts:
        """Expire every result older than ``result_ttl_hours``, then delete every task record
        older than ``task_ttl_days`` (``None`` or 0: none), ``batch`` tasks at a time."""
        expired = purged = 0
        while True:
            picked, done = await self._expire_batch(storage, result_ttl_hours, batch)
            expired += done
            if picked < batch or done == 0:  # a second sweeper took this batch: it goes on
                break
        if task_ttl_days:
            while True:
                picked, done = await self._purge_batch(storage, task_ttl_days, batch)
                purged += done
                if picked < batch or done == 0:
                    break
        if expired or purged:
            log.info("retention: %d result(s) expired, %d task record(s) deleted", expired, purged)
        return SweepCounts(expired, purged)

    def _pick(self, before: float, batch: int, *where: sa.ColumnElement[bool]) -> sa.Select[Any]:
        query = (
            sa.select(tasks.c.id, tasks.c.attempts, tasks.c.request, tasks.c.result)
            .where(tasks.c.status.in_(_TERMINAL), tasks.c.ended_at < before, *where)
            .order_by(tasks.c.ended_at, tasks.c.id)
            .limit(batch)
        )
        return query.with_for_update(skip_locked=True, of=tasks) if self._pg else query

    async def _batch(
        self,
        storage: Storage,
        pick: sa.Select[Any],
        write: Callable[[AsyncConnection, list[Mapping[str, Any]]], Any],
        unswept: Callable[[Mapping[str, Any]], bool],
    ) -> tuple[int, int]:
        """Pick, delete the objects of the picked rows ``unswept`` says still have them,
        ``write``; ``(picked, written)``."""
        if self._pg:
            async with self._write.begin() as conn:
                rows = [r._mapping for r in await conn.execute(pick)]
                await _delete_objects(storage, [r for r in rows if unswept(r)])
                done = await write(conn, rows) if rows else 0
        else:
            async with self._read.connect() as conn:
                rows = [r._mapping for r in await conn.execute(pick)]
            await _delete_objects(storage, [r for r in rows if unswept(r)])
            done = 0
            if rows:
                async with self._write.begin() as conn:
                    done = await write(conn, rows)
        self._drop(*(str(r["id"]) for r in rows))
        return len(rows), int(done)

    async def _expire_batch(
        self, storage: Storage, ttl_hours: float, batch: int
    ) -> tuple[int, int]:
        now = float(self._clock())
        pick = self._pick(now - ttl_hours * 3600, batch, _NOT_MARKED)
        mark = self._marker(now, {"ttl_hours": ttl_hours})
        return await self._batch(storage, pick, mark, lambda _: True)

    async def expire_task(self, storage: Storage, task_id: str) -> bool:
        """Delete one finished task's objects now (its owner asked: ``DELETE /v1/videos``)
        and mark it as the sweep does; False when it is not finished or already expired."""
        now = float(self._clock())
        pick = self._pick(now + 1, 1, _NOT_MARKED, tasks.c.id == task_id)
        mark = self._marker(now, {DELETED: True})
        return (await self._batch(storage, pick, mark, lambda _: True))[1] == 1

    def _marker(
        self, now: float, extra: dict[str, Any]
    ) -> Callable[[AsyncConnection, list[Mapping[str, Any]]], Any]:
        """Marks picked rows expired (``result.expired_at`` + ``extra``), with an event."""

        async def mark(conn: AsyncConnection, rows: list[Mapping[str, Any]]) -> int:
            done = 0
            for row in rows:
                result = {**(row["result"] or {}), EXPIRED_AT: now, **extra}
                stmt = (
                    sa.update(tasks)
                    .where(tasks.c.id == row["id"], _NOT_MARKED)
                    .values(result=result)
                )
                if (await conn.execute(stmt)).rowcount:
                    done += 1
                    await conn.execute(
                        sa.insert(task_events).values(
                            task_id=row["id"], at=now, kind="result_expired", detail=extra
                        )
                    )
            return done

        return mark

    async def _purge_batch(self, storage: Storage, ttl_days: float, batch: int) -> tuple[int, int]:
        now = float(self._clock())
        pending = sa.exists().where(
            webhook_deliveries.c.task_id == tasks.c.id,
            webhook_deliveries.c.status == _PENDING_DELIVERY,
        )
        pick = self._pick(now - ttl_days * 86400, batch, sa.not_(pending))

        async def delete(conn: AsyncConnection, rows: list[Mapping[str, Any]]) -> int:
            ids = [str(r["id"]) for r in rows]
            deliveries = sa.select(webhook_deliveries.c.id).where(
                webhook_deliveries.c.task_id.in_(ids)
            )
            for stmt in (
                sa.delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(deliveries)),
                sa.delete(webhook_deliveries).where(webhook_deliveries.c.task_id.in_(ids)),
                sa.delete(idempotency_keys).where(idempotency_keys.c.task_id.in_(ids)),
                sa.delete(task_events).where(task_events.c.task_id.in_(ids)),
            ):
                await conn.execute(stmt)
            gone = sa.delete(tasks).where(tasks.c.id.in_(ids), tasks.c.status.in_(_TERMINAL))
            return int((await conn.execute(gone)).rowcount or 0)

        def unswept(row: Mapping[str, Any]) -> bool:
            return (row["result"] or {}).get(EXPIRED_AT) is None

        return await self._batch(storage, pick, delete, unswept)

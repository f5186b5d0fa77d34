"""``TaskStore``: API keys and the task queue, on SQLite or PostgreSQL through SQLAlchemy Core.

The task table is the queue. A claim hands a task to one worker with a lease; every later
write by that worker is *fenced* (``WHERE id AND worker_id AND status = 'RUNNING'``), so a
worker whose lease was taken over changes nothing. Every status change appends a
``task_events`` row in the same transaction, and every terminal one settles the task's money
there too (``tasks/ledger.py``): a capture for SUCCEEDED, a release otherwise, exactly once
because the transition itself happens once, and writes its webhook deliveries to the outbox
(``tasks/webhooks.py``). Time comes from the injected ``clock``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stillmotion.domain import TaskStatus, is_clean_text
from stillmotion.money import cost_micros
from stillmotion.tasks import audit, db, ledger, listing, webhooks
from stillmotion.tasks.accounts import Accounts
from stillmotion.tasks.admission import Ask
from stillmotion.tasks.batch import IDEMPOTENCY_SECONDS, InsertBatcher, SqliteBatchWriter, Submit
from stillmotion.tasks.cache import RowCache
from stillmotion.tasks.ledger import ENDED_COLUMNS, settle_ended
from stillmotion.tasks.relay_limits import DatabaseLimits
from stillmotion.tasks.retention import Retention
from stillmotion.tasks.rows import ApiKeyRow, TaskRow
from stillmotion.tasks.schema import accounts, api_keys, idempotency_keys, task_events, tasks
from stillmotion.tasks.transitions import log_transition
from stillmotion.tasks.workers import WORKER_LOST_CODE, WorkerRegistry

__all__ = ["REAPED_CODE", "WORKER_LOST_CODE", "ApiKeyRow", "TaskRow", "TaskStore"]

PENDING = TaskStatus.PENDING.value
RUNNING = TaskStatus.RUNNING.value
REAPED_CODE = "InternalError.Timeout"
# What a new task's INSERT sets; the other columns start NULL (or at their server default).
_CREATE_COLUMNS = ("id", "key_id", "model", "engine", "status", "request", "created_at",
                   "updated_at", "run_after", "attempts", "max_attempts", "progress",
                   "cancel_requested", "engine_state", "account_id", "price", "quote",
                   "hold")  # fmt: skip
_ENDED = [tasks.c[name] for name in ENDED_COLUMNS]
#: what a FAILED or CANCELED transition sets besides its status: nothing billed
_NOTHING_BILLED = {"cost": 0, "billed_ms": 0}
_STATUSES = tuple(s for s in TaskStatus if s is not TaskStatus.UNKNOWN)


def _fence(task_id: str, worker_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(tasks.c.id == task_id, tasks.c.worker_id == worker_id, tasks.c.status == RUNNING)


async def _event(
    conn: AsyncConnection, task_id: str, at: float, kind: str, detail: dict[str, Any] | None = None
) -> None:
    await conn.execute(
        sa.insert(task_events).values(task_id=task_id, at=at, kind=kind, detail=detail)
    )


def _releaser(now: float, why: str) -> Callable[[AsyncConnection, TaskRow], Awaitable[TaskRow]]:
    """The settlement of a FAILED or CANCELED task: its whole hold released."""

    async def release(conn: AsyncConnection, task: TaskRow) -> TaskRow:
        ended = {name: getattr(task, name) for name in ENDED_COLUMNS}
        await settle_ended(conn, [ended], now, why)
        return task

    return release


def _running(owner: sa.ColumnElement[Any], column: str, now: float) -> Any:
    """Live RUNNING tasks of the candidate's key or account (correlated count)."""
    busy = tasks.alias(f"busy_{column}")
    return (
        sa.select(sa.func.count())
        .select_from(busy)
        .where(busy.c[column] == owner, busy.c.status == RUNNING, busy.c.lease_expires_at >= now)
        .scalar_subquery()
    )


def _under_cap(
    cand: Any, owner: sa.ColumnElement[Any], table: sa.Table, column: str, now: float
) -> sa.ColumnElement[bool]:
    """The owner (account or key) sets no ``max_concurrent``, or runs fewer tasks."""
    cap = sa.select(table.c.max_concurrent).where(table.c.id == owner).scalar_subquery()
    return sa.or_(cap.is_(None), _running(owner, column, now) < cap)


class TaskStore:
    """Open with ``await TaskStore.open(url)``, then ``await store.upgrade()`` once."""

    def __init__(
        self,
        url: sa.URL,
        read: AsyncEngine,
        write: AsyncEngine,
        clock: Callable[[], float],
        cache_seconds: float = 0.0,
    ) -> None:
        self.url = url
        self.dialect: str = url.get_backend_name()
        self._read = read
        self._write = write
        self._clock = clock
        sqlite = SqliteBatchWriter(url) if self.dialect == "sqlite" else None
        self._inserts = InsertBatcher(write, sqlite=sqlite)
        self._cache = RowCache(cache_seconds)
        self._reads: dict[str, asyncio.Future[TaskRow | None]] = {}
        self.workers = WorkerRegistry(read, write, clock, self._cache.drop)
        self.accounts = Accounts(read, write, clock)
        self.webhooks = webhooks.Webhooks(read, write, clock)
        self.retention = Retention(read, write, clock, self.dialect, self._cache.drop)
        self.relay_limits = DatabaseLimits(read, write, clock)

    @classmethod
    async def open(
        cls, url: str, *, clock: Callable[[], float] = time.time, cache_seconds: float = 0.0
    ) -> TaskStore:
        """``cache_seconds``: how long ``get_task`` may serve an unfinished row from memory
        (finished rows are always cached; see ``tasks/cache.py``)."""
        parsed = db.normalize_url(url)
        read, write = db.create_engines(parsed)
        return cls(parsed, read, write, clock, cache_seconds)

    async def verify_billing(self) -> dict[str, list[dict[str, Any]]]:
        """The ledger's invariants (``tasks/audit.py``): the failed checks' rows."""
        return await audit.verify(self._read)

    async def close(self) -> None:
        await self._inserts.close()
        await self._read.dispose()
        if self._write is not self._read:
            await self._write.dispose()

    def now(self) -> float:
        """The store's clock (the one every row's times come from)."""
        return float(self._clock())

    async def upgrade(self) -> None:
        """``alembic upgrade head`` (safe to call from several processes at once)."""
        await db.upgrade(self.url)

    # -- API keys ---------------------------------------------------------------------------

    async def create_key(
        self,
        name: str,
        key_hash: str,
        prefix: str,
        *,
        account_id: str | None = None,
        is_admin: bool = False,
    ) -> ApiKeyRow:
        """A key of ``account_id``; without one, a new account of the key's own name."""
        now = self._clock()
        row = ApiKeyRow(secrets.token_hex(6), name, prefix, now, None, account_id, is_admin)
        async with self._write.begin() as conn:
            if account_id is None:
                account_id = secrets.token_hex(6)
                await conn.execute(
                    sa.insert(accounts).values(id=account_id, name=name, created_at=now)
                )
            elif not await conn.scalar(sa.select(accounts.c.id).where(accounts.c.id == account_id)):
                raise LookupError(f"no account {account_id!r}")
            row = replace(row, account_id=account_id)
            values = {k: v for k, v in asdict(row).items() if k not in ("limits", "price_group")}
            await conn.execute(sa.insert(api_keys).values(key_hash=key_hash, **values))
        return row

    async def list_keys(self) -> list[ApiKeyRow]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        async with self._read.connect() as conn:
            return [ApiKeyRow.from_row(r._mapping) for r in await conn.execute(query)]

    async def revoke_key(self, key_id_or_prefix: str) -> bool:
        """Revoke the live key with this id, else the one live key with this prefix.

        Raises ``ValueError`` when the prefix matches several live keys.
        """
        live = api_keys.c.revoked_at.is_(None)
        async with self._write.begin() as conn:
            ids = list(
                await conn.scalars(
                    sa.select(api_keys.c.id).where(live, api_keys.c.id == key_id_or_prefix)
                )
            )
            if not ids:
                match = sa.select(api_keys.c.id).where(live, api_keys.c.prefix == key_id_or_prefix)
                ids = list(await conn.scalars(match))
            if len(ids) > 1:
                raise ValueError(f"{len(ids)} keys start with {key_id_or_prefix!r}; use the key id")
            if not ids:
                return False
            revoke = (
                sa.update(api_keys).where(api_keys.c.id == ids[0]).values(revoked_at=self._clock())
            )
            await conn.execute(revoke)
        return True

    async def key_by_hash(self, key_hash: str) -> ApiKeyRow | None:
        """The live key with this hash, with its account's price group."""
        query = (
            sa.select(api_keys, accounts.c.price_group)
            .select_from(api_keys.outerjoin(accounts, accounts.c.id == api_keys.c.account_id))
            .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
        )
        async with self._read.connect() as conn:
            row = (await conn.execute(query)).first()
        return ApiKeyRow.from_row(row._mapping) if row else None

    async def idempotent_task(self, key_id: str, idem_key: str) -> tuple[str, str] | None:
        """``(body hash, task id)`` of this key's ``Idempotency-Key`` used in the last 24 h."""
        since = self._clock() - IDEMPOTENCY_SECONDS
        query = sa.select(idempotency_keys.c.body_hash, idempotency_keys.c.task_id).where(
            idempotency_keys.c.key_id == key_id,
            idempotency_keys.c.idem_key == idem_key,
            idempotency_keys.c.created_at >= since,
        )
        async with self._read.connect() as conn:
            row = (await conn.execute(query)).first()
        return (str(row.body_hash), str(row.task_id)) if row else None

    # -- tasks: API side --------------------------------------------------------------------

    async def create_task(
        self,
        *,
        task_id: str,
        key_id: str,
        model: str,
        engine: str,
        request: dict[str, Any],
        max_attempts: int,
        account_id: str | None = None,
        price: int = 0,
        quote: int = 0,
        ask: Ask | None = None,
        idempotency: tuple[str, str] | None = None,
        callback_url: str | None = None,
    ) -> TaskRow:
        """Insert a PENDING task (group-committed, ``tasks/batch.py``). ``ask``: admission
        (limits, and with ``ask.hold`` a hold of ``quote``); its refusal is raised.
        ``idempotency``: ``(header value, body hash)`` recorded for this key.
        ``callback_url``: the submit's ``X-Stillmotion-Callback`` (``tasks/webhooks.py``)."""
        now = float(self._clock())
        row = TaskRow(
            id=task_id, key_id=key_id, model=model, engine=engine, status=TaskStatus.PENDING,
            request=request, created_at=now, scheduled_at=None, ended_at=None, updated_at=now,
            run_after=now, attempts=0, max_attempts=max_attempts, worker_id=None,
            lease_expires_at=None, progress=0.0, cancel_requested=False, result=None,
            error_code=None, error_message=None, engine_state={}, account_id=account_id,
            price=price, quote=quote, hold=quote if ask is not None and ask.hold else None,
        )  # fmt: skip
        values = {name: getattr(row, name) for name in _CREATE_COLUMNS}
        values["status"] = PENDING
        values["callback_url"] = callback_url  # every row has it: a batch shares one INSERT
        event = dict(task_id=task_id, at=now, kind="created", detail=None)
        idem = None
        if idempotency is not None:
            idem = dict(key_id=key_id, idem_key=idempotency[0], body_hash=idempotency[1],
                        task_id=task_id, created_at=now)  # fmt: skip
        await self._inserts.insert(Submit(values, event, ask, idem))
        log_transition(task_id, "new", PENDING, engine, 0, max_attempts)
        # Not cached: a new task is rarely polled within the cache's TTL, and every cached
        # row is garbage the collector walks until it expires.
        return row

    async def get_task(self, task_id: str) -> TaskRow | None:
        """The row, from the cache when it may be (see ``tasks/cache.py``). Concurrent misses
        for one task share a single read: a task polled by many clients at once, or a cache
        entry expiring under load, costs one query, not one per request."""
        cached = self._cache.get(task_id)
        if cached is not None:
            return cached
        read = self._reads.get(task_id)
        if read is None:
            read = self._reads[task_id] = asyncio.ensure_future(self._read_task(task_id))
            read.add_done_callback(lambda _: self._reads.pop(task_id, None))
        return await asyncio.shield(read)

    async def _read_task(self, task_id: str) -> TaskRow | None:
        if not is_clean_text(task_id):
            return None  # no task has such an id; PostgreSQL would refuse the query
        async with self._read.connect() as conn:
            row = (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id))).first()
        return self._cache.put(TaskRow.from_row(row._mapping)) if row else None

    async def list_tasks(
        self,
        key_id: str,
        *,
        limit: int = 10,
        offset: int = 0,
        status: str | None = None,
        model: str | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> tuple[list[TaskRow], int]:
        """One key's tasks, newest first, and how many match. ``start``/``end`` are inclusive
        bounds on ``created_at``. Rows carry only what lists show (``tasks/listing.py``)."""
        return await listing.list_tasks(
            self._read, key_id, limit=limit, offset=offset, status=status, model=model,
            start=start, end=end,
        )  # fmt: skip

    async def cancel_pending(self, task_id: str, key_id: str) -> TaskRow | None:
        now = self._clock()
        stmt = (
            sa.update(tasks)
            .where(tasks.c.id == task_id, tasks.c.key_id == key_id, tasks.c.status == PENDING)
            .values(
                status=TaskStatus.CANCELED.value, ended_at=now, updated_at=now, **_NOTHING_BILLED
            )
            .returning(tasks)
        )
        async with self._write.begin() as conn:
            row = (await conn.execute(stmt)).first()
            if row is None:
                return None
            await _event(conn, task_id, now, "canceled")
            await settle_ended(conn, [row._mapping], now, "canceled")
        task = self._cache.put(TaskRow.from_row(row._mapping))
        log_transition(task_id, PENDING, task.status.value, task.engine, task.attempts,
                       task.max_attempts)  # fmt: skip
        return task

    async def request_cancel(self, task_id: str, key_id: str) -> bool:
        stmt = (
            sa.update(tasks)
            .where(tasks.c.id == task_id, tasks.c.key_id == key_id, tasks.c.status == RUNNING)
            .values(cancel_requested=True, updated_at=self._clock())
        )
        async with self._write.begin() as conn:
            changed = (await conn.execute(stmt)).rowcount > 0
        self._cache.drop(task_id)
        return changed

    # -- tasks: worker side -----------------------------------------------------------------

    def _pick(self, engines: Sequence[str] | None, now: float) -> sa.Select[tuple[str, str]]:
        """The next eligible task's id and status (PostgreSQL: locked, skipping locked rows).

        Fair across keys (the key with the fewest live RUNNING tasks first); a task whose
        account or key is at its ``max_concurrent`` waits (it is not eligible)."""
        cand = tasks.alias("cand")
        eligible = sa.or_(
            sa.and_(cand.c.status == PENDING, cand.c.run_after <= now),
            sa.and_(
                cand.c.status == RUNNING,
                cand.c.lease_expires_at < now,
                cand.c.attempts < cand.c.max_attempts,
            ),
        )
        pick = sa.select(cand.c.id, cand.c.status).where(
            eligible,
            _under_cap(cand, cand.c.account_id, accounts, "account_id", now),
            _under_cap(cand, cand.c.key_id, api_keys, "key_id", now),
        )
        if engines is not None:
            pick = pick.where(cand.c.engine.in_(list(engines)))
        load = _running(cand.c.key_id, "key_id", now)
        pick = pick.order_by(load, cand.c.created_at, cand.c.id).limit(1)
        if self.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True, of=cand)
        # SQLite: the write transaction is BEGIN IMMEDIATE, so nobody else is writing
        return pick

    async def claim(
        self, worker_id: str, lease_seconds: float, engines: Sequence[str] | None = None
    ) -> TaskRow | None:
        """Take the next eligible task (fairly across keys); ``None`` when there is none."""
        if engines is not None and not engines:
            return None
        now = self._clock()
        async with self._write.begin() as conn:
            picked = (await conn.execute(self._pick(engines, now))).first()
            if picked is None:
                return None
            stmt = (
                sa.update(tasks)
                .where(tasks.c.id == picked.id)
                .values(
                    status=RUNNING,
                    worker_id=worker_id,
                    attempts=tasks.c.attempts + 1,
                    lease_expires_at=now + lease_seconds,
                    scheduled_at=sa.func.coalesce(tasks.c.scheduled_at, now),
                    updated_at=now,
                )
                .returning(tasks)
            )
            task = TaskRow.from_row((await conn.execute(stmt)).one()._mapping)
            await _event(
                conn, task.id, now, "claimed", {"attempt": task.attempts, "worker": worker_id}
            )
        note = "" if picked.status == PENDING else "lease expired"
        log_transition(task.id, picked.status, RUNNING, task.engine, task.attempts,
                       task.max_attempts, note)  # fmt: skip
        return self._cache.put(task)

    async def _fenced(
        self,
        task_id: str,
        worker_id: str,
        now: float,
        values: dict[str, Any],
        event: tuple[str, dict[str, Any] | None] | None = None,
        settle: Callable[[AsyncConnection, TaskRow], Awaitable[TaskRow]] | None = None,
    ) -> TaskRow | None:
        """A fenced update; ``settle`` (a terminal transition's money) runs in its
        transaction and may return the row updated further."""
        stmt = (
            sa.update(tasks)
            .where(_fence(task_id, worker_id))
            .values(updated_at=now, **values)
            .returning(tasks)
        )
        async with self._write.begin() as conn:
            row = (await conn.execute(stmt)).first()
            if row is None:
                return None
            task = TaskRow.from_row(row._mapping)
            if event is not None:
                await _event(conn, task_id, now, *event)
            if settle is not None:
                task = await settle(conn, task)
        task = self._cache.put(task)
        if event is not None and task.status is not TaskStatus.RUNNING:
            code = task.error_code or ""
            log_transition(task_id, RUNNING, task.status.value, task.engine, task.attempts,
                           task.max_attempts, code)  # fmt: skip
        return task

    async def heartbeat(
        self, task_id: str, worker_id: str, lease_seconds: float, progress: float | None = None
    ) -> TaskRow | None:
        """Extend the lease (and record progress); ``None`` means the lease was lost."""
        now = self._clock()
        values: dict[str, Any] = {"lease_expires_at": now + lease_seconds}
        if progress is not None:
            values["progress"] = min(max(float(progress), 0.0), 1.0)
        return await self._fenced(task_id, worker_id, now, values)

    async def save_state(self, task_id: str, worker_id: str, state: dict[str, Any]) -> bool:
        now = self._clock()
        return await self._fenced(task_id, worker_id, now, {"engine_state": state}) is not None

    def _ended(self, now: float, status: TaskStatus, **values: Any) -> dict[str, Any]:
        return {"status": status.value, "ended_at": now, "lease_expires_at": None, **values}

    async def finish_success(self, task_id: str, worker_id: str, result: dict[str, Any]) -> bool:
        """SUCCEEDED, and in the same transaction the cost of what was produced
        (``ledger.billed_millis``) captured from the hold, the rest released."""
        now = self._clock()
        values = self._ended(now, TaskStatus.SUCCEEDED, result=result, progress=1.0)

        async def capture(conn: AsyncConnection, task: TaskRow) -> TaskRow:
            millis = ledger.billed_millis(result)
            cost = cost_micros(task.price, millis)
            await conn.execute(
                sa.update(tasks).where(tasks.c.id == task.id).values(cost=cost, billed_ms=millis)
            )
            if task.hold is not None and task.account_id is not None:
                entry = ledger.capture_entry(task.id, task.account_id, task.hold, cost, millis, now)
                await ledger.write(conn, [entry])
            await webhooks.enqueue(conn, [task.id], now)
            return replace(task, cost=cost, billed_ms=millis)

        row = await self._fenced(task_id, worker_id, now, values, ("succeeded", None), capture)
        return row is not None

    async def finish_failure(self, task_id: str, worker_id: str, code: str, message: str) -> bool:
        now = self._clock()
        values = self._ended(
            now, TaskStatus.FAILED, error_code=code, error_message=message, **_NOTHING_BILLED
        )
        event = ("failed", {"code": code, "message": message})
        settle = _releaser(now, code)
        return await self._fenced(task_id, worker_id, now, values, event, settle) is not None

    async def finish_canceled(self, task_id: str, worker_id: str) -> bool:
        now = self._clock()
        values = self._ended(now, TaskStatus.CANCELED, **_NOTHING_BILLED)
        settle = _releaser(now, "canceled")
        row = await self._fenced(task_id, worker_id, now, values, ("canceled", None), settle)
        return row is not None

    async def retry_later(
        self, task_id: str, worker_id: str, delay: float, code: str, message: str
    ) -> bool:
        """Back to PENDING after ``delay`` seconds, or FAILED when no attempts are left."""
        now = self._clock()
        again = dict(status=PENDING, run_after=now + delay, worker_id=None, lease_expires_at=None)
        failed = self._ended(
            now, TaskStatus.FAILED, error_code=code, error_message=message, **_NOTHING_BILLED
        )
        has_tries = tasks.c.attempts < tasks.c.max_attempts
        async with self._write.begin() as conn:
            for condition, values, kind, detail in (
                (has_tries, again, "retry", {"code": code, "message": message, "delay": delay}),
                (sa.not_(has_tries), failed, "failed", {"code": code, "message": message}),
            ):
                stmt = (
                    sa.update(tasks)
                    .where(_fence(task_id, worker_id), condition)
                    .values(updated_at=now, **values)
                    .returning(
                        tasks.c.status,
                        tasks.c.engine,
                        tasks.c.attempts,
                        tasks.c.max_attempts,
                        *_ENDED,
                    )  # fmt: skip
                )
                row = (await conn.execute(stmt)).first()
                if row is not None:
                    await _event(conn, task_id, now, kind, detail)
                    if kind == "failed":
                        await settle_ended(conn, [row._mapping], now, code)
                    self._cache.drop(task_id)
                    log_transition(task_id, RUNNING, row.status, row.engine, row.attempts,
                                   row.max_attempts, code)  # fmt: skip
                    return True
        return False

    async def release_worker(self, worker_id: str, delay: float = 0.0) -> int:
        """Hand every RUNNING task of this worker (or claim) back, attempt refunded: graceful
        shutdown, or an engine deferring admission for ``delay`` seconds."""
        now = self._clock()
        stmt = (
            sa.update(tasks)
            .where(tasks.c.worker_id == worker_id, tasks.c.status == RUNNING)
            .values(
                status=PENDING,
                attempts=sa.case((tasks.c.attempts > 0, tasks.c.attempts - 1), else_=0),
                worker_id=None,
                lease_expires_at=None,
                run_after=now + delay,
                updated_at=now,
            )
            .returning(tasks.c.id, tasks.c.engine, tasks.c.attempts, tasks.c.max_attempts)
        )
        async with self._write.begin() as conn:
            released = list(await conn.execute(stmt))
            ids = [r.id for r in released]
            if ids:
                detail = {"worker": worker_id, "delay": delay} if delay else {"worker": worker_id}
                kind = "deferred" if delay else "released"
                rows = [dict(task_id=i, at=now, kind=kind, detail=detail) for i in ids]
                await conn.execute(sa.insert(task_events), rows)
        self._cache.drop(*ids)
        for r in released:
            note = f"deferred {delay:g} s" if delay else "released"
            log_transition(r.id, RUNNING, PENDING, r.engine, r.attempts, r.max_attempts, note)
        return len(ids)

    async def reap_expired(self) -> int:
        """Fail RUNNING tasks whose lease expired with no attempts left; how many."""
        now = self._clock()
        message = (
            sa.literal("the worker running this task stopped responding ")
            + sa.cast(tasks.c.attempts, sa.String)
            + sa.literal(" times")
        )
        stmt = (
            sa.update(tasks)
            .where(
                tasks.c.status == RUNNING,
                tasks.c.lease_expires_at < now,
                tasks.c.attempts >= tasks.c.max_attempts,
            )
            .values(
                **self._ended(now, TaskStatus.FAILED, error_code=REAPED_CODE),
                **_NOTHING_BILLED,
                error_message=message,
                updated_at=now,
            )
            .returning(tasks.c.attempts, tasks.c.engine, tasks.c.max_attempts, *_ENDED)
        )
        async with self._write.begin() as conn:
            reaped = list(await conn.execute(stmt))
            await settle_ended(conn, [r._mapping for r in reaped], now, REAPED_CODE)
            if reaped:
                rows = [
                    dict(task_id=r.id, at=now, kind="reaped",
                         detail={"code": REAPED_CODE, "attempts": r.attempts})
                    for r in reaped
                ]  # fmt: skip
                await conn.execute(sa.insert(task_events), rows)
        self._cache.drop(*(r.id for r in reaped))
        for r in reaped:
            log_transition(r.id, RUNNING, TaskStatus.FAILED.value, r.engine, r.attempts,
                           r.max_attempts, f"{REAPED_CODE}: lease expired")  # fmt: skip
        return len(reaped)

    # -- inspection -------------------------------------------------------------------------

    async def events(self, task_id: str) -> list[dict[str, Any]]:
        query = (
            sa.select(task_events.c.at, task_events.c.kind, task_events.c.detail)
            .where(task_events.c.task_id == task_id)
            .order_by(task_events.c.id)
        )
        async with self._read.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def existing_task_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` have a task row (the sweeper's orphan check), 500 per query."""
        found: set[str] = set()
        async with self._read.connect() as conn:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                query = sa.select(tasks.c.id).where(tasks.c.id.in_(chunk))
                found.update(await conn.scalars(query))
        return found

    async def counts(self) -> dict[str, int]:
        """Tasks per status, every status present (zero when none)."""
        query = sa.select(tasks.c.status, sa.func.count()).group_by(tasks.c.status)
        out = {status.value: 0 for status in _STATUSES}
        async with self._read.connect() as conn:
            for status, count in await conn.execute(query):
                out[status] = int(count)
        return out

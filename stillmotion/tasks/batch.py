"""Group commit for submits: concurrent ``create_task`` calls share one write transaction.

Each submit is an INSERT into ``tasks`` plus one into ``task_events``. Under load, sending
them one transaction each costs a full round of driver hops and a commit per task; here the
submits that arrive while a transaction is in flight are written together by one
``executemany``. A batch that fails is retried row by row, so one bad row fails only itself.

On SQLite the batch runs on a plain ``sqlite3`` connection owned by one dedicated thread
(:class:`SqliteBatchWriter`): the whole transaction is one hop off the event loop, and the
rows go to the driver as they are, without SQLAlchemy's per-statement machinery (compile
cache, pool checkout, type processors), which cost twice the database's own work per row,
and JSON columns are encoded with orjson (a tenth of ``json.dumps``'s time).

Money joins the same transaction (``tasks/admission.py``): the batch reads and locks the
rows of its accounts and keys, decides each submit in arrival order (rate, PENDING cap,
daily budget, balance), and writes the accepted tasks with their holds, the accounts' new
``held`` and rate state, and the ``Idempotency-Key`` rows. A refused submit is not an error
of the batch: it fails alone, with its own code, and writes nothing. The transaction's body
is one synchronous function over a small adapter (:class:`_Db`), run on the ``sqlite3``
connection in the writer's thread or on SQLAlchemy's connection through ``run_sync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from stillmotion.errors import ServiceError
from stillmotion.tasks.admission import Ask, Holder, decide
from stillmotion.tasks.db import connect_sqlite
from stillmotion.tasks.ledger import account_deltas, hold_entry
from stillmotion.tasks.notify import NOTIFY_SQL
from stillmotion.tasks.schema import idempotency_keys, ledger, task_events, tasks

#: how long an ``Idempotency-Key`` answers with its first task
IDEMPOTENCY_SECONDS = 24 * 3600
DAY = 86400.0


@dataclass
class Submit:
    """One task to create: its rows, what admission must allow, its idempotency row."""

    task: dict[str, Any]
    event: dict[str, Any]
    ask: Ask | None = None
    idem: dict[str, Any] | None = None
    future: asyncio.Future[None] | None = field(default=None, repr=False)


class _Db(Protocol):
    dialect: str

    def rows(self, sql: str, params: dict[str, Any]) -> list[Sequence[Any]]: ...

    def run(self, sql: str, params: dict[str, Any]) -> None: ...

    def insert(self, table: sa.Table, rows: list[dict[str, Any]]) -> None: ...


class _Sqlite:
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def rows(self, sql: str, params: dict[str, Any]) -> list[Sequence[Any]]:
        return list(self.conn.execute(sql, params).fetchall())

    def run(self, sql: str, params: dict[str, Any]) -> None:
        self.conn.execute(sql, params)

    def insert(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        self.conn.executemany(*_insert(table, rows))


class _Sa:
    def __init__(self, conn: Connection):
        self.conn = conn
        self.dialect = conn.dialect.name

    def rows(self, sql: str, params: dict[str, Any]) -> list[Sequence[Any]]:
        return [tuple(r) for r in self.conn.execute(sa.text(sql), params)]

    def run(self, sql: str, params: dict[str, Any]) -> None:
        self.conn.execute(sa.text(sql), params)

    def insert(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        self.conn.execute(sa.insert(table), rows)


def _in(prefix: str, values: Sequence[str]) -> tuple[str, dict[str, Any]]:
    names = [f"{prefix}{i}" for i in range(len(values))]
    return ", ".join(f":{n}" for n in names), dict(zip(names, values, strict=True))


ACCOUNT_DELTA = "UPDATE accounts SET balance = balance + :db, held = held + :dh WHERE id = :aid"
STALE_IDEMPOTENCY = (
    "DELETE FROM idempotency_keys WHERE key_id = :k AND idem_key = :i AND created_at < :c"
)
_LIMITS = "max_pending, submit_rate, daily_budget, rate_tokens, rate_at"


def _holders(db: _Db, kind: str, ids: list[str]) -> dict[str, Holder]:
    table, extra = ("accounts", ", balance, held") if kind == "account" else ("api_keys", "")
    marks, params = _in("h", ids)
    lock = " FOR UPDATE" if db.dialect == "postgresql" else ""
    sql = f"SELECT id, {_LIMITS}{extra} FROM {table} WHERE id IN ({marks}) ORDER BY id{lock}"
    out: dict[str, Holder] = {}
    for row in db.rows(sql, params):
        holder = Holder(kind, str(row[0]), row[1], row[2], row[3], row[4], row[5])
        if extra:
            holder.balance, holder.held = int(row[6]), int(row[7])
        out[holder.id] = holder
    return out


def _count(db: _Db, column: str, holders: dict[str, Holder], now: float) -> None:
    """Fill in the PENDING counts and the day's spend where a limit asks for them."""
    capped = [h.id for h in holders.values() if h.max_pending is not None]
    if capped:
        marks, params = _in("c", capped)
        sql = (f"SELECT {column}, count(*) FROM tasks WHERE status = 'PENDING' "
               f"AND {column} IN ({marks}) GROUP BY {column}")  # fmt: skip
        for hid, count in db.rows(sql, params):
            holders[hid].pending = int(count)
    budgeted = [h.id for h in holders.values() if h.daily_budget is not None]
    if budgeted:
        marks, params = _in("b", budgeted)
        params["day"] = now - now % DAY
        sql = (f"SELECT {column}, coalesce(sum(coalesce(cost, quote)), 0) FROM tasks "
               f"WHERE {column} IN ({marks}) AND created_at >= :day GROUP BY {column}")  # fmt: skip
        for hid, spent in db.rows(sql, params):
            holders[hid].spent = int(spent)


def _admit(db: _Db, items: Sequence[Submit]) -> list[ServiceError | None]:
    asks = [item.ask for item in items if item.ask is not None]
    if not asks:
        return [None] * len(items)
    now = max(float(item.task["created_at"]) for item in items)
    accounts = _holders(db, "account", sorted({a.account_id for a in asks}))
    keys = _holders(db, "key", sorted({a.key_id for a in asks}))
    _count(db, "account_id", accounts, now)
    _count(db, "key_id", keys, now)
    outcomes: list[ServiceError | None] = []
    for item in items:
        ask = item.ask
        if ask is None:
            outcomes.append(None)
            continue
        account = accounts.setdefault(ask.account_id, Holder("account", ask.account_id))
        key = keys.setdefault(ask.key_id, Holder("key", ask.key_id))
        outcomes.append(decide(ask, account, key, float(item.task["created_at"])))
    _save_rate_state(db, "api_keys", keys.values())
    _save_rate_state(db, "accounts", accounts.values())
    return outcomes


def _save_rate_state(db: _Db, table: str, holders: Any) -> None:
    for h in holders:
        if h.touched:
            sql = f"UPDATE {table} SET rate_tokens = :t, rate_at = :a WHERE id = :id"
            db.run(sql, {"t": h.rate_tokens, "a": h.rate_at, "id": h.id})


def write_batch(db: _Db, items: Sequence[Submit]) -> list[ServiceError | None]:
    """The whole transaction body: admission, then the accepted submits' rows."""
    outcomes = _admit(db, items)
    accepted = [item for item, refused in zip(items, outcomes, strict=True) if refused is None]
    if not accepted:
        return outcomes
    db.insert(tasks, [item.task for item in accepted])
    db.insert(task_events, [item.event for item in accepted])
    if db.dialect == "postgresql":  # delivered to the listening workers at commit
        db.run(NOTIFY_SQL, {})
    holds = [
        hold_entry(item.task["id"], item.ask.account_id, item.ask.quote, item.task["created_at"])
        for item in accepted
        if item.ask is not None and item.ask.hold
    ]
    if holds:
        db.insert(ledger, holds)
        for update in account_deltas(holds):
            db.run(ACCOUNT_DELTA, update)
    idems = [item.idem for item in accepted if item.idem is not None]
    for idem in idems:  # a row past its 24 h gives way to the new one
        cutoff = idem["created_at"] - IDEMPOTENCY_SECONDS
        db.run(STALE_IDEMPOTENCY, {"k": idem["key_id"], "i": idem["idem_key"], "c": cutoff})
    if idems:
        db.insert(idempotency_keys, idems)
    return outcomes


class SqliteBatchWriter:
    """Writes batches in one ``BEGIN IMMEDIATE`` transaction on a plain ``sqlite3``
    connection.

    Not thread-safe: call :meth:`write` and :meth:`close` from one thread only (the batcher's).
    The connection is opened on first use, in that thread.
    """

    def __init__(self, url: sa.URL):
        self._url = url
        self._conn: sqlite3.Connection | None = None

    def write(self, items: Sequence[Submit]) -> list[ServiceError | None]:
        if self._conn is None:
            self._conn = connect_sqlite(self._url)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes = write_batch(_Sqlite(conn), items)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.IntegrityError):  # the same error as on PostgreSQL
                raise sa.exc.IntegrityError("INSERT", None, exc) from exc
            raise
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return outcomes

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _insert(table: sa.Table, rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """``INSERT INTO table (...) VALUES (:name, ...)`` for the first row's keys, and the rows
    with their JSON columns encoded as SQLAlchemy's ``sa.JSON`` stores them on SQLite."""
    names = list(rows[0])
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES (:{', :'.join(names)})"
    json_names = [n for n in names if isinstance(table.c[n].type, sa.JSON)]
    if json_names:
        rows = [dict(row) for row in rows]
        for row in rows:
            for name in json_names:
                if row[name] is not None:
                    row[name] = orjson.dumps(row[name]).decode()
    return sql, rows


class InsertBatcher:
    def __init__(
        self, engine: AsyncEngine, max_batch: int = 128, sqlite: SqliteBatchWriter | None = None
    ):
        self._engine = engine
        self._sqlite = sqlite
        self._thread = ThreadPoolExecutor(1, "task-inserts") if sqlite else None
        self._max = max_batch
        self._queue: asyncio.Queue[Submit] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def insert(self, item: Submit) -> None:
        """Write ``item`` in the next batch; raises its refusal (``ServiceError``) or the
        database's error."""
        if self._queue is None or self._writer is None or self._writer.done():
            self._queue = asyncio.Queue()
            self._writer = asyncio.create_task(self._run(self._queue), name="task-inserts")
        item.future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(item)
        await item.future

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._thread is not None and self._sqlite is not None:
            self._thread.submit(self._sqlite.close).result()
            self._thread.shutdown(wait=True)
            self._thread = self._sqlite = None

    async def _run(self, queue: asyncio.Queue[Submit]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self._max and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                outcomes = await self._write(batch)
            except Exception:
                await self._write_one_by_one(batch)
            else:
                for item, refused in zip(batch, outcomes, strict=True):
                    _resolve(item, refused)

    async def _write(self, batch: list[Submit]) -> list[ServiceError | None]:
        if self._thread is not None and self._sqlite is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._thread, self._sqlite.write, batch)
        async with self._engine.begin() as conn:
            return await conn.run_sync(lambda sync: write_batch(_Sa(sync), batch))

    async def _write_one_by_one(self, batch: list[Submit]) -> None:
        for item in batch:
            try:
                (refused,) = await self._write([item])
            except Exception as exc:
                _resolve(item, exc)
            else:
                _resolve(item, refused)


def _resolve(item: Submit, error: BaseException | None) -> None:
    future = item.future
    if future is None or future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)

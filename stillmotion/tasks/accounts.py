"""Accounts: create, list, show, top up, adjust, set limits; and usage reports.

Every change of money is a ledger entry written with the account's columns in one
transaction (``tasks/ledger.py``). A top-up or adjustment may carry a ``ref``: the same ref
twice is one entry (idempotent, as a transfer id in TigerBeetle).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from stillmotion.tasks import ledger
from stillmotion.tasks.rows import AccountRow, ApiKeyRow, Limits
from stillmotion.tasks.schema import accounts, api_keys, tasks
from stillmotion.tasks.schema import ledger as ledger_table

#: sentinel for :meth:`Accounts.set`: leave this field as it is
KEEP: Any = object()
GROUPS = {"day", "model", "key"}


class Accounts:
    def __init__(self, read: AsyncEngine, write: AsyncEngine, clock: Callable[[], float]):
        self._read = read
        self._write = write
        self._clock = clock

    async def create(self, name: str, balance: int = 0, *, price_group: str | None = None) -> str:
        """A new account's id; an opening ``balance`` is a top-up entry."""
        account_id, now = secrets.token_hex(6), self._clock()
        async with self._write.begin() as conn:
            await conn.execute(
                sa.insert(accounts).values(
                    id=account_id, name=name, created_at=now, price_group=price_group
                )
            )
            if balance:
                entry = ledger.entry(
                    f"topup:{uuid.uuid4().hex}", account_id, "topup", balance, now,
                    balance_delta=balance, detail={"note": "opening"},
                )  # fmt: skip
                await ledger.write(conn, [entry])
        return account_id

    async def get(self, account_id: str) -> AccountRow | None:
        async with self._read.connect() as conn:
            row = (
                await conn.execute(sa.select(accounts).where(accounts.c.id == account_id))
            ).first()
        return AccountRow.from_row(row._mapping) if row else None

    async def all(self) -> list[AccountRow]:
        query = sa.select(accounts).order_by(accounts.c.created_at, accounts.c.id)
        async with self._read.connect() as conn:
            return [AccountRow.from_row(r._mapping) for r in await conn.execute(query)]

    async def move(
        self, account_id: str, amount: int, *, kind: str = "topup", ref: str | None = None,
        note: str | None = None,
    ) -> bool:  # fmt: skip
        """Add ``amount`` (an ``adjustment`` may be negative) to the balance. ``False`` when
        ``ref`` was already used (nothing changes). ``LookupError``: no such account."""
        if kind not in ("topup", "adjustment"):
            raise ValueError(f"unknown movement {kind!r}")
        entry_id = f"{kind}:{account_id}:{ref}" if ref else f"{kind}:{uuid.uuid4().hex}"
        detail = {"note": note} if note else None
        entry = ledger.entry(
            entry_id, account_id, kind, amount, self._clock(), balance_delta=amount, detail=detail
        )
        async with self._write.begin() as conn:
            if not await conn.scalar(sa.select(accounts.c.id).where(accounts.c.id == account_id)):
                raise LookupError(f"no account {account_id!r}")
            seen = sa.select(ledger_table.c.id).where(ledger_table.c.id == entry_id)
            if await conn.scalar(seen):
                return False
            await ledger.write(conn, [entry])
        return True

    async def set(
        self, account_id: str, *, key_id: str | None = None, name: Any = KEEP,
        price_group: Any = KEEP, max_concurrent: Any = KEEP, max_pending: Any = KEEP,
        submit_rate: Any = KEEP, daily_budget: Any = KEEP,
    ) -> bool:  # fmt: skip
        """Change an account's (or, with ``key_id``, one of its keys') settings; ``None``
        clears a limit. ``False``: no such account (or key of it)."""
        fields = dict(name=name, price_group=price_group, max_concurrent=max_concurrent,
                      max_pending=max_pending, submit_rate=submit_rate,
                      daily_budget=daily_budget)  # fmt: skip
        values = {k: v for k, v in fields.items() if v is not KEEP}
        if key_id is None:
            stmt = sa.update(accounts).where(accounts.c.id == account_id)
        else:
            if "price_group" in values:
                raise ValueError("a price group belongs to the account, not to a key")
            stmt = sa.update(api_keys).where(
                api_keys.c.id == key_id, api_keys.c.account_id == account_id
            )
        async with self._write.begin() as conn:
            if not values:
                return bool(await conn.scalar(sa.select(sa.literal(1)).where(stmt.whereclause)))  # type: ignore[arg-type]
            if "submit_rate" in values:  # a new rate starts with a full bucket
                values.update(rate_tokens=None, rate_at=None)
            return bool((await conn.execute(stmt.values(**values))).rowcount)

    async def key_limits(self, key_id: str) -> Limits | None:
        async with self._read.connect() as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).first()
        return Limits.from_row(row._mapping) if row else None

    async def keys(self, account_id: str) -> list[ApiKeyRow]:
        """The account's keys, revoked ones too, oldest first."""
        query = (
            sa.select(api_keys)
            .where(api_keys.c.account_id == account_id)
            .order_by(api_keys.c.created_at, api_keys.c.id)
        )
        async with self._read.connect() as conn:
            return [ApiKeyRow.from_row(r._mapping) for r in await conn.execute(query)]

    async def key(self, key_id: str) -> ApiKeyRow | None:
        """One key by id (revoked or not), with its account's price group."""
        query = (
            sa.select(api_keys, accounts.c.price_group)
            .select_from(api_keys.outerjoin(accounts, accounts.c.id == api_keys.c.account_id))
            .where(api_keys.c.id == key_id)
        )
        async with self._read.connect() as conn:
            row = (await conn.execute(query)).first()
        return ApiKeyRow.from_row(row._mapping) if row else None

    async def entries(self, account_id: str, limit: int = 100) -> list[dict[str, Any]]:
        query = (
            sa.select(ledger_table)
            .where(ledger_table.c.account_id == account_id)
            .order_by(ledger_table.c.at.desc(), ledger_table.c.id)
            .limit(limit)
        )
        async with self._read.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def usage(
        self, account_id: str | None, start: float | None, end: float | None, group_by: str
    ) -> list[dict[str, Any]]:
        """Ended tasks per ``group_by`` (``day`` UTC of the end, ``model`` or ``key``): task
        count, billed milliseconds and cost in micros; ``account_id=None``: all accounts."""
        if group_by not in GROUPS:
            raise ValueError(f"group_by must be one of {sorted(GROUPS)}")
        column = {"model": tasks.c.model, "key": tasks.c.key_id, "day": tasks.c.ended_at}[group_by]
        where: list[sa.ColumnElement[bool]] = [tasks.c.cost.is_not(None)]
        if account_id is not None:
            where.append(tasks.c.account_id == account_id)
        if start is not None:
            where.append(tasks.c.ended_at >= start)
        if end is not None:
            where.append(tasks.c.ended_at < end)
        query = sa.select(column.label("g"), tasks.c.status, tasks.c.billed_ms, tasks.c.cost).where(
            *where
        )
        groups: dict[str, dict[str, Any]] = {}
        async with self._read.connect() as conn:
            rows = await conn.stream(query.execution_options(yield_per=1000))
            async for g, status, billed_ms, cost in rows:
                name = _day(g) if group_by == "day" else str(g)
                item = groups.setdefault(name, {group_by: name, "tasks": 0, "succeeded": 0,
                                                "billed_ms": 0, "cost": 0})  # fmt: skip
                item["tasks"] += 1
                item["succeeded"] += status == "SUCCEEDED"
                item["billed_ms"] += int(billed_ms or 0)
                item["cost"] += int(cost or 0)
        return [groups[k] for k in sorted(groups)]


def _day(epoch: float) -> str:
    return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d")

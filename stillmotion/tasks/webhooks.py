"""Completion webhooks, the store's side: endpoints, secrets, the outbox and its attempts.

A task's terminal transition (every one: ``store.finish_*``, ``cancel_pending``,
``retry_later``'s last attempt, ``reap_expired``, a dead worker's last attempt) calls
:func:`enqueue` in its own transaction, next to its money settlement (``ledger.settle_ended``
and ``finish_success``'s capture): one ``webhook_deliveries`` row per live endpoint of the
task's account, and one for the submit's ``X-Stillmotion-Callback``. A delivery's id is the
``webhook-id`` header, ``msg_<task id>_<endpoint id>`` (``msg_<task id>_cb`` for the callback),
so a task has at most one delivery per endpoint whatever happens, and a receiver can drop
repeats by it. The body is rendered when it is sent, from the task row.

Workers claim due deliveries with a lease (``worker/webhooks.py``: PostgreSQL ``FOR UPDATE
SKIP LOCKED``, SQLite's ``BEGIN IMMEDIATE`` write lock), POST them and record each attempt
here; a claim's ``claim_id`` fences its record, so a sender whose lease ran out does not
overwrite the state of the one that took over (its attempt is still recorded).

Secrets follow Standard Webhooks: ``whsec_`` and the base64 of 24 random bytes. A registered
endpoint has its own (shown once, at creation); the callbacks an account's submits name are
signed with the account's *callback secret*, made on first use (:meth:`Webhooks.callback_secret`).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stillmotion.media.fetch import check_url_syntax
from stillmotion.tasks.schema import (
    accounts,
    tasks,
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_secrets,
)

SECRET_PREFIX = "whsec_"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
#: the submit header naming a callback URL for that task
CALLBACK_HEADER = "X-Stillmotion-Callback"
_D = webhook_deliveries
_E = webhook_endpoints


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def delivery_id(task_id: str, endpoint_id: str | None) -> str:
    """The ``webhook-id`` of a task's delivery to an endpoint (``None``: its callback)."""
    return f"msg_{task_id}_{endpoint_id or 'cb'}"


def check_callback_url(url: str, what: str = f"the {CALLBACK_HEADER} header") -> None:
    """The submit-time rules of ``img_url``: an absolute http(s) URL, no user info, a valid
    host (``errors.InvalidURL``, a 400 ``InvalidParameter``, naming ``what``). The addresses
    are checked when a delivery is made (``worker/webhooks.py``)."""
    check_url_syntax(url, what)


def _insert(conn: AsyncConnection) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` on the connection's dialect."""
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(_D)


_OUTBOX_COLUMNS = ["id", "task_id", "account_id", "endpoint_id", "url", "status", "created_at",
                   "next_at"]  # fmt: skip


async def enqueue(conn: AsyncConnection, task_ids: Iterable[str], at: float) -> None:
    """The outbox rows of tasks that just ended (caller's transaction): one per live
    endpoint of the task's account, one for the task's callback URL. Repeats add nothing."""
    ids = list(dict.fromkeys(task_ids))
    if not ids:
        return
    when = sa.literal(at, sa.Float(precision=53))
    registered = (
        sa.select(
            sa.literal("msg_") + tasks.c.id + sa.literal("_") + _E.c.id,
            tasks.c.id,
            tasks.c.account_id,
            _E.c.id,
            _E.c.url,
            sa.literal(PENDING),
            when,
            when,
        )  # fmt: skip
        .select_from(tasks.join(_E, _E.c.account_id == tasks.c.account_id))
        .where(tasks.c.id.in_(ids), _E.c.removed_at.is_(None))
    )
    callback = sa.select(
        sa.literal("msg_") + tasks.c.id + sa.literal("_cb"),
        tasks.c.id, tasks.c.account_id, sa.null(), tasks.c.callback_url, sa.literal(PENDING),
        when, when,
    ).where(tasks.c.id.in_(ids), tasks.c.callback_url.is_not(None))  # fmt: skip
    both = sa.union_all(registered, callback)  # one statement on the finish's hot path
    await conn.execute(_insert(conn).from_select(_OUTBOX_COLUMNS, both).on_conflict_do_nothing())


@dataclass(frozen=True)
class EndpointRow:
    id: str
    account_id: str
    url: str
    created_at: float
    removed_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> EndpointRow:
        removed = row.removed_at
        return cls(row.id, row.account_id, row.url, float(row.created_at),
                   None if removed is None else float(removed))  # fmt: skip


@dataclass(frozen=True)
class DeliveryJob:
    """A claimed delivery: what to send, and with which secret (``None``: cannot be signed,
    ``refusal`` says why: the endpoint was removed, or the task has no account)."""

    id: str
    task_id: str
    account_id: str | None
    endpoint_id: str | None
    url: str
    attempts: int  # made before this one
    created_at: float
    claim_id: str
    secret: str | None
    refusal: str | None = None


class Webhooks:
    """``store.webhooks``: endpoints, secrets, claiming and recording deliveries."""

    def __init__(self, read: AsyncEngine, write: AsyncEngine, clock: Callable[[], float]):
        self._read = read
        self._write = write
        self._clock = clock

    # -- endpoints and secrets --------------------------------------------------------------

    async def add_endpoint(self, account_id: str, url: str) -> tuple[EndpointRow, str]:
        """Register ``url`` for all of the account's tasks; the row and its secret (the only
        time the secret is handed out). ``LookupError``: no such account."""
        check_callback_url(url, "the endpoint URL")
        now = float(self._clock())
        row = EndpointRow("we_" + secrets.token_hex(6), account_id, url, now, None)
        secret = new_secret()
        async with self._write.begin() as conn:
            if not await conn.scalar(sa.select(accounts.c.id).where(accounts.c.id == account_id)):
                raise LookupError(f"no account {account_id!r}")
            await conn.execute(
                sa.insert(_E).values(
                    id=row.id, account_id=account_id, url=url, secret=secret, created_at=now
                )  # fmt: skip
            )
        return row, secret

    async def endpoints(self, account_id: str | None = None) -> list[EndpointRow]:
        """Live endpoints (of one account), oldest first."""
        query = sa.select(_E).where(_E.c.removed_at.is_(None)).order_by(_E.c.created_at, _E.c.id)
        if account_id is not None:
            query = query.where(_E.c.account_id == account_id)
        async with self._read.connect() as conn:
            return [EndpointRow.from_row(r) for r in await conn.execute(query)]

    async def endpoint(self, endpoint_id: str) -> EndpointRow | None:
        async with self._read.connect() as conn:
            row = (await conn.execute(sa.select(_E).where(_E.c.id == endpoint_id))).first()
        return EndpointRow.from_row(row) if row else None

    async def remove_endpoint(self, endpoint_id: str) -> bool:
        """Stop sending to it: new tasks get no delivery, pending ones fail. ``False``: no
        live endpoint has this id."""
        stmt = (
            sa.update(_E)
            .where(_E.c.id == endpoint_id, _E.c.removed_at.is_(None))
            .values(removed_at=self._clock())
        )
        async with self._write.begin() as conn:
            return bool((await conn.execute(stmt)).rowcount)

    async def callback_secret(self, account_id: str) -> str:
        """The account's secret for its submits' callbacks, made on first use."""
        async with self._write.begin() as conn:
            if not await conn.scalar(sa.select(accounts.c.id).where(accounts.c.id == account_id)):
                raise LookupError(f"no account {account_id!r}")
            return await self._callback_secret(conn, account_id)

    async def _callback_secret(self, conn: AsyncConnection, account_id: str) -> str:
        module = postgresql if conn.dialect.name == "postgresql" else sqlite
        values = dict(account_id=account_id, secret=new_secret(), created_at=self._clock())
        await conn.execute(module.insert(webhook_secrets).values(**values).on_conflict_do_nothing())
        query = sa.select(webhook_secrets.c.secret).where(
            webhook_secrets.c.account_id == account_id
        )
        return str(await conn.scalar(query))

    # -- the delivery loop ------------------------------------------------------------------

    def _due(self, now: float) -> sa.ColumnElement[bool]:
        free = sa.or_(_D.c.lease_until.is_(None), _D.c.lease_until < now)
        return sa.and_(_D.c.status == PENDING, _D.c.next_at <= now, free)

    async def any_due(self) -> bool:
        """A cheap read first, so an idle sender never takes SQLite's write lock."""
        query = sa.select(_D.c.id).where(self._due(float(self._clock()))).limit(1)
        async with self._read.connect() as conn:
            return (await conn.scalar(query)) is not None

    async def claim(self, claim_id: str, lease_seconds: float, limit: int) -> list[DeliveryJob]:
        """Lease up to ``limit`` due deliveries, oldest due first."""
        now = float(self._clock())
        pick = sa.select(_D.c.id).where(self._due(now)).order_by(_D.c.next_at).limit(limit)
        async with self._write.begin() as conn:
            if conn.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            ids = list(await conn.scalars(pick))
            if not ids:
                return []
            stmt = (
                sa.update(_D)
                .where(_D.c.id.in_(ids))
                .values(claim_id=claim_id, lease_until=now + lease_seconds)
                .returning(_D)
            )
            rows = list(await conn.execute(stmt))
            wanted = [r.endpoint_id for r in rows if r.endpoint_id is not None]
            found = {}
            if wanted:
                query = sa.select(_E.c.id, _E.c.secret, _E.c.removed_at).where(_E.c.id.in_(wanted))
                found = {r.id: r for r in await conn.execute(query)}
            jobs = []
            for r in sorted(rows, key=lambda r: (r.next_at, r.id)):
                secret, refusal = None, None
                if r.endpoint_id is not None:
                    ep = found.get(r.endpoint_id)
                    if ep is None or ep.removed_at is not None:
                        refusal = f"endpoint {r.endpoint_id} was removed"
                    else:
                        secret = ep.secret
                elif r.account_id is None:
                    refusal = "the task has no account to sign its callback with"
                else:
                    secret = await self._callback_secret(conn, r.account_id)
                jobs.append(DeliveryJob(
                    r.id, r.task_id, r.account_id, r.endpoint_id, r.url, int(r.attempts),
                    float(r.created_at), claim_id, secret, refusal,
                ))  # fmt: skip
        return jobs

    async def record(
        self,
        job: DeliveryJob,
        *,
        at: float,
        duration_ms: float,
        status_code: int | None,
        error: str | None,
        status: str,
        next_at: float | None = None,
    ) -> bool:
        """One attempt of ``job`` and the delivery's new state (``status``: delivered,
        failed, or pending again at ``next_at``). ``False``: its lease was taken over (the
        attempt is recorded all the same)."""
        ended = at if status != PENDING else None
        update = (
            sa.update(_D)
            .where(_D.c.id == job.id, _D.c.claim_id == job.claim_id, _D.c.status == PENDING)
            .values(
                status=status,
                attempts=_D.c.attempts + 1,
                last_status=status_code,
                last_error=error,
                next_at=next_at if next_at is not None else _D.c.next_at,
                claim_id=None,
                lease_until=None,
                ended_at=ended,
            )  # fmt: skip
        )
        attempt = dict(delivery_id=job.id, at=at, duration_ms=duration_ms,
                       status_code=status_code, error=error)  # fmt: skip
        async with self._write.begin() as conn:
            await conn.execute(sa.insert(webhook_attempts).values(**attempt))
            return bool((await conn.execute(update)).rowcount)

    # -- inspection -------------------------------------------------------------------------

    async def deliveries(
        self, *, task_id: str | None = None, account_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Deliveries (newest first), each with its ``attempts`` (oldest first)."""
        query = sa.select(_D).order_by(_D.c.created_at.desc(), _D.c.id).limit(limit)
        if task_id is not None:
            query = query.where(_D.c.task_id == task_id)
        if account_id is not None:
            query = query.where(_D.c.account_id == account_id)
        skip = ("claim_id",)
        async with self._read.connect() as conn:
            out = [
                {k: v for k, v in r._mapping.items() if k not in skip}
                for r in await conn.execute(query)
            ]
            ids = [d["id"] for d in out]
            tries: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
            if ids:
                a = webhook_attempts
                attempts = (
                    sa.select(a.c.delivery_id, a.c.at, a.c.duration_ms, a.c.status_code, a.c.error)
                    .where(a.c.delivery_id.in_(ids))
                    .order_by(a.c.id)
                )
                for r in await conn.execute(attempts):
                    item = dict(r._mapping)
                    tries[item.pop("delivery_id")].append(item)
        for d in out:
            d["attempt_count"] = d.pop("attempts")
            d["attempts"] = tries[d["id"]]
        return out

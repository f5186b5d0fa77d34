"""The ledger: every movement of money is an append-only row, written in the transaction of
the task transition (or operator action) that causes it.

The model is TigerBeetle's two-phase transfer. A submit with billing on writes a *hold*
(``hold:<task id>``: ``held += quote``). The task's terminal transition resolves it exactly
once (``settle:<task id>``, unique on ``pending_id = hold:<task id>``): SUCCEEDED *captures*
what was produced (``balance -= cost``, ``held -= hold``), FAILED and CANCELED *release* the
whole hold (``held -= hold``). Top-ups and adjustments change ``balance``. A relayed task
that upstream finished but we could not deliver also writes a *loss* (no effect on the
customer's balance: what the operator paid upstream for nothing).

Every entry carries its ``balance_delta`` and ``held_delta``, and each account's
``balance``/``held`` columns are changed by exactly those deltas in the same transaction, so
``accounts.balance == sum(balance_delta)`` always (``tasks/audit.py`` checks it). Amounts are
integer micros (``stillmotion.money``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from stillmotion.domain import UPSTREAM_USAGE
from stillmotion.money import cost_micros
from stillmotion.tasks import webhooks
from stillmotion.tasks.schema import accounts, ledger

#: engine-state key a relay sets once upstream reported success (its usage), so that a task
#: that fails after that (the result could not be downloaded) is recorded as our loss

Entry = dict[str, Any]


def hold_id(task_id: str) -> str:
    return f"hold:{task_id}"


def settle_id(task_id: str) -> str:
    return f"settle:{task_id}"


def entry(
    entry_id: str,
    account_id: str,
    kind: str,
    amount: int,
    at: float,
    *,
    balance_delta: int = 0,
    held_delta: int = 0,
    task_id: str | None = None,
    pending_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> Entry:
    return dict(
        id=entry_id, account_id=account_id, task_id=task_id, kind=kind, amount=int(amount),
        balance_delta=int(balance_delta), held_delta=int(held_delta), pending_id=pending_id,
        at=at, detail=detail,
    )  # fmt: skip


def hold_entry(task_id: str, account_id: str, amount: int, at: float) -> Entry:
    return entry(hold_id(task_id), account_id, "hold", amount, at, held_delta=amount,
                 task_id=task_id)  # fmt: skip


def capture_entry(
    task_id: str, account_id: str, hold: int, cost: int, billed_ms: int, at: float
) -> Entry:
    detail = {"hold": hold, "billed_ms": billed_ms, "released": max(0, hold - cost)}
    return entry(settle_id(task_id), account_id, "capture", cost, at, balance_delta=-cost,
                 held_delta=-hold, task_id=task_id, pending_id=hold_id(task_id),
                 detail=detail)  # fmt: skip


def release_entry(task_id: str, account_id: str, hold: int, at: float, why: str) -> Entry:
    return entry(settle_id(task_id), account_id, "release", hold, at, held_delta=-hold,
                 task_id=task_id, pending_id=hold_id(task_id), detail={"why": why})  # fmt: skip


def account_deltas(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    """Per account, the sum of the entries' deltas, in account id order (the order every
    writer locks accounts in, so two transactions never wait on each other in a cycle)."""
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in entries:
        if e["balance_delta"] or e["held_delta"]:
            sums[e["account_id"]][0] += e["balance_delta"]
            sums[e["account_id"]][1] += e["held_delta"]
    return [{"aid": aid, "db": db, "dh": dh} for aid, (db, dh) in sorted(sums.items()) if db or dh]


ACCOUNT_DELTA = (
    sa.update(accounts)
    .where(accounts.c.id == sa.bindparam("aid"))
    .values(
        balance=accounts.c.balance + sa.bindparam("db", type_=sa.BigInteger()),
        held=accounts.c.held + sa.bindparam("dh", type_=sa.BigInteger()),
    )
)


async def write(conn: AsyncConnection, entries: list[Entry]) -> None:
    """Append ``entries`` and move their accounts' columns by their deltas (caller's
    transaction). A second resolution of one hold violates ``pending_id``'s uniqueness and
    rolls the whole transaction back, the task transition with it."""
    if not entries:
        return
    for update in account_deltas(entries):
        await conn.execute(ACCOUNT_DELTA, update)
    await conn.execute(sa.insert(ledger), entries)


# -- what a finished task costs ------------------------------------------------------------


def billed_millis(result: Mapping[str, Any]) -> int:
    """The output duration to bill, in ms: the upstream's reported usage for a relayed task,
    else the produced MP4's (frames / fps). Every usage shape (catalog ``usage``) names it:
    ``output_video_duration`` (wan2.6), ``video_duration`` (ratio), ``duration`` (sr)."""
    usage = result.get("usage") or {}
    seconds = usage.get("output_video_duration", usage.get("video_duration", usage.get("duration")))
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
        return round(float(seconds) * 1000)
    fps = float(result.get("fps") or 0)
    frames = int(result.get("num_frames") or 0)
    return round(frames * 1000 / fps) if fps > 0 else 0


@dataclass(frozen=True)
class Ended:
    """A task as its terminal transition's ``RETURNING`` sees it: enough to settle it."""

    id: str
    account_id: str | None
    price: int
    hold: int | None
    engine_state: Mapping[str, Any] | None = None


#: what a terminal transition returns for :func:`settle_failed`
ENDED_COLUMNS = ("id", "account_id", "price", "hold", "engine_state")


def failed_entries(task: Ended, at: float, why: str) -> list[Entry]:
    """A FAILED or CANCELED task: its hold released; a loss if upstream had delivered."""
    out: list[Entry] = []
    if task.hold is not None and task.account_id is not None:
        out.append(release_entry(task.id, task.account_id, task.hold, at, why))
    usage = (task.engine_state or {}).get(UPSTREAM_USAGE)
    if isinstance(usage, dict) and task.account_id is not None:
        millis = billed_millis({"usage": usage})
        detail = {"usage": usage, "billed_ms": millis, "why": why}
        out.append(entry(f"loss:{task.id}", task.account_id, "loss",
                         cost_micros(task.price, millis), at, task_id=task.id,
                         detail=detail))  # fmt: skip
    return out


async def settle_ended(
    conn: AsyncConnection, ended: Iterable[Mapping[Any, Any]], at: float, why: str
) -> None:
    """Release the holds of tasks that just ended FAILED or CANCELED (``ended``: rows with
    :data:`ENDED_COLUMNS`), in the caller's transaction, and write their webhook deliveries
    to the outbox there too (``tasks/webhooks.py``): every terminal transition settles here
    or in ``finish_success``'s capture, so none ends without them."""
    entries: list[Entry] = []
    ids: list[str] = []
    for row in ended:
        task = Ended(**{name: row[name] for name in ENDED_COLUMNS if name in row})
        entries.extend(failed_entries(task, at, why))
        ids.append(task.id)
    await write(conn, entries)
    await webhooks.enqueue(conn, ids, at)

"""``stillmotion billing verify``: the ledger's invariants, checked against the database.

Each check is one query that returns the offending rows; none is an empty report:

- ``balance``: an account's ``balance``/``held`` differ from the sums of its entries' deltas;
- ``open_hold``: a terminal task whose hold was never captured or released;
- ``settled_running``: a task not yet terminal whose hold was already resolved;
- ``settled_twice``: more than one capture/release for one task;
- ``missing_hold``: a task that says it holds money with no hold entry;
- ``orphan_entry``: a hold or settlement entry with no task, unless both the hold and its
  settlement are there (a settled task whose record retention deleted: ``tasks/retention.py``);
- ``cost_mismatch``: a captured task whose ``cost`` is not what was captured;
- ``negative_available``: an account below zero available without a capture that exceeded
  its hold (the one way an honest ledger goes below zero: more was produced than quoted).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

_TERMINAL = "('SUCCEEDED', 'FAILED', 'CANCELED')"
_SETTLE = "('capture', 'release')"

CHECKS: dict[str, str] = {
    "balance": """
        SELECT a.id, a.balance, a.held, coalesce(s.b, 0) AS ledger_balance,
               coalesce(s.h, 0) AS ledger_held
        FROM accounts a LEFT JOIN (
            SELECT account_id, sum(balance_delta) AS b, sum(held_delta) AS h
            FROM ledger GROUP BY account_id) s ON s.account_id = a.id
        WHERE a.balance <> coalesce(s.b, 0) OR a.held <> coalesce(s.h, 0)""",
    "open_hold": f"""
        SELECT t.id, t.status, t.account_id, t.hold FROM tasks t
        WHERE t.hold IS NOT NULL AND t.status IN {_TERMINAL} AND NOT EXISTS (
            SELECT 1 FROM ledger l WHERE l.task_id = t.id AND l.kind IN {_SETTLE})""",
    "settled_running": f"""
        SELECT t.id, t.status, l.kind FROM tasks t JOIN ledger l ON l.task_id = t.id
        WHERE l.kind IN {_SETTLE} AND t.status NOT IN {_TERMINAL}""",
    "settled_twice": f"""
        SELECT task_id, count(*) AS settlements FROM ledger WHERE kind IN {_SETTLE}
        GROUP BY task_id HAVING count(*) > 1""",
    "missing_hold": """
        SELECT t.id, t.status, t.hold FROM tasks t WHERE t.hold IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM ledger l WHERE l.task_id = t.id AND l.kind = 'hold')""",
    "orphan_entry": f"""
        SELECT l.id, l.kind, l.task_id FROM ledger l
        WHERE l.kind IN ('hold', 'capture', 'release') AND NOT EXISTS (
            SELECT 1 FROM tasks t WHERE t.id = l.task_id)
        AND NOT (EXISTS (SELECT 1 FROM ledger h WHERE h.task_id = l.task_id AND h.kind = 'hold')
             AND EXISTS (SELECT 1 FROM ledger s WHERE s.task_id = l.task_id
                         AND s.kind IN {_SETTLE}))""",
    "cost_mismatch": """
        SELECT t.id, t.cost, l.amount AS captured FROM tasks t
        JOIN ledger l ON l.task_id = t.id AND l.kind = 'capture'
        WHERE t.cost IS NULL OR t.cost <> l.amount""",
    "negative_available": """
        SELECT a.id, a.balance, a.held FROM accounts a WHERE a.balance - a.held < 0
        AND NOT EXISTS (
            SELECT 1 FROM ledger c JOIN ledger h ON h.id = c.pending_id
            WHERE c.account_id = a.id AND c.kind = 'capture' AND c.amount > h.amount)""",
}


async def verify(engine: AsyncEngine) -> dict[str, list[dict[str, Any]]]:
    """``{check: offending rows}`` for every check that failed (empty: all hold)."""
    problems: dict[str, list[dict[str, Any]]] = {}
    async with engine.connect() as conn:
        for name, sql in CHECKS.items():
            rows = [dict(r._mapping) for r in await conn.execute(sa.text(sql))]
            if rows:
                problems[name] = rows
    return problems

"""The task-list query: one key's tasks, newest first, reading only what lists show.

A list renders ids, status, times, progress, the result and error, and a few request fields
(prompt, resolution, duration, audio), so it reads those fields out of the request JSON in
the database instead of the whole request, and never reads the engine state.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from stillmotion.domain import is_clean_text
from stillmotion.tasks.rows import TaskRow
from stillmotion.tasks.schema import tasks

_SKIPPED = ("request", "engine_state")
_COLUMNS = [c for c in tasks.c if c.name not in _SKIPPED]
_REQUEST_FIELDS = [
    tasks.c.request["prompt"].as_string().label("rq_prompt"),
    tasks.c.request["resolution"].as_string().label("rq_resolution"),
    tasks.c.request["duration"].as_integer().label("rq_duration"),
    tasks.c.request["audio"].as_boolean().label("rq_audio"),
]


def _row(mapping: Any) -> TaskRow:
    data = {c.name: mapping[c.name] for c in _COLUMNS}
    data["request"] = {
        "prompt": mapping["rq_prompt"] or "",
        "resolution": mapping["rq_resolution"],
        "duration": mapping["rq_duration"],
        "audio": mapping["rq_audio"],
    }
    data["engine_state"] = {}
    return TaskRow.from_row(data)


async def list_tasks(
    engine: AsyncEngine,
    key_id: str,
    *,
    limit: int,
    offset: int,
    status: str | None,
    model: str | None,
    start: float | None,
    end: float | None,
) -> tuple[list[TaskRow], int]:
    """Rows with only the listed request fields and no engine state, and how many match.
    Filters that no task can match (NUL, invalid Unicode) match nothing, on both databases."""
    if not all(is_clean_text(v) for v in (key_id, status, model) if v is not None):
        return [], 0
    where = [tasks.c.key_id == key_id]
    if status is not None:
        where.append(tasks.c.status == status)
    if model is not None:
        where.append(tasks.c.model == model)
    if start is not None:
        where.append(tasks.c.created_at >= start)
    if end is not None:
        where.append(tasks.c.created_at <= end)
    page = (
        sa.select(*_COLUMNS, *_REQUEST_FIELDS)
        .where(*where)
        .order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    async with engine.connect() as conn:  # one transaction: count and page agree
        total = await conn.scalar(sa.select(sa.func.count()).select_from(tasks).where(*where))
        rows = [_row(r._mapping) for r in await conn.execute(page)]
    return rows, int(total or 0)

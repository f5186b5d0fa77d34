"""One info log line per task transition, written by the store after the change committed."""

from __future__ import annotations

import logging

log = logging.getLogger("stillmotion.tasks")


def log_transition(
    task_id: str,
    before: str,
    after: str,
    engine: str,
    attempt: int,
    max_attempts: int,
    note: str = "",
) -> None:
    """``task <id> PENDING -> RUNNING (engine motion, attempt 1/3[, note])``; never a key."""
    if not log.isEnabledFor(logging.INFO):
        return
    extra = f", {note}" if note else ""
    log.info(
        "task %s %s -> %s (engine %s, attempt %d/%d%s)",
        task_id, before, after, engine, attempt, max_attempts, extra,
        extra={"task_id": task_id},  # the JSON log format's field (logfmt.py)
    )  # fmt: skip

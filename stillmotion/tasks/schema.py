"""The tables, in SQLAlchemy Core. ``migrations/versions`` creates exactly these.

``workers`` is the registry of live workers (``tasks/workers.py``): a row per running worker
process, its heartbeat, and what tells whether its process is still there.

Times are epoch seconds (UTC) stored as double-precision floats; JSON columns use
``sa.JSON`` (``json`` on PostgreSQL, text on SQLite).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()


def _time(name: str, *, nullable: bool = False) -> sa.Column[float]:
    return sa.Column(name, sa.Float(precision=53), nullable=nullable)


api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False),
    _time("created_at"),
    _time("revoked_at", nullable=True),
    sa.Index("ix_api_keys_key_hash", "key_hash", unique=True),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("model", sa.String(100), nullable=False),
    sa.Column("engine", sa.String(100), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("request", sa.JSON(), nullable=False),
    _time("created_at"),
    _time("scheduled_at", nullable=True),
    _time("ended_at", nullable=True),
    _time("updated_at"),
    _time("run_after"),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("max_attempts", sa.Integer(), nullable=False),
    sa.Column("worker_id", sa.String(200), nullable=True),
    _time("lease_expires_at", nullable=True),
    sa.Column("progress", sa.Float(precision=53), nullable=False, server_default=sa.text("0")),
    sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("result", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("error_code", sa.String(100), nullable=True),
    sa.Column("error_message", sa.Text(), nullable=True),
    sa.Column("engine_state", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
    sa.Index("ix_tasks_status_run_after", "status", "run_after"),
    sa.Index("ix_tasks_key_id_status", "key_id", "status"),
    sa.Index("ix_tasks_key_id_created_at", "key_id", "created_at"),
)

task_events = sa.Table(
    "task_events",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column(
        "task_id",
        sa.String(36),
        sa.ForeignKey("tasks.id", name="fk_task_events_task_id", ondelete="CASCADE"),
        nullable=False,
    ),
    _time("at"),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("detail", sa.JSON(none_as_null=True), nullable=True),
    sa.Index("ix_task_events_task_id", "task_id"),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("machine", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("process_start", sa.Float(precision=53), nullable=True),
    sa.Column("engines", sa.JSON(), nullable=False),
    sa.Column("version", sa.String(50), nullable=False),
    _time("started_at"),
    _time("heartbeat_at"),
)

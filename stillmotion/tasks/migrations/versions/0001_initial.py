"""The initial tables: api_keys, tasks, task_events.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, *, nullable: bool = False) -> sa.Column[float]:
    return sa.Column(name, sa.Float(precision=53), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        _time("created_at"),
        _time("revoked_at", nullable=True),
    )
    op.create_index("ix_api_keys_key_hash", "api_keys", ["key_hash"], unique=True)
    op.create_table(
        "tasks",
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
    )
    op.create_index("ix_tasks_key_id", "tasks", ["key_id"])
    op.create_index("ix_tasks_status_run_after", "tasks", ["status", "run_after"])
    op.create_index("ix_tasks_key_id_status", "tasks", ["key_id", "status"])
    op.create_index("ix_tasks_key_id_created_at", "tasks", ["key_id", "created_at"])
    op.create_table(
        "task_events",
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
    )
    op.create_index("ix_task_events_task_id", "task_events", ["task_id"])


def downgrade() -> None:
    op.drop_table("task_events")
    op.drop_table("tasks")
    op.drop_table("api_keys")

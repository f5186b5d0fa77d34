"""Global relay limits: each relay channel's token buckets and the upstream tasks in flight
on it, shared by every worker process (``tasks/relay_limits.py``); and the index the
retention sweep reads finished tasks by, oldest end first (``tasks/retention.py``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str) -> sa.Column[float]:
    return sa.Column(name, sa.Float(precision=53), nullable=True)


def upgrade() -> None:
    op.create_table(
        "relay_channels",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("submit_tokens", sa.Float(precision=53), nullable=True),
        _time("submit_at"),
        sa.Column("query_tokens", sa.Float(precision=53), nullable=True),
        _time("query_at"),
        sa.Column(
            "blocked_until", sa.Float(precision=53), nullable=False, server_default=sa.text("0")
        ),
    )
    op.create_table(
        "relay_slots",
        sa.Column("task_id", sa.String(36), primary_key=True),
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("acquired_at", sa.Float(precision=53), nullable=False),
    )
    op.create_index("ix_relay_slots_channel", "relay_slots", ["channel"])
    op.create_index("ix_tasks_ended_at", "tasks", ["ended_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_ended_at", table_name="tasks")
    op.drop_index("ix_relay_slots_channel", table_name="relay_slots")
    op.drop_table("relay_slots")
    op.drop_table("relay_channels")

"""Drop ix_tasks_key_id: ix_tasks_key_id_status and ix_tasks_key_id_created_at both start
with key_id and answer every query it did; one index fewer to update on each submit.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_tasks_key_id", table_name="tasks")


def downgrade() -> None:
    op.create_index("ix_tasks_key_id", "tasks", ["key_id"])

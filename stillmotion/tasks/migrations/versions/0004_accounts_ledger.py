"""Accounts and money: ``accounts``, the append-only ``ledger``, ``idempotency_keys``; keys
belong to an account and may be admin keys; tasks carry their account, price, quote, hold,
cost and billed duration. Each existing key gets an account of its own (same id and name),
and each existing task its key's account.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, *, nullable: bool = False) -> sa.Column[float]:
    return sa.Column(name, sa.Float(precision=53), nullable=nullable)


def _money(name: str, *, nullable: bool = False) -> sa.Column[int]:
    if nullable:
        return sa.Column(name, sa.BigInteger(), nullable=True)
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0"))


def _limits() -> list[sa.Column[Any]]:
    return [
        sa.Column("max_concurrent", sa.Integer(), nullable=True),
        sa.Column("max_pending", sa.Integer(), nullable=True),
        sa.Column("submit_rate", sa.Float(precision=53), nullable=True),
        _money("daily_budget", nullable=True),
        sa.Column("rate_tokens", sa.Float(precision=53), nullable=True),
        _time("rate_at", nullable=True),
    ]


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        _time("created_at"),
        _money("balance"),
        _money("held"),
        sa.Column("price_group", sa.String(64), nullable=True),
        *_limits(),
    )
    op.create_table(
        "ledger",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("task_id", sa.String(36), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_delta", sa.BigInteger(), nullable=False),
        sa.Column("held_delta", sa.BigInteger(), nullable=False),
        sa.Column("pending_id", sa.String(80), nullable=True),
        _time("at"),
        sa.Column("detail", sa.JSON(none_as_null=True), nullable=True),
    )
    op.create_index("ix_ledger_pending_id", "ledger", ["pending_id"], unique=True)
    op.create_index("ix_ledger_account_id_at", "ledger", ["account_id", "at"])
    op.create_index("ix_ledger_task_id", "ledger", ["task_id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("idem_key", sa.String(255), primary_key=True),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(36), nullable=False),
        _time("created_at"),
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("account_id", sa.String(32), nullable=True))
        batch.add_column(
            sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        for column in _limits():
            batch.add_column(column)
    op.create_index("ix_api_keys_account_id", "api_keys", ["account_id"])
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("account_id", sa.String(32), nullable=True))
        batch.add_column(_money("price"))
        batch.add_column(_money("quote"))
        batch.add_column(_money("hold", nullable=True))
        batch.add_column(_money("cost", nullable=True))
        batch.add_column(sa.Column("billed_ms", sa.BigInteger(), nullable=True))
    op.create_index("ix_tasks_account_id_status", "tasks", ["account_id", "status"])
    op.create_index("ix_tasks_account_id_created_at", "tasks", ["account_id", "created_at"])
    # every existing key gets an account of its own; its tasks follow it
    op.execute(
        "INSERT INTO accounts (id, name, created_at, balance, held) "
        "SELECT id, name, created_at, 0, 0 FROM api_keys"
    )
    op.execute("UPDATE api_keys SET account_id = id")
    op.execute(
        "UPDATE tasks SET account_id = "
        "(SELECT api_keys.account_id FROM api_keys WHERE api_keys.id = tasks.key_id)"
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_account_id_created_at", "tasks")
    op.drop_index("ix_tasks_account_id_status", "tasks")
    with op.batch_alter_table("tasks") as batch:
        for name in ("billed_ms", "cost", "hold", "quote", "price", "account_id"):
            batch.drop_column(name)
    op.drop_index("ix_api_keys_account_id", "api_keys")
    with op.batch_alter_table("api_keys") as batch:
        for column in _limits():
            batch.drop_column(column.name)
        batch.drop_column("is_admin")
        batch.drop_column("account_id")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_ledger_task_id", "ledger")
    op.drop_index("ix_ledger_account_id_at", "ledger")
    op.drop_index("ix_ledger_pending_id", "ledger")
    op.drop_table("ledger")
    op.drop_table("accounts")

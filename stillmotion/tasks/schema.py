"""The tables, in SQLAlchemy Core. ``migrations/versions`` creates exactly these.

``accounts`` hold money (``balance`` posted, ``held`` reserved by open holds, both integer
micros) and the limits of their keys; ``ledger`` is the append-only record of every movement
(``tasks/ledger.py``): each row carries the change it makes to its account's ``balance`` and
``held``, so the two columns always equal the sums of the ledger. ``idempotency_keys`` maps a
key's ``Idempotency-Key`` header to the task it created.

``webhook_endpoints`` are the URLs an account registered for all its tasks (each with its
signing secret), ``webhook_secrets`` each account's secret for the callbacks its submits name
(``X-Stillmotion-Callback``), ``webhook_deliveries`` the outbox (a row per endpoint per
terminal task, written in the terminal transition's transaction) and ``webhook_attempts``
every POST made for one (``tasks/webhooks.py``).

``workers`` is the registry of live workers (``tasks/workers.py``): a row per running worker
process, its heartbeat, and what tells whether its process is still there.

Times are epoch seconds (UTC) stored as double-precision floats; JSON columns use
``sa.JSON`` (``json`` on PostgreSQL, text on SQLite).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()


def _time(name: str, *, nullable: bool = False) -> sa.Column[float]:
    return sa.Column(name, sa.Float(precision=53), nullable=nullable)


def _money(name: str, *, nullable: bool = False) -> sa.Column[int]:
    if nullable:
        return sa.Column(name, sa.BigInteger(), nullable=True)
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0"))


def limit_columns() -> list[sa.Column[Any]]:
    """Limits an account or key may set (NULL: none), and its submit-rate bucket's state."""
    return [
        sa.Column("max_concurrent", sa.Integer(), nullable=True),
        sa.Column("max_pending", sa.Integer(), nullable=True),
        sa.Column("submit_rate", sa.Float(precision=53), nullable=True),
        _money("daily_budget", nullable=True),
        sa.Column("rate_tokens", sa.Float(precision=53), nullable=True),
        _time("rate_at", nullable=True),
    ]


accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    _time("created_at"),
    _money("balance"),
    _money("held"),
    sa.Column("price_group", sa.String(64), nullable=True),
    *limit_columns(),
)


api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False),
    _time("created_at"),
    _time("revoked_at", nullable=True),
    sa.Column("account_id", sa.String(32), nullable=True),
    sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()),
    *limit_columns(),
    sa.Index("ix_api_keys_key_hash", "key_hash", unique=True),
    sa.Index("ix_api_keys_account_id", "account_id"),
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
    # money (tasks/ledger.py): the per-second price and the quote fixed at submit; ``hold``
    # is what the submit reserved (NULL: billing was off); ``cost`` and ``billed_ms`` are set
    # by the terminal transition (NULL until then)
    sa.Column("account_id", sa.String(32), nullable=True),
    _money("price"),
    _money("quote"),
    _money("hold", nullable=True),
    _money("cost", nullable=True),
    sa.Column("billed_ms", sa.BigInteger(), nullable=True),
    # the submit's ``X-Stillmotion-Callback`` (tasks/webhooks.py); NULL: none
    sa.Column("callback_url", sa.Text(), nullable=True),
    sa.Index("ix_tasks_status_run_after", "status", "run_after"),
    sa.Index("ix_tasks_key_id_status", "key_id", "status"),
    sa.Index("ix_tasks_key_id_created_at", "key_id", "created_at"),
    sa.Index("ix_tasks_account_id_status", "account_id", "status"),
    sa.Index("ix_tasks_account_id_created_at", "account_id", "created_at"),
    sa.Index("ix_tasks_ended_at", "ended_at"),  # the retention sweep, oldest end first
)

ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("account_id", sa.String(32), nullable=False),
    sa.Column("task_id", sa.String(36), nullable=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("amount", sa.BigInteger(), nullable=False),
    sa.Column("balance_delta", sa.BigInteger(), nullable=False),
    sa.Column("held_delta", sa.BigInteger(), nullable=False),
    # a capture or release names the hold it resolves: each hold resolves once
    sa.Column("pending_id", sa.String(80), nullable=True),
    _time("at"),
    sa.Column("detail", sa.JSON(none_as_null=True), nullable=True),
    sa.Index("ix_ledger_pending_id", "pending_id", unique=True),
    sa.Index("ix_ledger_account_id_at", "account_id", "at"),
    sa.Index("ix_ledger_task_id", "task_id"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("idem_key", sa.String(255), primary_key=True),
    sa.Column("body_hash", sa.String(64), nullable=False),
    sa.Column("task_id", sa.String(36), nullable=False),
    _time("created_at"),
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

webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("account_id", sa.String(32), nullable=False),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("secret", sa.String(100), nullable=False),
    _time("created_at"),
    _time("removed_at", nullable=True),  # removed endpoints stay: their deliveries name them
    sa.Index("ix_webhook_endpoints_account_id", "account_id"),
)

webhook_secrets = sa.Table(
    "webhook_secrets",
    metadata,
    sa.Column("account_id", sa.String(32), primary_key=True),
    sa.Column("secret", sa.String(100), nullable=False),
    _time("created_at"),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    # the ``webhook-id``: ``msg_<task id>_<endpoint id>`` (``_cb``: the submit's callback)
    sa.Column("id", sa.String(120), primary_key=True),
    sa.Column("task_id", sa.String(36), nullable=False),
    sa.Column("account_id", sa.String(32), nullable=True),
    sa.Column("endpoint_id", sa.String(32), nullable=True),  # NULL: the submit's callback
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending, delivered, failed
    _time("created_at"),
    _time("next_at"),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("claim_id", sa.String(64), nullable=True),
    _time("lease_until", nullable=True),
    sa.Column("last_status", sa.Integer(), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    _time("ended_at", nullable=True),
    sa.Index("ix_webhook_deliveries_status_next_at", "status", "next_at"),
    sa.Index("ix_webhook_deliveries_task_id", "task_id"),
    sa.Index("ix_webhook_deliveries_account_id", "account_id"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column(
        "delivery_id",
        sa.String(120),
        sa.ForeignKey(
            "webhook_deliveries.id", name="fk_webhook_attempts_delivery_id", ondelete="CASCADE"
        ),
        nullable=False,
    ),
    _time("at"),
    sa.Column("duration_ms", sa.Float(precision=53), nullable=False),
    sa.Column("status_code", sa.Integer(), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Index("ix_webhook_attempts_delivery_id", "delivery_id"),
)

#: a relay channel's shared token buckets (``None`` tokens: full) and its submit block
#: (the upstream's 429), for every worker process (``tasks/relay_limits.py``)
relay_channels = sa.Table(
    "relay_channels",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("submit_tokens", sa.Float(precision=53), nullable=True),
    _time("submit_at", nullable=True),
    sa.Column("query_tokens", sa.Float(precision=53), nullable=True),
    _time("query_at", nullable=True),
    sa.Column("blocked_until", sa.Float(precision=53), nullable=False, server_default=sa.text("0")),
)

#: an upstream task in flight on a channel: a slot of its cap, held until the relay lets go
#: of the task (a slot of a task no longer PENDING or RUNNING is dropped at the next admit)
relay_slots = sa.Table(
    "relay_slots",
    metadata,
    sa.Column("task_id", sa.String(36), primary_key=True),
    sa.Column("channel", sa.String(200), nullable=False),
    _time("acquired_at"),
    sa.Index("ix_relay_slots_channel", "channel"),
)

"""Alembic environment (async). Run through ``stillmotion.tasks.db.upgrade``, not a CLI.

The URL comes in ``config.attributes["url"]``. Migrations run in one transaction; on
PostgreSQL it first takes an advisory lock so two processes upgrading at once take turns,
and on SQLite the transaction is ``BEGIN IMMEDIATE``, which serialises them the same way.
This runs its own event loop (``asyncio.run``): callers already inside a loop use a thread.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from stillmotion.tasks.db import MIGRATION_LOCK_ID, migration_engine, normalize_url
from stillmotion.tasks.schema import metadata


def _url() -> str:
    url = context.config.attributes.get("url") or context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no database URL: pass it in config.attributes['url']")
    return normalize_url(url).render_as_string(hide_password=False)


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=sqlite,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_ID}
            )
        context.run_migrations()


async def _run_async() -> None:
    engine = migration_engine(normalize_url(_url()))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(_run_async())

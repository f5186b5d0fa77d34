"""Engines and migrations: URL normalising, the SQLite connection recipe, ``alembic upgrade``.

SQLite gets two engines. Reads use ordinary (deferred) transactions; every write transaction
starts with ``BEGIN IMMEDIATE``, so writers queue on SQLite's lock (with a busy timeout)
instead of failing half-way, and a claim can never race another claim. This is SQLAlchemy's
documented recipe: the driver's own transaction handling is switched off
(``isolation_level = None``) and a ``begin`` event emits the ``BEGIN``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, make_url
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Key of the PostgreSQL advisory lock held while migrating ("STMO" in ASCII).
MIGRATION_LOCK_ID = 0x53544D4F
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Alembic keeps its running environment in module globals (``alembic.context``), so one
# process migrates one database at a time; other processes are kept out by the database.
_ALEMBIC_LOCK = threading.Lock()
SQLITE_PRAGMAS = (
    f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
)


def normalize_url(url: str | URL) -> URL:
    """The async driver's URL: ``sqlite:`` -> aiosqlite, ``postgresql:`` -> asyncpg."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or "mode=memory" in str(parsed):
            raise ValueError("stillmotion needs a SQLite file, not an in-memory database")
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported database URL {parsed.render_as_string(hide_password=True)}")


def _sqlite_recipe(engine: Engine, *, immediate: bool) -> None:
    """Pragmas on connect; with ``immediate``, every transaction starts ``BEGIN IMMEDIATE``."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in SQLITE_PRAGMAS:
                cursor.execute(pragma)
        finally:
            cursor.close()

    if immediate:

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_sqlite_engine(url: URL, *, immediate: bool, **kwargs: Any) -> AsyncEngine:
    """An aiosqlite engine with WAL and a busy timeout; ``immediate`` makes it the writer."""
    if url.database:
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, **kwargs)
    _sqlite_recipe(engine.sync_engine, immediate=immediate)
    return engine


def connect_sqlite(url: URL) -> sqlite3.Connection:
    """A plain ``sqlite3`` connection with the same pragmas and no implicit transactions, for
    ``tasks/batch.py``: one thread runs a whole batch transaction on it in a single hop."""
    conn = sqlite3.connect(url.database or "", isolation_level=None, check_same_thread=False)
    try:
        for pragma in SQLITE_PRAGMAS:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


def create_engines(url: URL) -> tuple[AsyncEngine, AsyncEngine]:
    """``(read, write)`` engines; on PostgreSQL both are the same pooled engine."""
    if url.get_backend_name() == "sqlite":
        # Reads run in autocommit (each statement sees a consistent snapshot), which saves the
        # BEGIN and ROLLBACK round trips to the driver's thread on every query.
        read = create_sqlite_engine(
            url, immediate=False, pool_size=5, max_overflow=5, pool_reset_on_return=None
        )
        # One writer connection per process: writes queue in the pool, not on the file lock.
        write = create_sqlite_engine(
            url, immediate=True, pool_size=1, max_overflow=0, pool_timeout=60
        )
        return read, write
    engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
    return engine, engine


def migration_engine(url: URL) -> AsyncEngine:
    """A throwaway engine for ``env.py``; SQLite migrates inside one ``BEGIN IMMEDIATE``."""
    if url.get_backend_name() == "sqlite":
        return create_sqlite_engine(url, immediate=True, poolclass=NullPool)
    return create_async_engine(url, poolclass=NullPool)


def alembic_config(url: str | URL) -> Config:
    """An Alembic ``Config`` without an ini file, pointing at the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = normalize_url(url)
    return config


def upgrade_sync(url: str | URL, revision: str = "head") -> None:
    """``alembic upgrade``; runs its own event loop, so call it from a thread when one runs."""
    config = alembic_config(url)
    with _ALEMBIC_LOCK:
        command.upgrade(config, revision)


async def upgrade(url: str | URL, revision: str = "head") -> None:
    """``alembic upgrade`` from async code, in a worker thread."""
    await asyncio.to_thread(upgrade_sync, url, revision)

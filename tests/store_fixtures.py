"""Databases for store tests: a SQLite file, or a fresh PostgreSQL database per test.

PostgreSQL comes from ``STILLMOTION_TEST_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``). When it cannot be reached the test
fails: CI starts PostgreSQL, and a silently skipped backend would hide breakage.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import make_url

from stillmotion.tasks.store import TaskRow, TaskStore

PG_ADMIN_URL = os.environ.get(
    "STILLMOTION_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


class FakeClock:
    """A clock the test moves by hand: ``clock()`` reads it, ``clock.advance(s)`` moves it."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _admin_dsn() -> str:
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


@asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """Create ``sm_test_<hex>``, yield its URL, then drop it (closing its connections)."""
    name = f"sm_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(_admin_dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        url = make_url(PG_ADMIN_URL).set(drivername="postgresql", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(_admin_dsn())
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        finally:
            await admin.close()


@asynccontextmanager
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of the given backend (``sqlite`` or ``postgresql``), not migrated."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'stillmotion.db'}"
        return
    async with pg_database() as url:
        yield url


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database on each backend (the store's tests run on both)."""
    async with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def store(db_url: str, clock: FakeClock) -> AsyncIterator[TaskStore]:
    """A migrated store on ``db_url`` whose time is the module's ``clock`` fixture."""
    s = await TaskStore.open(db_url, clock=clock)
    try:
        await s.upgrade()
        yield s
    finally:
        await s.close()


async def kinds(store: TaskStore, task_id: str) -> list[str]:
    """The kinds of a task's events, oldest first."""
    return [e["kind"] for e in await store.events(task_id)]


async def current(store: TaskStore, task_id: str) -> TaskRow:
    """The task's row (it must exist)."""
    row = await store.get_task(task_id)
    assert row is not None
    return row

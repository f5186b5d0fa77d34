"""PostgreSQL LISTEN/NOTIFY: a task submitted through one process wakes the worker of
another at once (its poll interval is a minute here), also after the listening connection
was killed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from stillmotion.config import Settings
from stillmotion.runtime import Runtime, open_runtime
from stillmotion.tasks.keys import create_key
from stillmotion.tasks.notify import driver_dsn
from stillmotion.tasks.service import TaskService
from tests.conftest import seed_body
from tests.store_fixtures import pg_database

pytestmark = pytest.mark.postgres
POLL = 60.0  # the worker's poll: a claim within the test's bound came from the notification
BOUND = 20.0


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Runtime, Runtime]]:
    """An API-only runtime and a worker runtime: two processes' worth, one database."""
    async with pg_database() as url:
        common = dict(data_dir=tmp_path / "data", database_url=url, key_cache_seconds=0,
                      allow_private_urls=True, lease_seconds=30)  # fmt: skip
        api = await open_runtime(Settings(**common, workers=0))
        worker = await open_runtime(Settings(**common, workers=1, poll_interval=POLL))
        try:
            yield api, worker
        finally:
            await worker.close()
            await api.close()


async def _claimed(rt: Runtime, task_id: str) -> None:
    async with asyncio.timeout(BOUND):
        while "claimed" not in [e["kind"] for e in await rt.store.events(task_id)]:
            await asyncio.sleep(0.05)


async def _submit(service: TaskService, rt: Runtime) -> str:
    key = (await create_key(rt.store, "notify")).row
    return (await service.submit(key, seed_body())).id


async def test_a_submit_elsewhere_wakes_the_worker_at_once(pair: tuple[Runtime, Runtime]) -> None:
    api, worker = pair
    await worker.start_worker()
    assert worker.listener is not None
    async with asyncio.timeout(BOUND):
        await worker.listener.connected.wait()
    await asyncio.sleep(0.3)  # the worker's first (empty) claim is done: it now idles
    task_id = await _submit(api.service, api)
    await _claimed(worker, task_id)


async def test_the_listener_reconnects_after_its_connection_is_killed(
    pair: tuple[Runtime, Runtime],
) -> None:
    api, worker = pair
    await worker.start_worker()
    listener = worker.listener
    assert listener is not None
    async with asyncio.timeout(BOUND):
        await listener.connected.wait()
    assert listener.connects == 1
    admin = await asyncpg.connect(driver_dsn(api.store.url))
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
    finally:
        await admin.close()
    assert killed == 1
    async with asyncio.timeout(BOUND):
        while listener.connects < 2:  # it notices the loss and listens again
            await asyncio.sleep(0.02)
        await listener.connected.wait()
    await asyncio.sleep(0.3)
    task_id = await _submit(api.service, api)
    await _claimed(worker, task_id)

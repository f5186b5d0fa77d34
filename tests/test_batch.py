"""Group commit of submits: concurrent creates share transactions; a bad row fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from stillmotion.tasks.store import TaskStore
from tests.store_fixtures import BACKENDS, database_url


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TaskStore]:
    async with database_url(request.param, tmp_path) as url:
        st = await TaskStore.open(url)
        await st.upgrade()
        try:
            yield st
        finally:
            await st.close()


async def _create(store: TaskStore, task_id: str) -> str:
    await store.create_task(task_id=task_id, key_id="k", model="m", engine="motion",
                            request={"n": task_id}, max_attempts=3)  # fmt: skip
    return task_id


async def test_concurrent_creates_are_all_stored_with_events(store: TaskStore) -> None:
    ids = [f"t{i:03d}" for i in range(200)]
    await asyncio.gather(*(_create(store, i) for i in ids))
    rows, total = await store.list_tasks("k", limit=500)
    assert total == 200 and {r.id for r in rows} == set(ids)
    for task_id in ids:  # the list reads only what it renders; the whole row has the request
        row = await store.get_task(task_id)
        assert row is not None and row.request == {"n": task_id}
    for task_id in ids[:5]:
        assert [e["kind"] for e in await store.events(task_id)] == ["created"]


async def test_a_duplicate_fails_alone(store: TaskStore) -> None:
    await _create(store, "dup")
    results = await asyncio.gather(
        *(_create(store, i) for i in ["a", "dup", "b", "c"]), return_exceptions=True
    )
    assert results[0] == "a" and results[2] == "b" and results[3] == "c"
    assert isinstance(results[1], sa.exc.IntegrityError)
    _, total = await store.list_tasks("k", limit=10)
    assert total == 4

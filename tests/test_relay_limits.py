"""Relay limits held by every worker process together (``tasks/relay_limits.py``).

Each "process" here is its own :class:`TaskStore` (its own connection pools) on one database,
as two worker processes are; the last tests run two whole worker runtimes against the fake
DashScope and count its upstream tasks in flight.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from stillmotion.api.app import create_app
from stillmotion.config import Settings
from stillmotion.engines.relay_limits import Limit, LocalLimits
from stillmotion.runtime import Runtime, open_runtime, relay_limits
from stillmotion.tasks.keys import create_key
from stillmotion.tasks.store import TaskStore
from stillmotion.testing.fake_dashscope import FakeConfig, FakeDashScopeServer
from tests.conftest import poll, seed_body
from tests.relay_helpers import (
    KEY,
    finish_upstream,
    relay_settings,
    submit,
    unfinished_upstream,
    upstream_overlap,
    wait_for,
)
from tests.store_fixtures import FakeClock, database_url

CAP = Limit("dashscope/default", max_in_flight=2, submit_rate=100.0, query_rate=2.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def second(store: TaskStore, db_url: str, clock: FakeClock) -> AsyncIterator[TaskStore]:
    """Another process's store on the same (migrated) database."""
    other = await TaskStore.open(db_url, clock=clock)
    try:
        yield other
    finally:
        await other.close()


async def new_task(store: TaskStore) -> str:
    row = await store.create_task(
        task_id=str(uuid.uuid4()), key_id="key-a", model="wan2.6-i2v", engine="dashscope",
        request={"prompt": "a cat", "n": 1}, max_attempts=3,
    )  # fmt: skip
    return row.id


async def test_the_cap_is_one_for_both_processes(store: TaskStore, second: TaskStore) -> None:
    a, b = store.relay_limits, second.relay_limits
    t1, t2, t3 = [await new_task(store) for _ in range(3)]
    assert await a.admit(CAP, t1, 0) == 0
    assert await b.admit(CAP, t2, 0) == 0
    assert await a.admit(CAP, t3, 0) is None  # full: two in flight, one per process
    assert await b.admit(CAP, t1, 0) == 0  # a task already holding a slot keeps it
    assert (await b.states([CAP]))[CAP.name].in_flight == 2
    await b.release(t1)  # the other process lets go of it
    await b.release(t1)  # idempotent
    assert await a.admit(CAP, t3, 0) == 0
    await a.attach(CAP, t1)  # a resumed task counts, whatever the cap
    assert (await a.states([CAP]))[CAP.name].in_flight == 3


async def test_a_slot_of_an_ended_task_no_longer_counts(
    store: TaskStore, second: TaskStore
) -> None:
    t1, t2, t3 = [await new_task(store) for _ in range(3)]
    for task in (t1, t2):
        assert await store.relay_limits.admit(CAP, task, 0) == 0
    # The worker holding t1 died and t1 was canceled meanwhile: nobody releases its slot.
    assert await store.cancel_pending(t1, "key-a") is not None
    assert (await second.relay_limits.states([CAP]))[CAP.name].in_flight == 1
    assert await second.relay_limits.admit(CAP, t3, 0) == 0
    t4 = await new_task(store)
    assert await store.relay_limits.admit(CAP, t4, 0) is None  # t2 and t3 are live


async def test_the_submit_rate_and_the_block_are_shared(
    store: TaskStore, second: TaskStore, clock: FakeClock
) -> None:
    slow = Limit("dashscope/slow", max_in_flight=10, submit_rate=1.0, query_rate=1.0)
    t1, t2, t3 = [await new_task(store) for _ in range(3)]
    assert await store.relay_limits.admit(slow, t1, 0) == 0  # the one token of the burst
    assert await second.relay_limits.admit(slow, t2, 0) is None  # not due within 0 s
    assert await second.relay_limits.admit(slow, t2, 5) == pytest.approx(1.0)  # due in 1 s
    clock.advance(2)
    await store.relay_limits.block(slow, 30)  # a 429 on a submit, seen by the first
    assert await second.relay_limits.admit(slow, t3, 0) is None
    state = (await second.relay_limits.states([slow]))[slow.name]
    assert state.blocked_for == pytest.approx(30) and state.in_flight == 2
    await second.relay_limits.block(slow, 5)  # a shorter block does not shorten it
    clock.advance(31)
    assert await second.relay_limits.admit(slow, t3, 0) == 0


async def test_query_tokens_are_shared_and_paused_by_a_429(
    store: TaskStore, second: TaskStore, clock: FakeClock
) -> None:
    a, b = store.relay_limits, second.relay_limits
    waits = [await a.take_query(CAP), await b.take_query(CAP), await a.take_query(CAP)]
    assert waits == [0, 0, pytest.approx(0.5)]  # rate 2: a burst of 2, then 0.5 s apart
    assert await b.take_query(CAP) == pytest.approx(1.0)
    clock.advance(10)
    await b.pause_queries(CAP, 20)
    assert await a.take_query(CAP) >= 20


async def test_concurrent_admits_never_pass_the_cap(store: TaskStore, second: TaskStore) -> None:
    ids = [await new_task(store) for _ in range(12)]
    sides = [store.relay_limits, second.relay_limits]
    got = await asyncio.gather(*(sides[i % 2].admit(CAP, t, 0) for i, t in enumerate(ids)))
    assert sorted(got, key=lambda w: w is None) == [0, 0] + [None] * 10


async def test_auto_shares_on_postgresql_only(store: TaskStore, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    expected = store.relay_limits if store.dialect == "postgresql" else None
    assert relay_limits(settings, store) is expected
    shared = settings.model_copy(update={"relay_limits": "database"})
    assert relay_limits(shared, store) is store.relay_limits
    local = settings.model_copy(update={"relay_limits": "local"})
    assert relay_limits(local, store) is None


async def test_local_limits_are_per_process() -> None:
    a, b = LocalLimits(), LocalLimits()
    assert await a.admit(CAP, "t1", 0) == 0 and await a.admit(CAP, "t2", 0) == 0
    assert await a.admit(CAP, "t3", 0) is None
    assert await b.admit(CAP, "t3", 0) == 0  # the other process knows nothing of a's


# -- two worker processes on one upstream account -------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeDashScopeServer]:
    config = FakeConfig(keys={KEY: "ok"}, pending_seconds=0.1, running_seconds=3600.0)
    with FakeDashScopeServer(config) as server:
        yield server


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["auto", "local"])
async def test_two_workers_keep_one_cap_upstream(
    tmp_path: Path, fake: FakeDashScopeServer, mode: str
) -> None:
    async with database_url("postgresql", tmp_path) as url:
        settings = relay_settings(
            tmp_path, fake, database_url=url, dashscope_max_in_flight=2, relay_limits=mode
        )
        first = await open_runtime(settings)
        second = await open_runtime(settings)
        try:
            await _run_six(first, second, fake, expect_in_flight=2 if mode == "auto" else 4)
        finally:
            await second.close()
            await first.close()


async def _run_six(
    first: Runtime, second: Runtime, fake: FakeDashScopeServer, expect_in_flight: int
) -> None:
    auth = {"Authorization": f"Bearer {(await create_key(first.store, 'test')).key}"}
    transport = httpx.ASGITransport(app=create_app(runtime=first))
    async with httpx.AsyncClient(transport=transport, base_url=first.settings.base_url) as c:
        ids = [await submit(c, auth, seed_body()) for _ in range(6)]
        await first.start_worker()
        await wait_for(lambda: len(unfinished_upstream(fake)) == 2, "the first worker's two")
        late = (await second.start_worker()).worker_id
        if expect_in_flight == 2:  # shared: the second worker takes tasks and defers them
            await _wait_deferred_by(first, ids, late)
        await wait_for(
            lambda: len(unfinished_upstream(fake)) == expect_in_flight,
            f"{expect_in_flight} tasks in flight upstream",
        )
        await asyncio.sleep(0.5)  # time to send more, were the cap not kept (no upper bound)
        assert len(fake.state.submits) == expect_in_flight
        assert fake.state.stats()["peak_active"] == expect_in_flight
        fake.state.config.running_seconds = 0.2
        finish_upstream(fake)
        results = await asyncio.gather(*(poll(c, t, auth, timeout=90) for t in ids))
    assert [r["output"]["task_status"] for r in results] == ["SUCCEEDED"] * 6
    assert upstream_overlap(fake) <= expect_in_flight


async def _wait_deferred_by(runtime: Runtime, ids: list[str], worker_id: str) -> None:
    """Until a task was claimed by ``worker_id`` and handed back deferred (bounded)."""
    for _ in range(600):
        for task_id in ids:
            for event in await runtime.store.events(task_id):
                worker = str((event.get("detail") or {}).get("worker", ""))
                if event["kind"] == "deferred" and worker.startswith(worker_id + "#"):
                    return
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker {worker_id} deferred no task")

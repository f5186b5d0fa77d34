"""The store contract, run against SQLite and PostgreSQL: keys, tasks, claims, leases, fences."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

from stillmotion.domain import TaskStatus
from stillmotion.tasks.db import alembic_config, normalize_url
from stillmotion.tasks.schema import metadata
from stillmotion.tasks.store import REAPED_CODE, TaskRow, TaskStore
from tests.store_fixtures import FakeClock, current, kinds

LEASE = 30.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def new_task(
    store: TaskStore, key: str = "key-a", *, model: str = "wan2.6-i2v", engine: str = "motion",
    max_attempts: int = 3,
) -> TaskRow:  # fmt: skip
    return await store.create_task(
        task_id=str(uuid.uuid4()), key_id=key, model=model, engine=engine,
        request={"prompt": "a cat", "n": 1}, max_attempts=max_attempts,
    )  # fmt: skip


# -- keys ----------------------------------------------------------------------------------


async def test_keys_create_lookup_revoke(store: TaskStore, clock: FakeClock) -> None:
    a = await store.create_key("alice", "a" * 64, "sk-aaaaa")
    clock.advance(1)
    b = await store.create_key("bob", "b" * 64, "sk-bbbbb")
    assert a.id != b.id and a.revoked_at is None and a.created_at == clock.now - 1
    assert await store.key_by_hash("a" * 64) == a
    assert await store.key_by_hash("c" * 64) is None
    assert [k.name for k in await store.list_keys()] == ["alice", "bob"]

    assert await store.revoke_key(a.id) is True
    assert await store.key_by_hash("a" * 64) is None
    assert await store.revoke_key(a.id) is False  # already revoked
    assert await store.revoke_key("sk-bbbbb") is True  # by prefix
    assert await store.revoke_key("nope") is False
    revoked = {k.name: k.revoked_at for k in await store.list_keys()}
    assert revoked == {"alice": clock.now, "bob": clock.now}


async def test_key_hash_is_unique_and_prefix_must_be_unambiguous(store: TaskStore) -> None:
    await store.create_key("one", "d" * 64, "sk-same")
    with pytest.raises(sa.exc.IntegrityError):
        await store.create_key("dup", "d" * 64, "sk-other")
    await store.create_key("two", "e" * 64, "sk-same")
    with pytest.raises(ValueError, match="2 keys"):
        await store.revoke_key("sk-same")
    assert len([k for k in await store.list_keys() if k.revoked_at is None]) == 2


# -- tasks: API side -----------------------------------------------------------------------


async def test_create_and_get(store: TaskStore, clock: FakeClock) -> None:
    row = await new_task(store, max_attempts=4)
    assert row.status is TaskStatus.PENDING
    assert (row.attempts, row.max_attempts, row.progress) == (0, 4, 0.0)
    assert row.created_at == row.updated_at == row.run_after == clock.now
    assert row.scheduled_at is None and row.ended_at is None and row.worker_id is None
    assert row.cancel_requested is False and row.result is None and row.engine_state == {}
    assert await store.get_task(row.id) == row
    assert (await current(store, row.id)).request == {"prompt": "a cat", "n": 1}
    assert await store.get_task(str(uuid.uuid4())) is None
    assert await store.events(row.id) == [{"at": clock.now, "kind": "created", "detail": None}]


async def test_concurrent_misses_share_one_read(store: TaskStore) -> None:
    row = await new_task(store)
    selects: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    sync_engine = store._read.sync_engine  # the store's read engine; the test counts its queries
    sa.event.listen(sync_engine, "before_cursor_execute", count)
    try:
        store._cache.clear()
        rows = await asyncio.gather(*(store.get_task(row.id) for _ in range(20)))
        assert rows == [row] * 20 and len(selects) == 1
        store._cache.clear()
        assert await store.get_task(row.id) == row and len(selects) == 2
    finally:
        sa.event.remove(sync_engine, "before_cursor_execute", count)


async def test_list_pages_filters_and_tenancy(store: TaskStore, clock: FakeClock) -> None:
    ids = []
    for i in range(5):
        ids.append((await new_task(store, "key-a", model=f"m{i % 2}")).id)
        clock.advance(10)
    other = await new_task(store, "key-b")
    newest_first = ids[::-1]

    page, total = await store.list_tasks("key-a", limit=2)
    assert [r.id for r in page] == newest_first[:2] and total == 5
    page, total = await store.list_tasks("key-a", limit=2, offset=4)
    assert [r.id for r in page] == newest_first[4:] and total == 5

    page, total = await store.list_tasks("key-a", model="m1")
    assert [r.id for r in page] == [ids[3], ids[1]] and total == 2
    t0 = (await current(store, ids[0])).created_at
    page, total = await store.list_tasks("key-a", start=t0 + 10, end=t0 + 30)
    assert [r.id for r in page] == [ids[3], ids[2], ids[1]] and total == 3

    assert await store.cancel_pending(ids[2], "key-a") is not None
    page, total = await store.list_tasks("key-a", status="CANCELED")
    assert [r.id for r in page] == [ids[2]] and total == 1

    page, total = await store.list_tasks("key-b")
    assert [r.id for r in page] == [other.id] and total == 1
    assert await store.list_tasks("key-c") == ([], 0)


async def test_cancel_pending_only_owner_only_pending(store: TaskStore, clock: FakeClock) -> None:
    row = await new_task(store, "key-a")
    assert await store.cancel_pending(row.id, "key-b") is None
    assert (await current(store, row.id)).status is TaskStatus.PENDING

    clock.advance(5)
    canceled = await store.cancel_pending(row.id, "key-a")
    assert canceled is not None and canceled.status is TaskStatus.CANCELED
    assert canceled.ended_at == clock.now
    assert await store.cancel_pending(row.id, "key-a") is None
    assert await kinds(store, row.id) == ["created", "canceled"]

    running = await new_task(store, "key-a")
    assert await store.claim("w1", LEASE) is not None
    assert await store.cancel_pending(running.id, "key-a") is None
    assert (await current(store, running.id)).status is TaskStatus.RUNNING


async def test_request_cancel_marks_running_task(store: TaskStore) -> None:
    row = await new_task(store, "key-a")
    assert await store.request_cancel(row.id, "key-a") is False  # still PENDING
    await store.claim("w1", LEASE)
    assert await store.request_cancel(row.id, "key-b") is False
    assert (await current(store, row.id)).cancel_requested is False
    assert await store.request_cancel(row.id, "key-a") is True
    after = await current(store, row.id)
    assert after.cancel_requested is True and after.status is TaskStatus.RUNNING


async def test_counts(store: TaskStore) -> None:
    a = await new_task(store)
    await new_task(store)
    await new_task(store)
    await store.cancel_pending(a.id, "key-a")
    await store.claim("w1", LEASE)
    assert await store.counts() == {
        "PENDING": 1, "RUNNING": 1, "SUCCEEDED": 0, "FAILED": 0, "CANCELED": 1,
    }  # fmt: skip


# -- claims --------------------------------------------------------------------------------


async def test_claim_sets_lease_and_counts_attempt(store: TaskStore, clock: FakeClock) -> None:
    row = await new_task(store)
    clock.advance(3)
    got = await store.claim("w1", LEASE)
    assert got is not None and got.id == row.id
    assert got.status is TaskStatus.RUNNING and got.worker_id == "w1" and got.attempts == 1
    assert got.lease_expires_at == clock.now + LEASE and got.scheduled_at == clock.now
    assert await current(store, row.id) == got
    assert await store.claim("w2", LEASE) is None
    assert await store.events(row.id) == [
        {"at": clock.now - 3, "kind": "created", "detail": None},
        {"at": clock.now, "kind": "claimed", "detail": {"attempt": 1, "worker": "w1"}},
    ]


async def test_claim_filters_by_engine(store: TaskStore) -> None:
    await new_task(store, engine="motion")
    relay = await new_task(store, engine="relay")
    assert await store.claim("w1", LEASE, engines=[]) is None
    got = await store.claim("w1", LEASE, engines=["relay"])
    assert got is not None and got.id == relay.id
    assert await store.claim("w1", LEASE, engines=["relay", "gpu"]) is None


async def test_claim_is_fair_across_keys(store: TaskStore, clock: FakeClock) -> None:
    a_ids = []
    for _ in range(5):
        a_ids.append((await new_task(store, "key-a")).id)
        clock.advance(1)
    b = await new_task(store, "key-b")
    order = []
    for worker in ("w1", "w2", "w3"):
        got = await store.claim(worker, LEASE)
        assert got is not None
        order.append(got.id)
    assert order == [a_ids[0], b.id, a_ids[1]]


async def test_concurrent_claimers_take_each_task_once(db_url: str, store: TaskStore) -> None:
    created = {(await new_task(store, f"key-{i % 3}")).id for i in range(20)}
    claimers = [await TaskStore.open(db_url) for _ in range(8)]

    calls = [0]  # claim calls finished, by every claimer

    async def drain(claimer: TaskStore, worker: str) -> list[str]:
        got: list[str] = []
        while (row := await claimer.claim(worker, LEASE)) is not None:
            calls[0] += 1
            got.append(row.id)
            seen = calls[0]
            for _ in range(5000):  # let another claimer finish a call first (at most ~5 s)
                if calls[0] > seen:
                    break
                await asyncio.sleep(0.001)
        calls[0] += 1
        return got

    try:
        results = await asyncio.gather(*(drain(c, f"w{i}") for i, c in enumerate(claimers)))
    finally:
        await asyncio.gather(*(c.close() for c in claimers))
    claimed = [task_id for got in results for task_id in got]
    assert sorted(claimed) == sorted(created)  # all of them, none twice
    assert sum(1 for got in results if got) > 1  # the claimers really competed
    for task_id in created:
        row = await current(store, task_id)
        assert row.status is TaskStatus.RUNNING and row.attempts == 1
        assert await kinds(store, task_id) == ["created", "claimed"]


async def test_claim_waits_for_run_after(store: TaskStore, clock: FakeClock) -> None:
    row = await new_task(store, max_attempts=3)
    await store.claim("w1", LEASE)
    assert await store.retry_later(row.id, "w1", 10, "Upstream.Busy", "try again") is True
    clock.advance(9)
    assert await store.claim("w1", LEASE) is None
    clock.advance(1)
    again = await store.claim("w1", LEASE)
    assert again is not None and again.id == row.id and again.attempts == 2


# -- leases, fences and recovery -----------------------------------------------------------


async def test_expired_lease_is_reclaimed_and_old_worker_fenced(
    store: TaskStore, clock: FakeClock
) -> None:
    row = await new_task(store, max_attempts=3)
    first = await store.claim("w1", LEASE)
    assert first is not None
    clock.advance(LEASE - 1)
    assert await store.claim("w2", LEASE) is None  # lease still live
    clock.advance(2)
    second = await store.claim("w2", LEASE)
    assert second is not None and second.id == row.id
    assert second.attempts == 2 and second.worker_id == "w2"
    assert second.scheduled_at == first.scheduled_at  # first start is kept

    assert await store.finish_success(row.id, "w1", {"video": "stale"}) is False
    assert await store.finish_failure(row.id, "w1", "X", "stale") is False
    assert await store.save_state(row.id, "w1", {"stale": True}) is False
    assert await store.heartbeat(row.id, "w1", LEASE) is None
    assert await current(store, row.id) == second  # nothing changed

    assert await store.finish_success(row.id, "w2", {"video": "v.mp4"}) is True
    done = await current(store, row.id)
    assert done.status is TaskStatus.SUCCEEDED and done.result == {"video": "v.mp4"}
    assert done.progress == 1.0 and done.ended_at == clock.now and done.lease_expires_at is None
    assert await store.finish_success(row.id, "w2", {"video": "again"}) is False
    assert await kinds(store, row.id) == ["created", "claimed", "claimed", "succeeded"]


async def test_heartbeat_extends_lease(store: TaskStore, clock: FakeClock) -> None:
    row = await new_task(store)
    await store.claim("w1", LEASE)
    clock.advance(20)
    beat = await store.heartbeat(row.id, "w1", LEASE, progress=0.4)
    assert beat is not None and beat.lease_expires_at == clock.now + LEASE
    assert beat.progress == pytest.approx(0.4)
    clock.advance(20)  # past the first lease, inside the renewed one
    assert await store.claim("w2", LEASE) is None
    beat = await store.heartbeat(row.id, "w1", LEASE)
    assert beat is not None and beat.progress == pytest.approx(0.4)
    clock.advance(LEASE + 1)
    assert await store.claim("w2", LEASE) is not None
    assert await store.heartbeat(row.id, "w1", LEASE, progress=0.9) is None
    assert (await current(store, row.id)).progress == pytest.approx(0.4)


async def test_save_state_replaces_engine_state(store: TaskStore) -> None:
    row = await new_task(store)
    await store.claim("w1", LEASE)
    assert await store.save_state(row.id, "w1", {"upstream_id": "u-1", "polls": 1}) is True
    assert await store.save_state(row.id, "w1", {"upstream_id": "u-1"}) is True
    assert await store.save_state(row.id, "w9", {"other": 1}) is False
    assert (await current(store, row.id)).engine_state == {"upstream_id": "u-1"}


async def test_finish_failure_and_canceled(store: TaskStore, clock: FakeClock) -> None:
    bad, stopped = await new_task(store), await new_task(store)
    await store.claim("w1", LEASE)
    await store.claim("w1", LEASE)
    clock.advance(7)
    assert await store.finish_failure(bad.id, "w1", "InvalidParameter", "bad image") is True
    failed = await current(store, bad.id)
    assert failed.status is TaskStatus.FAILED and failed.ended_at == clock.now
    assert (failed.error_code, failed.error_message) == ("InvalidParameter", "bad image")
    events = await store.events(bad.id)
    assert events[-1]["kind"] == "failed" and events[-1]["detail"]["code"] == "InvalidParameter"

    assert await store.finish_canceled(stopped.id, "w1") is True
    canceled = await current(store, stopped.id)
    assert canceled.status is TaskStatus.CANCELED and canceled.lease_expires_at is None
    assert await kinds(store, stopped.id) == ["created", "claimed", "canceled"]
    assert await store.finish_canceled(stopped.id, "w1") is False


async def test_retry_later_then_fail_when_out_of_attempts(
    store: TaskStore, clock: FakeClock
) -> None:
    row = await new_task(store, max_attempts=2)
    await store.claim("w1", LEASE)
    assert await store.retry_later(row.id, "w2", 5, "E", "wrong worker") is False
    assert await store.retry_later(row.id, "w1", 5, "Upstream.Busy", "busy") is True
    waiting = await current(store, row.id)
    assert waiting.status is TaskStatus.PENDING and waiting.run_after == clock.now + 5
    assert (waiting.attempts, waiting.worker_id, waiting.lease_expires_at) == (1, None, None)
    assert waiting.ended_at is None
    clock.advance(5)
    assert (await store.claim("w1", LEASE)) is not None
    assert await store.retry_later(row.id, "w1", 5, "Upstream.Busy", "still busy") is True
    failed = await current(store, row.id)
    assert failed.status is TaskStatus.FAILED and failed.attempts == 2
    assert (failed.error_code, failed.error_message) == ("Upstream.Busy", "still busy")
    events = await store.events(row.id)
    assert [e["kind"] for e in events] == ["created", "claimed", "retry", "claimed", "failed"]
    assert events[2]["detail"]["code"] == "Upstream.Busy" and events[2]["detail"]["delay"] == 5


async def test_release_worker_hands_tasks_back(store: TaskStore, clock: FakeClock) -> None:
    rows = []
    for _ in range(3):
        rows.append(await new_task(store))
        clock.advance(1)  # claimed in creation order
    a, b, c = rows
    for worker in ("w1", "w1", "w2"):
        await store.claim(worker, LEASE)
    assert await store.release_worker("w1") == 2
    for task_id in (a.id, b.id):
        row = await current(store, task_id)
        assert row.status is TaskStatus.PENDING and row.attempts == 0
        assert row.worker_id is None and row.lease_expires_at is None
        assert await kinds(store, task_id) == ["created", "claimed", "released"]
    assert (await current(store, c.id)).worker_id == "w2"
    assert await store.finish_success(a.id, "w1", {}) is False
    assert await store.release_worker("w1") == 0
    again = await store.claim("w3", LEASE)
    assert again is not None and again.id == a.id and again.attempts == 1


async def test_reap_expired_fails_tasks_out_of_attempts(store: TaskStore, clock: FakeClock) -> None:
    row = await new_task(store, max_attempts=2)
    spare = await new_task(store, max_attempts=3)
    await store.claim("w1", LEASE)
    await store.claim("w1", LEASE)
    clock.advance(LEASE + 1)
    assert await store.claim("w2", LEASE) is not None  # row: second (last) attempt
    assert await store.claim("w2", LEASE) is not None  # spare: second attempt
    assert await store.reap_expired() == 0  # both leases live again
    clock.advance(LEASE + 1)
    assert await store.reap_expired() == 1  # only row is out of attempts
    dead = await current(store, row.id)
    assert dead.status is TaskStatus.FAILED and dead.error_code == REAPED_CODE
    assert dead.error_message == "the worker running this task stopped responding 2 times"
    assert dead.ended_at == clock.now and dead.lease_expires_at is None
    assert (await store.events(row.id))[-1] == {
        "at": clock.now, "kind": "reaped", "detail": {"code": REAPED_CODE, "attempts": 2},
    }  # fmt: skip
    assert (await current(store, spare.id)).status is TaskStatus.RUNNING
    assert await store.reap_expired() == 0
    third = await store.claim("w3", LEASE)
    assert third is not None and third.id == spare.id and third.attempts == 3


# -- migrations and SQLite behaviour -------------------------------------------------------


def _schema_diff(sync_conn: sa.Connection) -> Any:
    """What autogenerate would change: empty when the migrations build exactly ``schema.py``."""
    return compare_metadata(MigrationContext.configure(sync_conn), metadata)


async def test_upgrade_twice_is_a_noop_and_matches_schema(db_url: str, store: TaskStore) -> None:
    row = await new_task(store)
    await store.upgrade()
    assert await store.get_task(row.id) == row
    engine = create_async_engine(normalize_url(db_url))
    try:
        async with engine.connect() as conn:
            versions = (
                await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).all()
            diff = await conn.run_sync(_schema_diff)
    finally:
        await engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    assert head is not None and head >= "0002"
    assert [v[0] for v in versions] == [head]
    assert diff == []


async def test_concurrent_upgrades_on_a_fresh_database(db_url: str) -> None:
    stores = [await TaskStore.open(db_url) for _ in range(2)]
    try:
        await asyncio.gather(*(s.upgrade() for s in stores))
        row = await new_task(stores[0])
        assert await stores[1].get_task(row.id) == row
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_upgrades_from_several_processes_at_once(db_url: str) -> None:
    code = "import sys; from stillmotion.tasks.db import upgrade_sync; upgrade_sync(sys.argv[1])"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            db_url,
            cwd=Path(__file__).resolve().parents[1],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        for _ in range(4)
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    store = await TaskStore.open(db_url)
    try:
        row = await new_task(store)
        assert await store.get_task(row.id) == row
    finally:
        await store.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "mysql://x@y/z"])
async def test_open_rejects_unsupported_urls(url: str) -> None:
    with pytest.raises(ValueError):
        await TaskStore.open(url)


async def test_sqlite_writes_wait_for_the_lock_and_reads_do_not(tmp_path: Path) -> None:
    path = tmp_path / "lock.db"
    store = await TaskStore.open(f"sqlite+aiosqlite:///{path}")
    try:
        await store.upgrade()
        row = await new_task(store)
        assert store.dialect == "sqlite"
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            claim = asyncio.create_task(store.claim("w1", LEASE))
            await asyncio.sleep(0.3)
            assert not claim.done()  # waiting on the busy timeout, not failing
            assert (await current(store, row.id)).status is TaskStatus.PENDING  # WAL: reads go on
            other.execute("COMMIT")
        claimed = await asyncio.wait_for(claim, 10)
        assert claimed is not None and claimed.id == row.id
    finally:
        await store.close()

"""The task row cache: finished rows stay, unfinished ones expire, own writes show at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from stillmotion.domain import TaskStatus
from stillmotion.tasks.store import TaskStore


async def _open(path: Path, cache_seconds: float) -> TaskStore:
    store = await TaskStore.open(f"sqlite:///{path}", cache_seconds=cache_seconds)
    await store.upgrade()
    return store


async def _create(store: TaskStore, task_id: str) -> None:
    await store.create_task(task_id=task_id, key_id="k", model="m", engine="motion",
                            request={}, max_attempts=3)  # fmt: skip


async def test_other_process_changes_show_within_the_bound(tmp_path: Path) -> None:
    api = await _open(tmp_path / "db.sqlite", cache_seconds=0.3)
    worker = await _open(tmp_path / "db.sqlite", cache_seconds=0.0)
    try:
        await _create(api, "t1")
        assert await api.get_task("t1") is not None  # read once: now cached (new rows are not)
        claimed = await worker.claim("w#1", 30)
        assert claimed is not None and claimed.id == "t1"
        row = await api.get_task("t1")
        assert row is not None and row.status is TaskStatus.PENDING  # served from memory
        await asyncio.sleep(0.35)
        row = await api.get_task("t1")
        assert row is not None and row.status is TaskStatus.RUNNING
        assert await worker.finish_failure("t1", "w#1", "InternalError", "boom")
        await asyncio.sleep(0.35)
        row = await api.get_task("t1")
        assert row is not None and row.status is TaskStatus.FAILED
    finally:
        await api.close()
        await worker.close()


async def test_own_writes_show_at_once_and_finished_rows_stay(tmp_path: Path) -> None:
    store = await _open(tmp_path / "db.sqlite", cache_seconds=60)
    try:
        await _create(store, "t2")
        claimed = await store.claim("w#1", 30)
        assert claimed is not None
        row = await store.get_task("t2")
        assert row is not None and row.status is TaskStatus.RUNNING
        assert await store.heartbeat("t2", "w#1", 30, progress=0.5) is not None
        row = await store.get_task("t2")
        assert row is not None and row.progress == 0.5
        assert await store.finish_success("t2", "w#1", {"video_key": "v"})
        row = await store.get_task("t2")
        assert row is not None and row.status is TaskStatus.SUCCEEDED
        assert await store.retry_later("t2", "w#1", 1, "X", "y") is False
        assert (await store.get_task("t2")).status is TaskStatus.SUCCEEDED  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_without_a_bound_unfinished_rows_are_read_every_time(tmp_path: Path) -> None:
    api = await _open(tmp_path / "db.sqlite", cache_seconds=0)
    worker = await _open(tmp_path / "db.sqlite", cache_seconds=0)
    try:
        await _create(api, "t3")
        await worker.claim("w#1", 30)
        row = await api.get_task("t3")
        assert row is not None and row.status is TaskStatus.RUNNING
    finally:
        await api.close()
        await worker.close()


async def test_store_transitions_follow_the_domain_table(tmp_path: Path) -> None:
    from stillmotion.domain import TERMINAL, can_transition

    store = await _open(tmp_path / "db.sqlite", cache_seconds=0)
    try:
        await _create(store, "t4")
        seen = [TaskStatus.PENDING]
        for step in ("claim", "retry", "claim", "finish", "retry-after-finish"):
            if step == "claim":
                await store.claim(f"w#{len(seen)}", 30)
            elif step == "retry":
                await store.retry_later("t4", f"w#{len(seen) - 1}", 0, "X", "y")
            elif step == "finish":
                await store.finish_success("t4", f"w#{len(seen) - 1}", {"video_key": "v"})
            else:
                assert not await store.retry_later("t4", f"w#{len(seen) - 1}", 0, "X", "y")
            row = await store.get_task("t4")
            assert row is not None
            if row.status is not seen[-1]:
                assert can_transition(seen[-1], row.status), (seen[-1], row.status)
                seen.append(row.status)
        assert seen == [TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.PENDING,
                        TaskStatus.RUNNING, TaskStatus.SUCCEEDED]  # fmt: skip
        assert all(not can_transition(t, TaskStatus.PENDING) for t in TERMINAL)
    finally:
        await store.close()

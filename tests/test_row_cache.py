"""The in-process row cache: finished rows in an LRU, unfinished ones only for ``ttl``."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stillmotion.domain import TaskStatus
from stillmotion.tasks import cache as cache_module
from stillmotion.tasks.cache import RowCache
from stillmotion.tasks.rows import TaskRow


def _row(task_id: str, status: TaskStatus = TaskStatus.PENDING) -> TaskRow:
    return TaskRow(
        id=task_id, key_id="k", model="m", engine="motion", status=status, request={},
        created_at=0.0, scheduled_at=None, ended_at=None, updated_at=0.0, run_after=0.0,
        attempts=0, max_attempts=3, worker_id=None, lease_expires_at=None, progress=0.0,
        cancel_requested=False, result=None, error_code=None, error_message=None,
        engine_state={},
    )  # fmt: skip


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    clock = [1000.0]
    monkeypatch.setattr(cache_module.time, "monotonic", lambda: clock[0])
    return clock


def test_unfinished_rows_are_served_for_ttl_then_dropped(now: list[float]) -> None:
    cache = RowCache(ttl=1.0)
    cache.put(_row("a"))
    now[0] += 0.5
    assert cache.get("a") is not None
    cache.put(_row("b"))
    now[0] += 0.6  # a is 1.1 s old, b 0.6 s
    assert cache.get("a") is None and cache.get("b") is not None
    now[0] += 5
    cache.put(_row("c"))  # storing a row clears out everything that expired
    assert len(cache) == 1 and cache.get("c") is not None


def test_a_burst_of_submits_does_not_pile_up(now: list[float]) -> None:
    cache = RowCache(ttl=1.0)
    for i in range(5000):
        now[0] += 0.001  # 1000 submits a second, none polled again
        cache.put(_row(f"t{i}"))
    assert 990 <= len(cache) <= 1001


def test_finished_rows_stay_and_are_evicted_least_recently_used(now: list[float]) -> None:
    cache = RowCache(ttl=1.0, max_entries=2)
    cache.put(_row("a", TaskStatus.SUCCEEDED))
    cache.put(_row("b", TaskStatus.FAILED))
    now[0] += 3600
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put(_row("c", TaskStatus.CANCELED))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None


def test_finishing_replaces_the_live_entry_and_ttl_zero_keeps_no_live_rows(
    now: list[float],
) -> None:
    cache = RowCache(ttl=1.0)
    row = cache.put(_row("a", TaskStatus.RUNNING))
    cache.put(replace(row, status=TaskStatus.SUCCEEDED))
    now[0] += 10
    hit = cache.get("a")
    assert hit is not None and hit.status is TaskStatus.SUCCEEDED and len(cache) == 1
    cache.drop("a")
    assert cache.get("a") is None
    uncached = RowCache(ttl=0.0)
    uncached.put(_row("x"))
    assert uncached.get("x") is None and len(uncached) == 0

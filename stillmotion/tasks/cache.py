"""A small in-process cache of task rows, so polling does not hit the database every time.

Finished rows (SUCCEEDED, FAILED, CANCELED) never change again and are kept in an LRU of
``max_entries``. Other rows are served for ``ttl`` seconds: every write this process makes
replaces or drops the entry at once, so the bound only matters for writes made by *other*
processes (a separate `stillmotion worker`), whose changes show up at most ``ttl`` seconds
late. Unfinished rows are kept in the order they were stored and dropped as soon as they are
older than ``ttl``, so a burst of submits does not leave thousands of stale rows behind for
the garbage collector to walk.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from stillmotion.tasks.rows import TaskRow


class RowCache:
    def __init__(self, ttl: float = 0.0, max_entries: int = 10_000):
        self.ttl = ttl
        self.max_entries = max_entries
        self._finished: OrderedDict[str, TaskRow] = OrderedDict()  # least recently used first
        self._live: OrderedDict[str, tuple[float, TaskRow]] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._finished) + len(self._live)

    def get(self, task_id: str) -> TaskRow | None:
        row = self._finished.get(task_id)
        if row is not None:
            self._finished.move_to_end(task_id)
            return row
        hit = self._live.get(task_id)
        if hit is None:
            return None
        if time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        del self._live[task_id]
        return None

    def put(self, row: TaskRow) -> TaskRow:
        self._live.pop(row.id, None)
        if row.status.terminal:
            self._finished[row.id] = row
            self._finished.move_to_end(row.id)
            while len(self._finished) > self.max_entries:
                self._finished.popitem(last=False)
        elif self.ttl > 0:
            now = time.monotonic()
            self._live[row.id] = (now, row)
            self._expire(now)
        return row

    def _expire(self, now: float) -> None:
        live = self._live
        while live and (
            len(live) > self.max_entries or now - next(iter(live.values()))[0] >= self.ttl
        ):
            live.popitem(last=False)

    def drop(self, *task_ids: str) -> None:
        for task_id in task_ids:
            self._finished.pop(task_id, None)
            self._live.pop(task_id, None)

    def clear(self) -> None:
        self._finished.clear()
        self._live.clear()

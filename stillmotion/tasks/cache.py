"""A small in-process cache of task rows, so polling does not hit the database every time.

Finished rows (SUCCEEDED, FAILED, CANCELED) never change again and are kept until evicted.
Other rows are served for ``ttl`` seconds: every write this process makes replaces or drops
the entry at once, so the bound only matters for writes made by *other* processes (a
separate `stillmotion worker`), whose changes show up at most ``ttl`` seconds late.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from stillmotion.tasks.rows import TaskRow


class RowCache:
    def __init__(self, ttl: float = 0.0, max_entries: int = 50_000):
        self.ttl = ttl
        self.max_entries = max_entries
        self._rows: OrderedDict[str, tuple[float, TaskRow]] = OrderedDict()

    def get(self, task_id: str) -> TaskRow | None:
        hit = self._rows.get(task_id)
        if hit is None:
            return None
        stored_at, row = hit
        if row.status.terminal or time.monotonic() - stored_at < self.ttl:
            self._rows.move_to_end(task_id)
            return row
        del self._rows[task_id]
        return None

    def put(self, row: TaskRow) -> TaskRow:
        if row.status.terminal or self.ttl > 0:
            self._rows[row.id] = (time.monotonic(), row)
            self._rows.move_to_end(row.id)
            while len(self._rows) > self.max_entries:
                self._rows.popitem(last=False)
        else:
            self._rows.pop(row.id, None)
        return row

    def drop(self, *task_ids: str) -> None:
        for task_id in task_ids:
            self._rows.pop(task_id, None)

    def clear(self) -> None:
        self._rows.clear()

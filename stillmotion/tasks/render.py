"""Task rows to the DashScope task body (contract 2.4)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from stillmotion.catalog import get_model, usage_for
from stillmotion.domain import TaskStatus
from stillmotion.storage.base import Storage
from stillmotion.tasks.retention import EXPIRED_CODE, expired_message, result_expired
from stillmotion.tasks.store import TaskRow


class TaskRenderer:
    def __init__(
        self,
        storage: Storage,
        time_zone: str = "UTC",
        *,
        result_ttl_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.storage = storage
        self.zone = ZoneInfo(time_zone)
        #: a result older than this has no URL (``tasks/retention.py``); None: only if swept
        self.result_ttl_seconds = result_ttl_seconds
        self.clock = clock
        # polls ask for the same few timestamps over and over
        self._format = functools.lru_cache(maxsize=65536)(self._format_uncached)

    def time_string(self, epoch: float | None) -> str | None:
        """``YYYY-MM-DD HH:mm:ss.SSS`` in the configured zone."""
        if epoch is None:
            return None
        return self._format(epoch)

    def _format_uncached(self, epoch: float) -> str:
        return datetime.fromtimestamp(epoch, self.zone).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]

    def expired(self, row: TaskRow) -> bool:
        """Whether the task's stored result is gone, or past its TTL (``tasks/retention.py``)."""
        return result_expired(row, self.clock(), self.result_ttl_seconds)

    def output(self, row: TaskRow) -> dict[str, Any]:
        out: dict[str, Any] = {"task_id": row.id, "task_status": row.status.value}
        out["submit_time"] = self.time_string(row.created_at)
        if row.scheduled_at is not None:
            out["scheduled_time"] = self.time_string(row.scheduled_at)
        if row.ended_at is not None:
            out["end_time"] = self.time_string(row.ended_at)
        out["orig_prompt"] = row.request.get("prompt", "")
        if row.status is TaskStatus.RUNNING:
            out["progress"] = int(round(row.progress * 100))
        if row.status is TaskStatus.SUCCEEDED and row.result:
            out["progress"] = 100
            out.update(row.result.get("extra_output") or {})
            if self.expired(row):
                # docs/api.md#expired-results: never a URL whose file is (about to be) gone
                out["result_expired"] = True
                out["code"] = EXPIRED_CODE
                out["message"] = expired_message(row, self.result_ttl_seconds)
            else:
                out["video_url"] = self.storage.signed_url(row.result["video_key"])
        if row.status is TaskStatus.FAILED:
            out["code"] = row.error_code or "InternalError"
            out["message"] = row.error_message or ""
        return out

    def usage(self, row: TaskRow) -> dict[str, Any] | None:
        if row.status is not TaskStatus.SUCCEEDED or not row.result:
            return None
        if row.result.get("usage"):
            return dict(row.result["usage"])
        spec = get_model(row.model)
        if spec is None:
            return None
        req, result = row.request, row.result
        size = (int(result["width"]), int(result["height"])) if result.get("width") else None
        return usage_for(spec, req["resolution"], int(req["duration"]), bool(req["audio"]), size)

    def body(self, row: TaskRow, rid: str) -> dict[str, Any]:
        body: dict[str, Any] = {"request_id": rid, "output": self.output(row)}
        usage = self.usage(row)
        if usage is not None:
            body["usage"] = usage
        return body

    @staticmethod
    def unknown(task_id: str, rid: str) -> dict[str, Any]:
        return {"request_id": rid, "output": {"task_id": task_id, "task_status": "UNKNOWN"}}

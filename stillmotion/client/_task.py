"""The task as the SDK sees it: the few fields people use, plus the raw body."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})


@dataclass(frozen=True)
class Task:
    task_id: str
    status: str
    video_url: str | None = None
    code: str | None = None
    message: str | None = None
    usage: dict[str, Any] | None = None
    progress: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """The task will not change any more."""
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Task:
        """A DashScope task (or submit) body ``{request_id, output: {...}, usage?}``."""
        output = body.get("output") or {}
        progress = output.get("progress")
        return cls(
            task_id=str(output.get("task_id", "")),
            status=str(output.get("task_status", "UNKNOWN")),
            video_url=output.get("video_url"),
            code=output.get("code"),
            message=output.get("message"),
            usage=body.get("usage"),
            progress=int(progress) if isinstance(progress, int | float) else None,
            raw=body,
        )

"""The rows the store hands out: plain frozen dataclasses, one per table row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from stillmotion.domain import TaskStatus

# SQLite may hand back a REAL that holds a whole number as an int (e.g. from RETURNING).
_FLOATS = frozenset(
    {"created_at", "scheduled_at", "ended_at", "updated_at", "run_after", "lease_expires_at",
     "progress", "revoked_at"}
)  # fmt: skip


def _columns(cls: type[Any], row: Mapping[Any, Any]) -> dict[str, Any]:
    data = {f.name: row[f.name] for f in fields(cls)}
    for name in _FLOATS.intersection(data):
        if data[name] is not None:
            data[name] = float(data[name])
    return data


@dataclass(frozen=True)
class TaskRow:
    id: str
    key_id: str
    model: str
    engine: str
    status: TaskStatus
    request: dict[str, Any]
    created_at: float
    scheduled_at: float | None
    ended_at: float | None
    updated_at: float
    run_after: float
    attempts: int
    max_attempts: int
    worker_id: str | None
    lease_expires_at: float | None
    progress: float
    cancel_requested: bool
    result: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    engine_state: dict[str, Any]

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> TaskRow:
        data = _columns(cls, row)
        data["status"] = TaskStatus(data["status"])
        data["cancel_requested"] = bool(data["cancel_requested"])
        data["engine_state"] = data["engine_state"] or {}
        return cls(**data)


@dataclass(frozen=True)
class ApiKeyRow:
    id: str
    name: str
    prefix: str
    created_at: float
    revoked_at: float | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ApiKeyRow:
        return cls(**_columns(cls, row))

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
    # money (tasks/ledger.py): micros; ``hold`` None when billing was off at submit,
    # ``cost``/``billed_ms`` None until the task ends
    account_id: str | None = None
    price: int = 0
    quote: int = 0
    hold: int | None = None
    cost: int | None = None
    billed_ms: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> TaskRow:
        data = _columns(cls, row)
        data["status"] = TaskStatus(data["status"])
        data["cancel_requested"] = bool(data["cancel_requested"])
        data["engine_state"] = data["engine_state"] or {}
        return cls(**data)


@dataclass(frozen=True)
class Limits:
    """What an account or key allows; ``None``: no limit. ``daily_budget`` in micros."""

    max_concurrent: int | None = None
    max_pending: int | None = None
    submit_rate: float | None = None
    daily_budget: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Limits:
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


@dataclass(frozen=True)
class ApiKeyRow:
    id: str
    name: str
    prefix: str
    created_at: float
    revoked_at: float | None
    account_id: str | None = None
    is_admin: bool = False
    limits: Limits = Limits()
    price_group: str | None = None  # the account's, when read with it (``key_by_hash``)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ApiKeyRow:
        skip = ("limits", "price_group")
        base = {f.name: row[f.name] for f in fields(cls) if f.name not in skip}
        base["price_group"] = row.get("price_group")
        base["created_at"] = float(base["created_at"])
        if base["revoked_at"] is not None:
            base["revoked_at"] = float(base["revoked_at"])
        base["is_admin"] = bool(base["is_admin"])
        return cls(**base, limits=Limits.from_row(row))


@dataclass(frozen=True)
class AccountRow:
    id: str
    name: str
    created_at: float
    balance: int  # micros posted: top-ups and adjustments less captures
    held: int  # micros reserved by open holds
    price_group: str | None
    limits: Limits

    @property
    def available(self) -> int:
        return self.balance - self.held

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> AccountRow:
        return cls(
            id=row["id"], name=row["name"], created_at=float(row["created_at"]),
            balance=int(row["balance"]), held=int(row["held"]), price_group=row["price_group"],
            limits=Limits.from_row(row),
        )  # fmt: skip

"""The caller's own account: ``GET /v1/account`` (balance, limits) and ``GET /v1/usage``.

Both answer for the caller's account only. The JSON helpers here (an account, limits, a
usage report) are shared with the admin API (``routes_admin.py``), which answers the same
shapes for any account.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from stillmotion.api.deps import CallerDep
from stillmotion.api.openapi import SECURED, error_responses
from stillmotion.api.schemas import CallerAccount, UsageReport
from stillmotion.errors import InvalidParameter, NotFound
from stillmotion.money import format_micros
from stillmotion.runtime import Runtime
from stillmotion.tasks.rows import AccountRow, Limits

router = APIRouter(tags=["account"])

GroupBy = Literal["day", "model", "key"]
#: the default report: the last ``DEFAULT_DAYS`` days (UTC) before today, and today
DEFAULT_DAYS = 30
_DATE = re.compile(r"\d{4}-\d\d-\d\d")
CSV_MEDIA = "text/csv"
CSV_COLUMNS = ("tasks", "succeeded", "output_seconds", "amount")


# -- JSON shapes ---------------------------------------------------------------------------


def money_or_none(micros: int | None) -> str | None:
    return None if micros is None else format_micros(micros)


def seconds_text(millis: int) -> str:
    """Milliseconds as seconds with three decimals: 5000 -> ``"5.000"``."""
    sign = "-" if millis < 0 else ""
    whole, frac = divmod(abs(int(millis)), 1000)
    return f"{sign}{whole}.{frac:03d}"


def limits_json(limits: Limits) -> dict[str, Any]:
    """``{max_concurrent, max_pending, submit_rate, daily_budget}``; ``None``: no limit."""
    return {
        "max_concurrent": limits.max_concurrent,
        "max_pending": limits.max_pending,
        "submit_rate": limits.submit_rate,
        "daily_budget": money_or_none(limits.daily_budget),
    }


def account_json(runtime: Runtime, account: AccountRow) -> dict[str, Any]:
    service = runtime.service
    return {
        "id": account.id,
        "name": account.name,
        "created_time": runtime.renderer.time_string(account.created_at),
        "currency": service.prices.currency,
        "billing": "on" if service.billing else "off",
        "balance": format_micros(account.balance),
        "held": format_micros(account.held),
        "available": format_micros(account.available),
        "price_group": account.price_group,
        "limits": limits_json(account.limits),
    }


# -- usage reports -------------------------------------------------------------------------


def parse_day(value: str | None, name: str, default: date) -> date:
    if value is None:
        return default
    if _DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise InvalidParameter(f"{name}: must be a date YYYY-MM-DD (UTC), e.g. 2026-01-31.")


def _epoch(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def report_window(start: str | None, end: str | None) -> tuple[date, date, float, float | None]:
    """The report's first and last day (both whole UTC days, ``end`` included) and the epoch
    bounds ``[from, to)`` of the tasks' end times."""
    today = datetime.now(UTC).date()
    last = parse_day(end, "end", today)
    first = parse_day(start, "start", last - timedelta(days=DEFAULT_DAYS))
    if first > last:
        raise InvalidParameter("end: must not be before start.")
    upper = None if last == date.max else _epoch(last + timedelta(days=1))
    return first, last, _epoch(first), upper


def usage_report(
    currency: str,
    account_id: str | None,
    group_by: str,
    first: date,
    last: date,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    data = [
        {
            group_by: row[group_by],
            "tasks": row["tasks"],
            "succeeded": row["succeeded"],
            "output_seconds": seconds_text(row["billed_ms"]),
            "amount": format_micros(row["cost"]),
        }
        for row in rows
    ]
    total = {
        "tasks": sum(r["tasks"] for r in rows),
        "succeeded": sum(r["succeeded"] for r in rows),
        "output_seconds": seconds_text(sum(r["billed_ms"] for r in rows)),
        "amount": format_micros(sum(r["cost"] for r in rows)),
    }
    return {
        "object": "list",
        "account_id": account_id,
        "currency": currency,
        "group_by": group_by,
        "start": first.isoformat(),
        "end": last.isoformat(),
        "data": data,
        "total": total,
    }


def wants_csv(accept: str | None) -> bool:
    """``Accept`` names ``text/csv`` with a quality at least that of ``application/json``
    (wildcards do not count: ``*/*`` alone is JSON)."""
    if not accept:
        return False
    quality = {CSV_MEDIA: 0.0, "application/json": 0.0}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        if media not in quality:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media] = max(quality[media], q if 0.0 <= q <= 1.0 else 0.0)
    return quality[CSV_MEDIA] > 0 and quality[CSV_MEDIA] >= quality["application/json"]


def report_csv(report: dict[str, Any]) -> Response:
    """The report's rows as CSV (RFC 4180): a header, then one line per group; no total."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    group_by = report["group_by"]
    writer.writerow((group_by, *CSV_COLUMNS))
    for row in report["data"]:
        writer.writerow((row[group_by], *(row[c] for c in CSV_COLUMNS)))
    name = f"usage-{report['start']}-{report['end']}.csv"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return Response(buf.getvalue(), media_type=CSV_MEDIA, headers=headers)


async def answer_usage(
    request: Request,
    runtime: Runtime,
    account_id: str | None,
    start: str | None,
    end: str | None,
    group_by: str,
) -> Any:
    """A usage report of ``account_id`` (``None``: every account), JSON or CSV by ``Accept``."""
    first, last, lower, upper = report_window(start, end)
    rows = await runtime.store.accounts.usage(account_id, lower, upper, group_by)
    currency = runtime.service.prices.currency
    report = usage_report(currency, account_id, group_by, first, last, rows)
    if wants_csv(request.headers.get("accept")):
        return report_csv(report)
    return report


StartQuery = Annotated[
    str | None,
    Query(
        description=f"First day (UTC), `YYYY-MM-DD`; default {DEFAULT_DAYS} days before `end`.",
        examples=["2026-01-01"],
    ),
]
EndQuery = Annotated[
    str | None,
    Query(
        description="Last day (UTC), `YYYY-MM-DD`, included whole; default today.",
        examples=["2026-01-31"],
    ),
]
GroupQuery = Annotated[
    GroupBy,
    Query(description="One row per UTC day of the task's end, per model, or per API key."),
]
#: ``responses=`` of a usage route: JSON, or CSV when asked for
USAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": UsageReport,
        "description": "The report; with `Accept: text/csv` its rows as CSV (a header line, "
        "no total).",
        "content": {CSV_MEDIA: {"schema": {"type": "string"}}},
    }
}


# -- routes --------------------------------------------------------------------------------


@router.get(
    "/v1/account",
    summary="The caller's account: balance, limits, price group",
    responses={
        200: {"model": CallerAccount},
        **error_responses(400, 401, 404, 500, notes={404: "`NotFound`: the key has no account."}),
    },
    openapi_extra=SECURED,
)
async def show_own_account(caller: CallerDep) -> Any:
    runtime, key = caller.runtime, caller.key
    account = await runtime.store.accounts.get(key.account_id) if key.account_id else None
    if account is None:
        raise NotFound("This API key has no account.")
    key_limits = await runtime.store.accounts.key_limits(key.id)
    body = account_json(runtime, account)
    body["key_limits"] = limits_json(key_limits or Limits())
    return body


@router.get(
    "/v1/usage",
    summary="The caller's account's usage: ended tasks, output seconds, amounts",
    responses={**USAGE_RESPONSES, **error_responses(400, 401, 500)},
    openapi_extra=SECURED,
)
async def own_usage(
    request: Request,
    caller: CallerDep,
    start: StartQuery = None,
    end: EndQuery = None,
    group_by: GroupQuery = "day",
) -> Any:
    account_id = caller.key.account_id or caller.key.id
    return await answer_usage(request, caller.runtime, account_id, start, end, group_by)

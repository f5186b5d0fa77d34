"""``stillmotion usage`` and ``stillmotion billing verify`` (docs/billing.md)."""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from stillmotion.cli_accounts import get_account, with_store
from stillmotion.cli_common import PLAIN, ConfigFile, DataDir, admin_settings, err, fail
from stillmotion.money import format_micros
from stillmotion.tasks.audit import CHECKS
from stillmotion.tasks.store import TaskStore

billing_app = typer.Typer(help="Billing checks.", no_args_is_help=True)


class GroupBy(StrEnum):
    day = "day"
    model = "model"
    key = "key"


def register(app: typer.Typer) -> None:
    """Add ``usage`` and ``billing`` to the main app."""
    app.add_typer(billing_app, name="billing")
    app.command("usage")(usage)


# -- usage ---------------------------------------------------------------------------------


def _day(text: str, option: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        fail(f"{option} {text!r} is not a date YYYY-MM-DD", 2)


def _period(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """``[start, end)`` in epoch seconds: from ``since`` 00:00 UTC to the end of ``until``."""
    start = _day(since, "--since") if since is not None else None
    end = _day(until, "--until") + timedelta(days=1) if until is not None else None
    if start is not None and end is not None and start >= end:
        fail("--since is after --until", 2)
    return (
        start.timestamp() if start is not None else None,
        end.timestamp() if end is not None else None,
    )


def _n(count: int, what: str) -> str:
    return f"{count} {what}" + ("" if count == 1 else "s")


def _seconds(millis: int) -> str:
    return f"{millis // 1000}.{millis % 1000:03d}"


def usage(
    account: Annotated[
        str | None, typer.Option("--account", help="Only this account (default: all).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="From this UTC day, YYYY-MM-DD.")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Up to and including this UTC day.")
    ] = None,
    group_by: Annotated[GroupBy, typer.Option("--group-by", help="One row per...")] = GroupBy.day,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout, with a header.")] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Ended tasks and what they cost, per day (UTC, of the end), model or key."""
    start, end = _period(since, until)
    settings = admin_settings(config, data_dir)

    async def go(store: TaskStore) -> list[dict[str, Any]]:
        if account is not None:
            await get_account(store, account)
        return await store.accounts.usage(account, start, end, group_by.value)

    rows = with_store(settings, go)
    if settings.billing == "off":
        err.print("billing is off: amounts are what these videos would have cost", **PLAIN)
    if as_csv:
        _usage_csv(rows, group_by.value, settings.currency)
    else:
        Console().print(_usage_table(rows, group_by.value, settings.currency))


def _usage_csv(rows: list[dict[str, Any]], group: str, cur: str) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([group, "tasks", "succeeded", "output_seconds", "amount", "currency"])
    for r in rows:
        writer.writerow(
            [r[group], r["tasks"], r["succeeded"], _seconds(r["billed_ms"]),
             format_micros(r["cost"]), cur]
        )  # fmt: skip


def _usage_table(rows: list[dict[str, Any]], group: str, cur: str) -> Table:
    table = Table(group, "tasks", "succeeded", "output s", f"amount ({cur})", show_footer=True)
    for r in rows:
        table.add_row(
            str(r[group]), str(r["tasks"]), str(r["succeeded"]), _seconds(r["billed_ms"]),
            format_micros(r["cost"]),
        )  # fmt: skip
    total = {k: sum(r[k] for r in rows) for k in ("tasks", "succeeded", "billed_ms", "cost")}
    footers = ["total", str(total["tasks"]), str(total["succeeded"]),
               _seconds(total["billed_ms"]), format_micros(total["cost"])]  # fmt: skip
    for column, footer in zip(table.columns, footers, strict=True):
        column.footer = footer
    return table


# -- billing verify ------------------------------------------------------------------------


@billing_app.command("verify")
def billing_verify(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Check the ledger's invariants (tasks/audit.py); exit 1 naming every failed check."""
    settings = admin_settings(config, data_dir)

    async def go(store: TaskStore) -> tuple[dict[str, list[dict[str, Any]]], int]:
        return await store.verify_billing(), len(await store.accounts.all())

    problems, accounts = with_store(settings, go)
    out = Console()
    if not problems:
        out.print(f"billing verify: ok ({len(CHECKS)} checks, {_n(accounts, 'account')})", **PLAIN)
        return
    for name, rows in problems.items():
        out.print(f"FAILED {name}: {len(rows)} offending row(s)", **PLAIN)
        table = Table(*rows[0].keys())
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        out.print(table)
    out.print(f"billing verify: {len(problems)} of {len(CHECKS)} checks failed", **PLAIN)
    raise typer.Exit(1)

"""``stillmotion accounts``: the operator's side of the money (docs/billing.md; ``usage`` and
``billing verify`` are in ``cli_billing``). Amounts are typed as decimals of the currency
(``50``, ``12.345``) and kept as integer micros (``stillmotion.money``); every change of a
balance is a ledger entry."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from stillmotion.cli_common import (
    PLAIN,
    ConfigFile,
    DataDir,
    admin_settings,
    err,
    fail,
    open_store,
    run_or_exit,
)
from stillmotion.config import Settings
from stillmotion.money import MoneyError, format_micros, parse_factors, to_micros
from stillmotion.tasks.accounts import KEEP
from stillmotion.tasks.rows import AccountRow, Limits
from stillmotion.tasks.store import TaskStore

T = TypeVar("T")

accounts_app = typer.Typer(
    help="Accounts: balances, top-ups, adjustments and limits.", no_args_is_help=True
)
#: a negative AMOUNT (``adjust ID -5``) is an argument, not an unknown option
_NEGATIVE_OK = {"ignore_unknown_options": True}
ENTRIES_SHOWN = 10

AccountId = Annotated[
    str, typer.Argument(metavar="ID", help="The account's id (from `accounts list`).")
]
Amount = Annotated[
    str, typer.Argument(metavar="AMOUNT", help="A decimal of the currency, e.g. 50 or 12.345.")
]
Ref = Annotated[
    str | None,
    typer.Option("--ref", help="A reference (e.g. a payment id): the same ref twice is one entry."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
CLEAR = "N, or 'none' to remove the limit."


def register(app: typer.Typer) -> None:
    """Add ``accounts`` to the main app."""
    app.add_typer(accounts_app, name="accounts")


def with_store(settings: Settings, fn: Callable[[TaskStore], Awaitable[T]]) -> T:
    async def go() -> T:
        async with open_store(settings) as store:
            return await fn(store)

    return run_or_exit(go())


def _micros(text: str, what: str, *, negative: bool = False) -> int:
    try:
        return to_micros(text, what=what, negative=negative)
    except MoneyError as exc:
        fail(str(exc), 2)


def _money(micros: int, currency: str) -> str:
    return f"{format_micros(micros)} {currency}"


def _iso(epoch: float) -> str:
    """ISO 8601 in UTC, to the millisecond: ``2026-11-24T10:00:00.123Z``."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _limits_json(limits: Limits) -> dict[str, Any]:
    budget = limits.daily_budget
    return {
        "max_concurrent": limits.max_concurrent,
        "max_pending": limits.max_pending,
        "submit_rate": limits.submit_rate,
        "daily_budget": None if budget is None else format_micros(budget),
    }


def account_json(row: AccountRow, currency: str) -> dict[str, Any]:
    """What ``accounts show --json`` prints: amounts as decimal strings."""
    return {
        "id": row.id,
        "name": row.name,
        "balance": format_micros(row.balance),
        "held": format_micros(row.held),
        "available": format_micros(row.available),
        "currency": currency,
        "price_group": row.price_group,
        "created_at": _iso(row.created_at),
        "limits": _limits_json(row.limits),
    }


async def get_account(store: TaskStore, account_id: str) -> AccountRow:
    row = await store.accounts.get(account_id)
    if row is None:
        fail(f"no account {account_id!r} (see `stillmotion accounts list`)", 1)
    return row


# -- create, top-up, adjust ----------------------------------------------------------------


@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Option("--name", help="The account's name.")],
    balance: Annotated[str, typer.Option("--balance", help="Opening balance, e.g. 100.")] = "0",
    price_group: Annotated[
        str | None, typer.Option("--price-group", help="A price group of STILLMOTION_PRICE_GROUPS.")
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Make an account and print its id (alone, on stdout)."""
    opening = _micros(balance, "balance")
    group = _group(price_group) if price_group is not None else None
    settings = admin_settings(config, data_dir)
    _warn_unknown_group(settings, group)
    account_id = with_store(
        settings, lambda store: store.accounts.create(name, opening, price_group=group)
    )
    err.print(f"account {account_id} ({name}): {_money(opening, settings.currency)}", **PLAIN)
    sys.stdout.write(f"{account_id}\n")


@accounts_app.command("top-up", context_settings=_NEGATIVE_OK)
def accounts_top_up(
    account_id: AccountId,
    amount: Amount,
    ref: Ref = None,
    note: Annotated[str | None, typer.Option("--note", help="Why, for the ledger.")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Add AMOUNT to the account's balance (a topup ledger entry)."""
    micros = _micros(amount, "top-up amount")
    if micros == 0:
        fail("a top-up must be above 0", 2)
    _move(admin_settings(config, data_dir), account_id, micros, "topup", ref, note)


@accounts_app.command("adjust", context_settings=_NEGATIVE_OK)
def accounts_adjust(
    account_id: AccountId,
    amount: Annotated[
        str, typer.Argument(metavar="AMOUNT", help="A decimal, negative to take money off.")
    ],
    note: Annotated[str, typer.Option("--note", help="Why: every correction says why.")],
    ref: Ref = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Correct the balance by AMOUNT, which may be negative (an adjustment entry)."""
    micros = _micros(amount, "adjustment", negative=True)
    if micros == 0:
        fail("an adjustment of 0 changes nothing", 2)
    if not note.strip():
        fail("--note must say why", 2)
    _move(admin_settings(config, data_dir), account_id, micros, "adjustment", ref, note)


def _move(
    settings: Settings, account_id: str, micros: int, kind: str, ref: str | None, note: str | None
) -> None:
    async def go(store: TaskStore) -> tuple[bool, AccountRow]:
        try:
            applied = await store.accounts.move(account_id, micros, kind=kind, ref=ref, note=note)
        except LookupError:
            fail(f"no account {account_id!r} (see `stillmotion accounts list`)", 1)
        return applied, await get_account(store, account_id)

    applied, row = with_store(settings, go)
    cur = settings.currency
    if not applied:
        err.print(f"already applied: {kind} ref {ref!r} of account {account_id}", **PLAIN)
    else:
        err.print(f"{kind} {_money(micros, cur)} on account {account_id}", **PLAIN)
    err.print(f"balance {_money(row.balance, cur)}, available {_money(row.available, cur)}")


# -- show, list ----------------------------------------------------------------------------


@accounts_app.command("show")
def accounts_show(
    account_id: AccountId,
    as_json: Json = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """An account's balance, limits and keys, and its last ledger entries."""
    settings = admin_settings(config, data_dir)

    async def go(store: TaskStore) -> tuple[AccountRow, list[Any], list[dict[str, Any]]]:
        row = await get_account(store, account_id)
        keys = [k for k in await store.list_keys() if k.account_id == account_id]
        return row, keys, await store.accounts.entries(account_id, ENTRIES_SHOWN)

    row, keys, entries = with_store(settings, go)
    if as_json:
        sys.stdout.write(json.dumps(account_json(row, settings.currency), indent=2) + "\n")
        return
    out = Console()
    out.print(_account_table(row, settings.currency))
    out.print(_keys_table(keys))
    out.print(_entries_table(entries, settings.currency))


def _limit(value: object, unit: str = "") -> str:
    return "none" if value is None else f"{value}{unit}"


def _account_table(row: AccountRow, cur: str) -> Table:
    table = Table(title=f"account {row.id}", show_header=False)
    budget = row.limits.daily_budget
    for name, value in (
        ("name", row.name),
        ("balance", _money(row.balance, cur)),
        ("held", _money(row.held, cur)),
        ("available", _money(row.available, cur)),
        ("price group", row.price_group or "none"),
        ("created", _iso(row.created_at)),
        ("max concurrent", _limit(row.limits.max_concurrent)),
        ("max pending", _limit(row.limits.max_pending)),
        ("submit rate", _limit(row.limits.submit_rate, "/s")),
        ("daily budget", "none" if budget is None else _money(budget, cur)),
    ):
        table.add_row(name, value)
    return table


def _keys_table(keys: list[Any]) -> Table:
    table = Table("key", "name", "admin", "state", "limits", title="keys")
    for k in keys:
        limits = ", ".join(f"{n} {v}" for n, v in _limits_json(k.limits).items() if v is not None)
        state = "revoked" if k.revoked_at else "active"
        table.add_row(k.id, k.name, "admin" if k.is_admin else "", state, limits or "none")
    return table


def _entries_table(entries: list[dict[str, Any]], cur: str) -> Table:
    title = f"last {ENTRIES_SHOWN} ledger entries ({cur})"
    table = Table("at (UTC)", "kind", "amount", "balance Δ", "held Δ", "task or ref", "note",
                  title=title)  # fmt: skip
    for e in entries:
        detail = e.get("detail") or {}
        note = detail.get("note") or detail.get("why") or ""
        table.add_row(
            _short_time(float(e["at"])), e["kind"], format_micros(e["amount"]),
            format_micros(e["balance_delta"]), format_micros(e["held_delta"]), _ref(e), note,
        )  # fmt: skip
    return table


def _short_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ref(entry: dict[str, Any]) -> str:
    """The task of a hold or settlement; the ``--ref`` of a top-up or adjustment."""
    if entry.get("task_id"):
        return str(entry["task_id"])
    prefix = f"{entry['kind']}:{entry['account_id']}:"
    return str(entry["id"]).removeprefix(prefix) if str(entry["id"]).startswith(prefix) else ""


@accounts_app.command("list")
def accounts_list(
    as_json: Json = False, data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Every account: balance, held, available, price group and number of keys."""
    settings = admin_settings(config, data_dir)

    async def go(store: TaskStore) -> tuple[list[AccountRow], Counter[str | None]]:
        keys = Counter(k.account_id for k in await store.list_keys())
        return await store.accounts.all(), keys

    rows, keys = with_store(settings, go)
    cur = settings.currency
    if as_json:
        items = [{**account_json(r, cur), "keys": keys[r.id]} for r in rows]
        sys.stdout.write(json.dumps(items, indent=2) + "\n")
        return
    table = Table("id", "name", f"balance ({cur})", "held", "available", "price group", "keys")
    for r in rows:
        table.add_row(
            r.id, r.name, format_micros(r.balance), format_micros(r.held),
            format_micros(r.available), r.price_group or "", str(keys[r.id]),
        )  # fmt: skip
    Console().print(table)


# -- set -----------------------------------------------------------------------------------


def _none(text: str) -> bool:
    return text.strip().lower() == "none"


def _count(text: str, option: str) -> int | None:
    if _none(text):
        return None
    try:
        value = int(text)
    except ValueError:
        fail(f"{option} {text!r} is not a whole number (or 'none')", 2)
    if value < 0:
        fail(f"{option} must be 0 or more", 2)
    return value


def _rate(text: str) -> float | None:
    if _none(text):
        return None
    try:
        value = float(text)
    except ValueError:
        fail(f"--submit-rate {text!r} is not a number (or 'none')", 2)
    if not math.isfinite(value) or value <= 0:
        fail("--submit-rate must be above 0 (submits per second)", 2)
    return value


def _budget(text: str) -> int | None:
    return None if _none(text) else _micros(text, "--daily-budget")


def _group(text: str) -> str | None:
    group = text.strip()
    if _none(group):
        return None
    if not group or len(group) > 64:
        fail("--price-group must be 1 to 64 characters (or 'none')", 2)
    return group


def _name(text: str) -> str:
    if not text.strip() or len(text) > 200:
        fail("--name must be 1 to 200 characters", 2)
    return text


def _changes(options: dict[str, str | None]) -> dict[str, Any]:
    """The parsed values of the options given (``None``: clear)."""
    parsers: dict[str, Callable[[str], Any]] = {
        "name": _name,
        "price_group": _group,
        "max_concurrent": lambda t: _count(t, "--max-concurrent"),
        "max_pending": lambda t: _count(t, "--max-pending"),
        "submit_rate": _rate,
        "daily_budget": _budget,
    }
    return {k: parsers[k](v) for k, v in options.items() if v is not None}


def _opt(help_text: str) -> Any:
    return typer.Option(help=help_text, show_default=False)


@accounts_app.command("set")
def accounts_set(
    account_id: AccountId,
    key: Annotated[
        str | None, typer.Option("--key", help="Set the limits of this key of the account.")
    ] = None,
    max_concurrent: Annotated[str | None, _opt(f"Tasks running at once. {CLEAR}")] = None,
    max_pending: Annotated[str | None, _opt(f"Tasks waiting (PENDING) at once. {CLEAR}")] = None,
    submit_rate: Annotated[
        str | None, _opt("Submits per second (e.g. 0.5), or 'none' to remove the limit.")
    ] = None,
    daily_budget: Annotated[
        str | None, _opt("Spend per UTC day (e.g. 200), or 'none' to remove the limit.")
    ] = None,
    price_group: Annotated[
        str | None, _opt("The account's price group, or 'none' (not with --key).")
    ] = None,
    name: Annotated[str | None, _opt("A new name (with --key: the key's).")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Change an account's (or with --key one of its keys') limits, price group or name.

    Only the options given change; 'none' removes a limit (or the price group).
    """
    options = dict(name=name, price_group=price_group, max_concurrent=max_concurrent,
                   max_pending=max_pending, submit_rate=submit_rate,
                   daily_budget=daily_budget)  # fmt: skip
    changes = _changes(options)
    if not changes:
        fail("nothing to set: give at least one option (see `accounts set --help`)", 2)
    if key is not None and "price_group" in changes:
        fail("a price group belongs to the account, not to a key: drop --key", 2)
    settings = admin_settings(config, data_dir)
    _warn_unknown_group(settings, changes.get("price_group"))
    limits = with_store(settings, lambda store: _set(store, account_id, key, changes))
    whose = f"key {key} of account {account_id}" if key else f"account {account_id}"
    shown = ", ".join(f"{n} {_limit(v)}" for n, v in _limits_json(limits).items())
    err.print(f"updated {whose}: {', '.join(sorted(changes))}; limits now {shown}", **PLAIN)


async def _set(
    store: TaskStore, account_id: str, key: str | None, changes: dict[str, Any]
) -> Limits:
    row = await get_account(store, account_id)
    values = {k: changes.get(k, KEEP) for k in _SETTABLE}
    if not await store.accounts.set(account_id, key_id=key, **values):
        fail(f"no key {key!r} of account {account_id!r} (see `stillmotion keys list`)", 1)
    if key is None:
        return (await get_account(store, account_id)).limits
    return await store.accounts.key_limits(key) or row.limits


_SETTABLE = ("name", "price_group", "max_concurrent", "max_pending", "submit_rate", "daily_budget")


def _warn_unknown_group(settings: Settings, group: str | None) -> None:
    if group is None:
        return
    try:
        known = parse_factors(settings.price_groups or None, "STILLMOTION_PRICE_GROUPS")
    except MoneyError:
        return  # serve refuses to start with it; not this command's business
    if group not in known:
        err.print(
            f"warning: price group {group!r} is not in STILLMOTION_PRICE_GROUPS "
            f"({', '.join(sorted(known)) or 'none set'}): its prices are the list prices",
            **PLAIN,
        )

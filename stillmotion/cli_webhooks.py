"""``stillmotion webhooks``: accounts' completion endpoints, their callback secrets and the
deliveries with their attempts (docs/webhooks.md)."""

from __future__ import annotations

import json
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
from stillmotion.errors import InvalidParameter
from stillmotion.tasks.store import TaskStore
from stillmotion.tasks.webhooks import EndpointRow

T = TypeVar("T")

webhooks_app = typer.Typer(
    help="Completion webhooks: endpoints, callback secrets, deliveries.", no_args_is_help=True
)
AccountOpt = Annotated[str, typer.Option("--account", help="The account's id.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def register(app: typer.Typer) -> None:
    """Add ``webhooks`` to the main app."""
    app.add_typer(webhooks_app, name="webhooks")


def _with_store(settings: Settings, fn: Callable[[TaskStore], Awaitable[T]]) -> T:
    async def go() -> T:
        async with open_store(settings) as store:
            return await fn(store)

    return run_or_exit(go())


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def endpoint_json(row: EndpointRow) -> dict[str, Any]:
    return {"id": row.id, "account_id": row.account_id, "url": row.url,
            "created_at": _iso(row.created_at)}  # fmt: skip


def delivery_json(d: dict[str, Any]) -> dict[str, Any]:
    """A delivery as ``deliveries --json`` prints it: times in ISO 8601 (UTC)."""
    out = dict(d)
    for name in ("created_at", "next_at", "lease_until", "ended_at"):
        out[name] = _iso(out.get(name))
    out["attempts"] = [{**a, "at": _iso(a["at"])} for a in d["attempts"]]
    return out


@webhooks_app.command("add")
def webhooks_add(
    url: Annotated[str, typer.Argument(metavar="URL", help="An http(s) URL to POST to.")],
    account: AccountOpt,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Register URL for all of the account's tasks; prints the endpoint id and, once only,
    its signing secret."""
    settings = admin_settings(config, data_dir)

    async def add(store: TaskStore) -> tuple[EndpointRow, str]:
        try:
            return await store.webhooks.add_endpoint(account, url)
        except LookupError:
            fail(f"no account {account!r} (see `stillmotion accounts list`)", 1)
        except InvalidParameter as exc:
            fail(exc.message, 2)

    row, secret = _with_store(settings, add)
    print(row.id)
    print(secret)
    err.print("the secret is shown only now: keep it to verify webhook-signature", **PLAIN)


@webhooks_app.command("list")
def webhooks_list(
    account: Annotated[
        str | None, typer.Option("--account", help="Only this account's endpoints.")
    ] = None,
    as_json: Json = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Registered endpoints (never their secrets)."""
    settings = admin_settings(config, data_dir)
    rows = _with_store(settings, lambda store: store.webhooks.endpoints(account))
    if as_json:
        print(json.dumps([endpoint_json(r) for r in rows], indent=2))
        return
    table = Table("id", "account", "url", "created")
    for r in rows:
        table.add_row(r.id, r.account_id, r.url, _iso(r.created_at))
    Console().print(table)


@webhooks_app.command("remove")
def webhooks_remove(
    endpoint_id: Annotated[str, typer.Argument(metavar="ID", help="The endpoint's id.")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Stop sending to an endpoint (its pending deliveries fail)."""
    settings = admin_settings(config, data_dir)
    if not _with_store(settings, lambda store: store.webhooks.remove_endpoint(endpoint_id)):
        fail(f"no endpoint {endpoint_id!r} (see `stillmotion webhooks list`)", 1)
    err.print(f"removed {endpoint_id}", **PLAIN)


@webhooks_app.command("secret")
def webhooks_secret(
    account: AccountOpt, data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """The account's callback secret, which signs the callbacks its submits name with the
    X-Stillmotion-Callback header (made on first use)."""
    settings = admin_settings(config, data_dir)

    async def secret(store: TaskStore) -> str:
        try:
            return await store.webhooks.callback_secret(account)
        except LookupError:
            fail(f"no account {account!r} (see `stillmotion accounts list`)", 1)

    print(_with_store(settings, secret))


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    task: Annotated[str | None, typer.Option("--task", help="Only this task's.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="Only this account's.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 50,
    as_json: Json = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Deliveries, newest first, each with its attempts."""
    settings = admin_settings(config, data_dir)
    rows = _with_store(
        settings,
        lambda store: store.webhooks.deliveries(task_id=task, account_id=account, limit=limit),
    )
    if as_json:
        print(json.dumps([delivery_json(d) for d in rows], indent=2))
        return
    table = Table("webhook-id", "status", "attempts", "last", "url", "next")
    for d in rows:
        last = d["last_error"] or (str(d["last_status"]) if d["last_status"] else "")
        nxt = _iso(d["next_at"]) if d["status"] == "pending" else ""
        table.add_row(d["id"], d["status"], str(d["attempt_count"]), last, d["url"], nxt)
        for a in d["attempts"]:
            what = a["error"] or str(a["status_code"])
            table.add_row("", "", f"  {_iso(a['at'])}", f"{what} ({a['duration_ms']:.0f} ms)")
    Console().print(table)

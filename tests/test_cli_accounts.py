"""The billing command line: ``accounts``, ``keys create --account``, ``usage`` and
``billing verify``, run in process (typer's CliRunner) against a data dir's SQLite database."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from stillmotion.cli import app
from stillmotion.config import Settings
from stillmotion.tasks.rows import ApiKeyRow
from stillmotion.tasks.store import TaskStore
from tests.store_fixtures import FakeClock

DAY = 86_400.0
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("STILLMOTION_"):
            monkeypatch.delenv(name)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def cli(data: Path, *args: str) -> Result:
    """``stillmotion ARGS --data-dir DATA`` in process, wide enough that tables do not fold."""
    runner = CliRunner(env={"COLUMNS": "200"})
    return runner.invoke(app, [*args, "--data-dir", str(data)])


def ok(data: Path, *args: str) -> Result:
    result = cli(data, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def new_account(data: Path, *args: str) -> str:
    return ok(data, "accounts", "create", "--name", "acme", *args).stdout.strip()


def show(data: Path, account_id: str) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(ok(data, "accounts", "show", account_id, "--json").stdout)
    return shown


def db_url(data: Path) -> str:
    return Settings(data_dir=data).db_url


async def _keys(data: Path) -> list[ApiKeyRow]:
    store = await TaskStore.open(db_url(data))
    try:
        return await store.list_keys()
    finally:
        await store.close()


def keys(data: Path) -> list[ApiKeyRow]:
    return asyncio.run(_keys(data))


# -- create, show, top-up, adjust ----------------------------------------------------------


def test_create_prints_only_the_id_and_show_json_has_every_field(data: Path) -> None:
    made = ok(data, "accounts", "create", "--name", "acme", "--balance", "100")
    account_id = made.stdout.strip()
    assert made.stdout == f"{account_id}\n" and len(account_id) == 12
    assert "100.00 CNY" in made.stderr
    shown = show(data, account_id)
    created = shown.pop("created_at")
    assert created.endswith("Z") and created[:4].isdigit() and created[10] == "T"
    assert shown == {
        "id": account_id, "name": "acme", "balance": "100.00", "held": "0.00",
        "available": "100.00", "currency": "CNY", "price_group": None,
        "limits": {"max_concurrent": None, "max_pending": None, "submit_rate": None,
                   "daily_budget": None},
    }  # fmt: skip


def test_create_with_a_price_group_and_a_bad_balance(data: Path) -> None:
    account_id = new_account(data, "--price-group", "vip")
    assert show(data, account_id)["price_group"] == "vip"
    bad = cli(data, "accounts", "create", "--name", "x", "--balance", "1.2345678")
    assert bad.exit_code == 2 and bad.stdout == "" and "six decimal places" in bad.stderr
    listed = json.loads(ok(data, "accounts", "list", "--json").stdout)
    assert [a["id"] for a in listed] == [account_id]  # the refused one was not made


def test_top_up_changes_balance_and_available_and_a_ref_applies_once(data: Path) -> None:
    account_id = new_account(data, "--balance", "100")
    ok(data, "accounts", "top-up", account_id, "12.345", "--ref", "pay-1", "--note", "wire")
    again = ok(data, "accounts", "top-up", account_id, "12.345", "--ref", "pay-1")
    assert "already applied" in again.stderr
    shown = show(data, account_id)
    assert (shown["balance"], shown["available"]) == ("112.345", "112.345")
    table = ok(data, "accounts", "show", account_id).stdout
    assert table.count("pay-1") == 1 and "wire" in table and "opening" in table


def test_top_up_refuses_bad_amounts_and_unknown_accounts(data: Path) -> None:
    account_id = new_account(data)
    for amount, why in (("ten", "not a decimal"), ("-5", "negative"), ("0", "above 0")):
        bad = cli(data, "accounts", "top-up", account_id, amount)
        assert bad.exit_code == 2 and why in bad.stderr, (amount, bad.stderr)
    unknown = cli(data, "accounts", "top-up", "nope", "5")
    assert unknown.exit_code == 1 and "no account 'nope'" in unknown.stderr
    assert show(data, account_id)["balance"] == "0.00"


def test_adjust_may_take_money_off_and_needs_a_note(data: Path) -> None:
    account_id = new_account(data, "--balance", "10")
    ok(data, "accounts", "adjust", account_id, "-2.5", "--note", "refund fixed")
    assert show(data, account_id)["balance"] == "7.50"
    assert cli(data, "accounts", "adjust", account_id, "-1").exit_code == 2  # no --note
    assert "adjustment" in ok(data, "accounts", "show", account_id).stdout
    assert cli(data, "accounts", "adjust", "nope", "1", "--note", "x").exit_code == 1


# -- set -----------------------------------------------------------------------------------


def test_set_changes_only_the_given_limits_and_none_clears(data: Path) -> None:
    account_id = new_account(data)
    args = ("--max-concurrent", "3", "--max-pending", "10", "--submit-rate", "0.5")
    ok(data, "accounts", "set", account_id, *args, "--daily-budget", "20.5")
    limits = {"max_concurrent": 3, "max_pending": 10, "submit_rate": 0.5, "daily_budget": "20.50"}
    assert show(data, account_id)["limits"] == limits
    ok(data, "accounts", "set", account_id, "--max-concurrent", "none", "--price-group", "vip")
    shown = show(data, account_id)
    assert shown["limits"] == {**limits, "max_concurrent": None}
    assert shown["price_group"] == "vip" and shown["name"] == "acme"
    ok(data, "accounts", "set", account_id, "--price-group", "none", "--name", "acme2")
    shown = show(data, account_id)
    assert (shown["price_group"], shown["name"]) == (None, "acme2")


def test_set_refuses_bad_values_and_unknown_accounts(data: Path) -> None:
    account_id = new_account(data)
    for args in (("--max-concurrent", "two"), ("--max-pending", "-1"),
                 ("--submit-rate", "0"), ("--daily-budget", "1e-9"), ()):  # fmt: skip
        assert cli(data, "accounts", "set", account_id, *args).exit_code == 2, args
    unknown = cli(data, "accounts", "set", "nope", "--max-pending", "1")
    assert unknown.exit_code == 1 and "no account 'nope'" in unknown.stderr
    assert show(data, account_id)["limits"]["max_pending"] is None


def test_set_with_key_limits_that_key_only(data: Path) -> None:
    account_id = new_account(data)
    ok(data, "keys", "create", "--name", "k1", "--account", account_id)
    (key,) = keys(data)
    ok(data, "accounts", "set", account_id, "--key", key.id, "--max-pending", "2")
    (key,) = keys(data)
    assert key.limits.max_pending == 2 and key.limits.max_concurrent is None
    assert show(data, account_id)["limits"]["max_pending"] is None  # the account's unchanged
    group = cli(data, "accounts", "set", account_id, "--key", key.id, "--price-group", "vip")
    assert group.exit_code == 2 and "price group belongs to the account" in group.stderr
    other = new_account(data)
    wrong = cli(data, "accounts", "set", other, "--key", key.id, "--max-pending", "1")
    assert wrong.exit_code == 1 and f"no key {key.id!r}" in wrong.stderr
    assert "max_pending 2" in ok(data, "accounts", "show", account_id).stdout


# -- keys ----------------------------------------------------------------------------------


def test_keys_create_with_an_account_and_admin(data: Path) -> None:
    account_id = new_account(data)
    key = ok(data, "keys", "create", "--name", "ops", "--account", account_id, "--admin").stdout
    assert key.startswith("sm-") and key.count("\n") == 1
    ok(data, "keys", "create", "--name", "plain")
    ops, plain = keys(data)
    assert (ops.account_id, ops.is_admin) == (account_id, True)
    assert plain.account_id not in (None, account_id) and plain.is_admin is False
    listed = ok(data, "keys", "list").stdout
    ops_line = next(line for line in listed.splitlines() if ops.id in line)
    plain_line = next(line for line in listed.splitlines() if plain.id in line)
    assert account_id in ops_line and "admin" in ops_line and "admin" not in plain_line
    accounts = {a["id"]: a for a in json.loads(ok(data, "accounts", "list", "--json").stdout)}
    assert accounts[account_id]["keys"] == 1 and accounts[plain.account_id]["name"] == "plain"


def test_keys_create_for_an_unknown_account_fails(data: Path) -> None:
    new_account(data)
    made = cli(data, "keys", "create", "--name", "x", "--account", "nope")
    assert made.exit_code == 1 and made.stdout == "" and "no account 'nope'" in made.stderr
    assert keys(data) == []


# -- usage ---------------------------------------------------------------------------------


async def _ended_tasks(data: Path, account_id: str, key_id: str) -> None:
    """Day 1: a 5 s wan2.6-i2v at 0.60/s (3.00) and a FAILED flash; day 2: a 2.5 s flash at
    0.25/s (0.625)."""
    clock = FakeClock(T0)
    store = await TaskStore.open(db_url(data), clock=clock)
    try:
        for model, price, seconds, advance in (
            ("wan2.6-i2v", 600_000, 5, 0.0),
            ("wan2.6-i2v-flash", 250_000, None, 0.0),
            ("wan2.6-i2v-flash", 250_000, 2.5, DAY),
        ):
            clock.advance(advance)
            await store.create_task(
                task_id=str(uuid.uuid4()), key_id=key_id, model=model, engine="motion",
                request={}, max_attempts=1, account_id=account_id, price=price,
            )  # fmt: skip
            row = await store.claim("w1", 30.0)
            assert row is not None
            if seconds is None:
                assert await store.finish_failure(row.id, "w1", "InternalError", "boom")
            else:
                result = {"usage": {"output_video_duration": seconds}}
                assert await store.finish_success(row.id, "w1", result)
    finally:
        await store.close()


@pytest.fixture
def billed(data: Path) -> tuple[str, str]:
    """An account with a key and three ended tasks: ``(account id, key id)``."""
    account_id = new_account(data)
    ok(data, "keys", "create", "--name", "k", "--account", account_id)
    (key,) = keys(data)
    asyncio.run(_ended_tasks(data, account_id, key.id))
    return account_id, key.id


def test_usage_csv_per_day_model_and_key(data: Path, billed: tuple[str, str]) -> None:
    account_id, key_id = billed
    by_day = ok(data, "usage", "--csv")
    assert by_day.stdout.splitlines() == [
        "day,tasks,succeeded,output_seconds,amount,currency",
        "2023-11-14,2,1,5.000,3.00,CNY",
        "2023-11-15,1,1,2.500,0.625,CNY",
    ]
    assert "billing is off" in by_day.stderr  # priced all the same
    by_model = ok(data, "usage", "--csv", "--group-by", "model", "--since", "2023-11-15")
    assert by_model.stdout.splitlines()[1:] == ["wan2.6-i2v-flash,1,1,2.500,0.625,CNY"]
    by_key = ok(data, "usage", "--csv", "--group-by", "key", "--account", account_id,
                "--until", "2023-11-14")  # fmt: skip
    assert by_key.stdout.splitlines()[1:] == [f"{key_id},2,1,5.000,3.00,CNY"]
    other = new_account(data)
    assert ok(data, "usage", "--csv", "--account", other).stdout.count("\n") == 1  # header


def cells(table: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    rows = ([c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines())
    return next(row for row in rows if row and row[0] == first)


def test_usage_table_has_rows_and_a_total(data: Path, billed: tuple[str, str]) -> None:
    table = ok(data, "usage", "--group-by", "model").stdout
    assert cells(table, "wan2.6-i2v") == ["wan2.6-i2v", "1", "1", "5.000", "3.00"]
    assert cells(table, "wan2.6-i2v-flash") == ["wan2.6-i2v-flash", "2", "1", "2.500", "0.625"]
    assert cells(table, "total") == ["total", "3", "2", "7.500", "3.625"]
    assert "amount (CNY)" in table


def test_usage_refuses_bad_dates_and_unknown_accounts(data: Path) -> None:
    new_account(data)
    for args in (("--since", "2024-13-01"), ("--until", "yesterday"),
                 ("--since", "2024-02-02", "--until", "2024-02-01")):  # fmt: skip
        bad = cli(data, "usage", *args)
        assert bad.exit_code == 2 and bad.stdout == "", args
        assert "--since" in bad.stderr or "--until" in bad.stderr
    same_day = cli(data, "usage", "--since", "2024-02-01", "--until", "2024-02-01")
    assert same_day.exit_code == 0
    assert cli(data, "usage", "--account", "nope").exit_code == 1


# -- billing verify ------------------------------------------------------------------------


def test_billing_verify_passes_then_names_a_corrupted_balance(
    data: Path, billed: tuple[str, str]
) -> None:
    account_id, _ = billed
    ok(data, "accounts", "top-up", account_id, "5")
    passed = ok(data, "billing", "verify")
    assert passed.stdout.strip() == "billing verify: ok (8 checks, 1 account)"
    with closing(sqlite3.connect(data / "stillmotion.db")) as db:
        db.execute("UPDATE accounts SET balance = balance + 1 WHERE id = ?", (account_id,))
        db.commit()
    failed = cli(data, "billing", "verify")
    assert failed.exit_code == 1
    lines = failed.stdout.splitlines()
    assert lines[0] == "FAILED balance: 1 offending row(s)"
    assert account_id in failed.stdout and "5000001" in failed.stdout
    assert lines[-1] == "billing verify: 1 of 8 checks failed"

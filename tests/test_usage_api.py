"""Money on the caller's side, in-process with billing on: ``GET /v1/usage`` (JSON and CSV,
windows of whole UTC days, grouping), prices on ``GET /v1/models`` by price group, and the
cost of tasks on ``GET /v1/tasks`` and the balance on ``GET /v1/account``.

Most tasks here are ended through the store (claimed and finished as a worker would), so the
billed seconds are exact; one runs for real on the built-in motion engine."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from stillmotion import catalog
from stillmotion.config import Settings
from stillmotion.money import PriceList, cost_micros, format_micros, to_micros
from stillmotion.runtime import Runtime
from stillmotion.tasks.keys import create_key
from tests.conftest import poll, seed_body

SUBMIT = "/task/bailian/image2video"
FLASH = catalog.MODELS["wan2.6-i2v-flash"]
WORKER = "w-test"
PRICES = PriceList(groups={"vip": Decimal("0.8")})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        workers=1,
        lease_seconds=5,
        poll_interval=0.05,
        allow_private_urls=True,
        key_cache_seconds=0,
        price_groups="vip=0.8",
        billing="on",
    )


@pytest.fixture
async def funded(runtime: Runtime, auth: dict[str, str]) -> str:
    """The ``auth`` key's account, topped up with 100; its id."""
    key = await runtime.keys.verify(auth["Authorization"])
    assert key.account_id is not None
    await runtime.store.accounts.move(key.account_id, to_micros("100"))
    return key.account_id


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def days_ago(n: int) -> str:
    return (datetime.now(UTC).date() - timedelta(days=n)).isoformat()


async def run_task(
    client: httpx.AsyncClient,
    runtime: Runtime,
    headers: dict[str, str],
    *,
    seconds: float = 2.0,
    fail: bool = False,
    ended_at: float | None = None,
    model: str = FLASH.name,
    **parameters: Any,
) -> str:
    """Submit a task and end it as a worker would: SUCCEEDED with ``seconds`` of video (16
    fps), or FAILED; ``ended_at``: the store's clock when it ends. A 720P task of
    ``model`` (default the flash model), 2 s asked for."""
    body = {**seed_body(**parameters), "model": model}
    resp = await client.post(SUBMIT, json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    task_id = str(resp.json()["output"]["task_id"])
    store = runtime.store
    claimed = await store.claim(WORKER, 30)
    assert claimed is not None and claimed.id == task_id
    real = store._clock
    if ended_at is not None:
        store._clock = lambda: ended_at
    try:
        if fail:
            assert await store.finish_failure(task_id, WORKER, "InternalError.Algo", "boom")
        else:
            frames = round(seconds * 16)
            result = {"video_key": f"videos/{task_id}.mp4", "fps": 16, "num_frames": frames}
            assert await store.finish_success(task_id, WORKER, result)
    finally:
        store._clock = real
    return task_id


def price_of(group: str | None, audio: bool = True) -> int:
    """The 720P per-second price of the flash model, in micros (the settings' price list)."""
    return PRICES.price(FLASH, "720P", audio, group)


def assert_error(resp: httpx.Response, status: int, code: str, starts: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"request_id", "code", "message"}
    assert body["code"] == code and body["message"].startswith(starts), body


# -- /v1/usage -------------------------------------------------------------------------------


async def test_usage_counts_ended_tasks_of_the_day(
    client: httpx.AsyncClient, runtime: Runtime, auth: dict[str, str], funded: str
) -> None:
    await run_task(client, runtime, auth, seconds=2.0)
    await run_task(client, runtime, auth, seconds=1.5, audio=False)
    await run_task(client, runtime, auth, fail=True)
    pending = await client.post(SUBMIT, json=seed_body(), headers=auth)  # not ended: not counted
    assert pending.status_code == 200
    resp = await client.get("/v1/usage", headers=auth)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    amount = cost_micros(price_of(None), 2000) + cost_micros(price_of(None, audio=False), 1500)
    row = {"day": today(), "tasks": 3, "succeeded": 2, "output_seconds": "3.500",
           "amount": format_micros(amount)}  # fmt: skip
    assert body == {
        "object": "list",
        "account_id": funded,
        "currency": "CNY",
        "group_by": "day",
        "start": days_ago(30),
        "end": today(),
        "data": [row],
        "total": {k: v for k, v in row.items() if k != "day"},
    }
    # the account paid exactly that, and holds the pending task's quote
    account = (await client.get("/v1/account", headers=auth)).json()
    assert account["balance"] == format_micros(to_micros("100") - amount)
    assert account["held"] == format_micros(cost_micros(price_of(None), 2000))
    assert account["billing"] == "on"


async def test_usage_groups_by_model_and_key(
    client: httpx.AsyncClient, runtime: Runtime, auth: dict[str, str], funded: str
) -> None:
    second = await create_key(runtime.store, "second", account_id=funded)
    first = await runtime.keys.verify(auth["Authorization"])
    await run_task(client, runtime, auth, seconds=2.0)
    await run_task(client, runtime, bearer(second.key), seconds=3.0)
    await run_task(client, runtime, bearer(second.key), seconds=1.0, model="wan2.6-i2v")
    by_key = (await client.get("/v1/usage?group_by=key", headers=auth)).json()
    assert by_key["group_by"] == "key"
    got = {r["key"]: (r["tasks"], r["output_seconds"]) for r in by_key["data"]}
    assert got == {first.id: (1, "2.000"), second.row.id: (2, "4.000")}
    by_model = (await client.get("/v1/usage?group_by=model", headers=auth)).json()
    got = {r["model"]: (r["tasks"], r["output_seconds"]) for r in by_model["data"]}
    assert got == {"wan2.6-i2v-flash": (2, "5.000"), "wan2.6-i2v": (1, "1.000")}
    assert by_model["total"] == by_key["total"]
    assert by_model["total"]["tasks"] == 3 and by_model["total"]["output_seconds"] == "6.000"


async def test_usage_days_are_whole_utc_days_and_end_is_included(
    client: httpx.AsyncClient, runtime: Runtime, auth: dict[str, str], funded: str
) -> None:
    await run_task(client, runtime, auth, seconds=1.0, ended_at=time.time() - 2 * 86400)
    await run_task(client, runtime, auth, seconds=2.0)
    days = (await client.get("/v1/usage", headers=auth)).json()["data"]
    assert [(d["day"], d["output_seconds"]) for d in days] == [
        (days_ago(2), "1.000"),
        (today(), "2.000"),
    ]
    only = await client.get(f"/v1/usage?start={days_ago(2)}&end={days_ago(2)}", headers=auth)
    assert [d["day"] for d in only.json()["data"]] == [days_ago(2)]
    assert (only.json()["start"], only.json()["end"]) == (days_ago(2), days_ago(2))
    gap = await client.get(f"/v1/usage?start={days_ago(1)}&end={days_ago(1)}", headers=auth)
    assert gap.json()["data"] == [] and gap.json()["total"]["amount"] == "0.00"
    from_yesterday = await client.get(f"/v1/usage?start={days_ago(1)}", headers=auth)
    assert [d["day"] for d in from_yesterday.json()["data"]] == [today()]


async def test_usage_as_csv(
    client: httpx.AsyncClient, runtime: Runtime, auth: dict[str, str], funded: str
) -> None:
    await run_task(client, runtime, auth, seconds=2.0)
    await run_task(client, runtime, auth, seconds=1.0, model="wan2.6-i2v")
    resp = await client.get("/v1/usage?group_by=model", headers={**auth, "Accept": "text/csv"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/csv")
    assert "attachment" in resp.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0] == ["model", "tasks", "succeeded", "output_seconds", "amount"]
    as_json = (await client.get("/v1/usage?group_by=model", headers=auth)).json()
    assert rows[1:] == [
        [r["model"], str(r["tasks"]), str(r["succeeded"]), r["output_seconds"], r["amount"]]
        for r in as_json["data"]
    ]
    assert len(rows) == 3
    for accept in ("*/*", "application/json", "text/csv;q=0.5, application/json", "text/html"):
        resp = await client.get("/v1/usage", headers={**auth, "Accept": accept})
        assert resp.headers["content-type"] == "application/json", accept
    for accept in ("text/csv, */*;q=0.1", "application/json;q=0.9, text/csv"):
        resp = await client.get("/v1/usage", headers={**auth, "Accept": accept})
        assert resp.headers["content-type"].startswith("text/csv"), accept


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("start=2026-13-01", "start"),
        ("start=20260101", "start"),
        ("start=2026-1-1", "start"),
        ("start=yesterday", "start"),
        ("start=2026-02-30", "start"),
        ("end=2026-01-01T00:00:00", "end"),
        ("end=%00", "end"),
        ("start=2026-02-01&end=2026-01-31", "end"),
        ("group_by=week", "group_by"),
        ("group_by=", "group_by"),
    ],
)
async def test_bad_usage_queries_are_400_naming_the_parameter(
    client: httpx.AsyncClient, auth: dict[str, str], query: str, name: str
) -> None:
    resp = await client.get(f"/v1/usage?{query}", headers=auth)
    assert_error(resp, 400, "InvalidParameter", name)


async def test_usage_needs_a_key_and_shows_only_the_callers_account(
    client: httpx.AsyncClient, runtime: Runtime, auth: dict[str, str], funded: str
) -> None:
    assert_error(await client.get("/v1/usage"), 401, "InvalidApiKey", "No API-key")
    await run_task(client, runtime, auth, seconds=2.0)
    other = await create_key(runtime.store, "other")  # an account of its own
    theirs = (await client.get("/v1/usage?group_by=key", headers=bearer(other.key))).json()
    assert theirs["account_id"] == other.row.account_id != funded
    assert theirs["data"] == [] and theirs["total"]["tasks"] == 0
    # the admin API sees both, or one
    admin = bearer((await create_key(runtime.store, "ops", is_admin=True)).key)
    every = (await client.get("/admin/v1/usage?group_by=key", headers=admin)).json()
    assert every["account_id"] is None and every["total"]["tasks"] == 1
    one = await client.get(f"/admin/v1/usage?account={other.row.account_id}", headers=admin)
    assert one.json()["total"]["tasks"] == 0


# -- /v1/models --------------------------------------------------------------------------


async def test_models_show_list_prices_or_the_callers_group(
    client: httpx.AsyncClient, runtime: Runtime, auth: dict[str, str]
) -> None:
    prices = runtime.service.prices
    vip_account = await runtime.store.accounts.create("vip", price_group="vip")
    vip = bearer((await create_key(runtime.store, "vip", account_id=vip_account)).key)
    listed = (await client.get("/v1/models")).json()["data"]
    mine = (await client.get("/v1/models", headers=auth)).json()["data"]
    theirs = (await client.get("/v1/models", headers=vip)).json()["data"]
    assert [m["id"] for m in listed] == list(catalog.MODELS)
    for plain, own, group in zip(listed, mine, theirs, strict=True):
        spec = catalog.MODELS[plain["id"]]
        assert plain["engine"] == "motion" and plain["resolutions"]  # the catalog's fields stay
        assert plain["price"] == {"currency": "CNY", "price_group": None,
                                  "per_second": prices.table(spec, None)}  # fmt: skip
        assert own == plain  # a key without a group pays the list price
        assert group["price"] == {"currency": "CNY", "price_group": "vip",
                                  "per_second": prices.table(spec, "vip")}  # fmt: skip
        assert group["price"]["per_second"] != plain["price"]["per_second"]
    flash = next(m for m in theirs if m["id"] == FLASH.name)
    assert flash["price"]["per_second"]["720P"]["audio"] == format_micros(price_of("vip"))
    assert format_micros(price_of("vip")) != format_micros(price_of(None))
    resp = await client.get("/v1/models", headers=bearer("sm-unknown"))
    assert_error(resp, 401, "InvalidApiKey", "Invalid API-key")


async def test_a_vip_submit_is_quoted_at_its_group_price(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    account = await runtime.store.accounts.create("vip", to_micros("10"), price_group="vip")
    vip = bearer((await create_key(runtime.store, "vip", account_id=account)).key)
    await run_task(client, runtime, vip, seconds=2.0)
    (item,) = (await client.get("/v1/tasks", headers=vip)).json()["data"]
    assert item["quote"] == format_micros(cost_micros(price_of("vip"), 2000))
    assert item["cost"] == item["quote"] and item["billed_seconds"] == "2.000"


# -- /v1/tasks -----------------------------------------------------------------------------


async def test_task_list_shows_quote_then_cost(
    client: httpx.AsyncClient, runtime: Runtime, auth: dict[str, str], funded: str
) -> None:
    """A real task on the motion engine: no cost while it waits, its cost once it succeeded,
    and the account charged exactly that."""
    resp = await client.post(SUBMIT, json=seed_body(), headers=auth)
    assert resp.status_code == 200, resp.text
    task_id = resp.json()["output"]["task_id"]
    (waiting,) = (await client.get("/v1/tasks", headers=auth)).json()["data"]
    quote = format_micros(cost_micros(price_of(None), 2000))
    assert (waiting["quote"], waiting["cost"], waiting["billed_seconds"]) == (quote, None, None)
    held = (await client.get("/v1/account", headers=auth)).json()
    assert (held["held"], held["available"]) == (
        quote,
        format_micros(to_micros("100") - to_micros(quote)),
    )
    await runtime.start_worker()
    done = await poll(client, task_id, auth, timeout=120)
    assert done["output"]["task_status"] == "SUCCEEDED", done
    (item,) = (await client.get("/v1/tasks", headers=auth)).json()["data"]
    assert item["task_status"] == "SUCCEEDED" and item["quote"] == quote
    billed_ms = to_micros(item["billed_seconds"]) // 1000
    assert billed_ms > 0
    assert item["cost"] == format_micros(cost_micros(price_of(None), billed_ms))
    account = (await client.get("/v1/account", headers=auth)).json()
    assert account["held"] == "0.00"
    assert account["balance"] == format_micros(to_micros("100") - to_micros(item["cost"]))
    usage = (await client.get("/v1/usage", headers=auth)).json()
    assert usage["total"]["amount"] == item["cost"]
    assert usage["total"]["output_seconds"] == item["billed_seconds"]


async def test_failed_tasks_cost_nothing(
    client: httpx.AsyncClient, runtime: Runtime, auth: dict[str, str], funded: str
) -> None:
    await run_task(client, runtime, auth, fail=True)
    (item,) = (await client.get("/v1/tasks", headers=auth)).json()["data"]
    assert item["task_status"] == "FAILED"
    assert (item["cost"], item["billed_seconds"]) == ("0.00", "0.000")
    account = (await client.get("/v1/account", headers=auth)).json()
    assert (account["balance"], account["held"]) == ("100.00", "0.00")

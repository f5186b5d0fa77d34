"""Billing through the API, on SQLite and PostgreSQL: holds at submit (the overspend race),
settlement on what was produced, releases on failure and cancel, idempotent submits and
each limit with its error code."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from stillmotion.api.app import create_app
from stillmotion.config import Settings
from stillmotion.money import to_micros
from stillmotion.runtime import Runtime, open_runtime
from stillmotion.tasks.keys import create_key
from tests.conftest import poll, seed_body
from tests.store_fixtures import database_url

SUBMIT = "/task/bailian/image2video"
#: wan2.6-i2v-flash, 720P with audio: 0.30 a second; 2 s -> 0.60
QUOTE = to_micros("0.60")
REMOTE_IMG = "https://example.com/frames/cat.png"  # never fetched: no worker runs


def remote_body(**parameters: Any) -> dict[str, Any]:
    return seed_body(REMOTE_IMG, **parameters)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def billed(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Runtime]:
    """A runtime with billing on, on each database; no worker unless a test starts one."""
    async with database_url(request.param, tmp_path) as url:
        settings = Settings(
            data_dir=tmp_path / "data",
            database_url=url,
            workers=1,
            lease_seconds=5,
            poll_interval=0.05,
            allow_private_urls=True,
            key_cache_seconds=0,
            billing="on",
        )
        rt = await open_runtime(settings)
        try:
            yield rt
        finally:
            await rt.close()


@pytest.fixture
async def api(billed: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(runtime=billed))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def funded_key(rt: Runtime, balance: int, name: str = "acme") -> tuple[str, dict[str, str]]:
    account_id = await rt.store.accounts.create(name, balance)
    key = await create_key(rt.store, f"{name}-key", account_id=account_id)
    return account_id, {"Authorization": f"Bearer {key.key}"}


async def assert_books_balance(rt: Runtime) -> None:
    failed = {name: rows for name, rows in (await rt.store.verify_billing()).items() if rows}
    assert failed == {}


async def test_overspend_race_accepts_exactly_the_covered_number(
    billed: Runtime, api: httpx.AsyncClient
) -> None:
    covered = 37
    balance = covered * QUOTE + QUOTE // 2  # 37 quotes and a half
    account_id, auth = await funded_key(billed, balance)
    replies = await asyncio.gather(
        *(api.post(SUBMIT, json=remote_body(), headers=auth) for _ in range(200))
    )
    codes = Counter(
        r.status_code if r.status_code == 200 else (r.status_code, r.json()["code"])
        for r in replies
    )
    assert codes == {200: covered, (400, "Arrearage"): 200 - covered}
    account = await billed.store.accounts.get(account_id)
    assert account is not None
    assert account.held == covered * QUOTE and account.balance == balance
    assert account.available == QUOTE // 2 >= 0
    refused = next(r for r in replies if r.status_code == 400)
    assert refused.headers["x-should-retry"] == "false"
    assert "0.60" in refused.json()["message"] and "0.30" in refused.json()["message"]
    await assert_books_balance(billed)


async def test_success_captures_the_produced_seconds_and_releases_the_rest(
    billed: Runtime, api: httpx.AsyncClient
) -> None:
    account_id, auth = await funded_key(billed, to_micros("10"))
    await billed.start_worker()
    resp = await api.post(SUBMIT, json=seed_body(duration=3), headers=auth)
    task_id = resp.json()["output"]["task_id"]
    body = await poll(api, task_id, auth)
    assert body["output"]["task_status"] == "SUCCEEDED"
    url = httpx.URL(body["output"]["video_url"])
    video = await api.get(url.raw_path.decode())
    assert video.status_code == 200
    seconds = _mp4_seconds(video.content)
    assert 2.5 < seconds < 3.5
    row = await billed.store.get_task(task_id)
    assert row is not None and row.billed_ms == round(seconds * 1000)
    assert row.cost == row.price * row.billed_ms // 1000 and row.cost > 0
    account = await billed.store.accounts.get(account_id)
    assert account is not None
    assert account.held == 0 and account.balance == to_micros("10") - row.cost
    kinds = Counter(e["kind"] for e in await billed.store.accounts.entries(account_id))
    assert kinds == {"topup": 1, "hold": 1, "capture": 1}
    await assert_books_balance(billed)


def _mp4_seconds(mp4: bytes) -> float:
    """The video's duration as decoded: frames / frame rate."""
    with av.open(io.BytesIO(mp4), mode="r") as container:
        stream = container.streams.video[0]
        frames = len(list(container.decode(stream)))
        assert stream.average_rate is not None
        return float(frames / stream.average_rate)


async def test_failed_and_canceled_tasks_are_released_in_full(
    billed: Runtime, api: httpx.AsyncClient
) -> None:
    account_id, auth = await funded_key(billed, to_micros("5"))
    canceled = (await api.post(SUBMIT, json=remote_body(), headers=auth)).json()["output"]
    resp = await api.post(f"/task/{canceled['task_id']}/cancel", headers=auth)
    assert resp.status_code == 200, resp.text
    await billed.start_worker()  # a refused connection: the fetch fails, the task FAILS
    bad = seed_body("http://127.0.0.1:1/frame.png")
    failed = (await api.post(SUBMIT, json=bad, headers=auth)).json()["output"]
    body = await poll(api, failed["task_id"], auth)
    assert body["output"]["task_status"] == "FAILED"
    account = await billed.store.accounts.get(account_id)
    assert account is not None
    assert (account.balance, account.held) == (to_micros("5"), 0)
    for task_id in (canceled["task_id"], failed["task_id"]):
        row = await billed.store.get_task(task_id)
        assert row is not None and row.cost == 0
    kinds = Counter(e["kind"] for e in await billed.store.accounts.entries(account_id))
    assert kinds == {"topup": 1, "hold": 2, "release": 2}
    await assert_books_balance(billed)


async def test_idempotency_key_answers_the_first_task_and_refuses_another_body(
    billed: Runtime, api: httpx.AsyncClient
) -> None:
    account_id, auth = await funded_key(billed, to_micros("5"))
    headers = {**auth, "Idempotency-Key": "order-17"}
    replies = await asyncio.gather(
        *(api.post(SUBMIT, json=remote_body(), headers=headers) for _ in range(10))
    )
    assert {r.status_code for r in replies} == {200}
    assert len({r.json()["output"]["task_id"] for r in replies}) == 1
    native = await api.post(
        "/api/v1/services/aigc/video-generation/video-synthesis",
        json=remote_body(),
        headers={**headers, "X-DashScope-Async": "enable"},
    )
    assert native.json()["output"]["task_id"] == replies[0].json()["output"]["task_id"]
    other = await api.post(SUBMIT, json=remote_body(duration=3), headers=headers)
    assert other.status_code == 400 and other.json()["code"] == "InvalidParameter"
    assert "Idempotency-Key" in other.json()["message"]
    account = await billed.store.accounts.get(account_id)
    assert account is not None and account.held == QUOTE  # one hold
    fresh = await api.post(SUBMIT, json=remote_body(), headers={**auth, "Idempotency-Key": "18"})
    assert fresh.json()["output"]["task_id"] != replies[0].json()["output"]["task_id"]


async def test_submit_rate_answers_rate_quota_with_retry_after(
    billed: Runtime, api: httpx.AsyncClient
) -> None:
    account_id, auth = await funded_key(billed, to_micros("100"))
    await billed.store.accounts.set(account_id, submit_rate=0.01)  # one token, 100 s to refill
    first = await api.post(SUBMIT, json=remote_body(), headers=auth)
    second = await api.post(SUBMIT, json=remote_body(), headers=auth)
    assert first.status_code == 200
    assert (second.status_code, second.json()["code"]) == (429, "Throttling.RateQuota")
    assert 90 <= int(second.headers["Retry-After"]) <= 100


async def test_pending_cap_and_daily_budget_answer_allocation_quota(
    billed: Runtime, api: httpx.AsyncClient
) -> None:
    account_id, auth = await funded_key(billed, to_micros("100"))
    await billed.store.accounts.set(account_id, max_pending=2)
    codes = [
        (await api.post(SUBMIT, json=remote_body(), headers=auth)).status_code for _ in range(3)
    ]
    assert codes == [200, 200, 429]
    other_id, other = await funded_key(billed, to_micros("100"), name="other")
    await billed.store.accounts.set(other_id, daily_budget=2 * QUOTE + 1)
    replies = [await api.post(SUBMIT, json=remote_body(), headers=other) for _ in range(3)]
    assert [r.status_code for r in replies] == [200, 200, 429]
    assert replies[2].json()["code"] == "Throttling.AllocationQuota"
    assert "budget" in replies[2].json()["message"]


async def test_key_limits_narrow_the_account(billed: Runtime, api: httpx.AsyncClient) -> None:
    account_id, auth = await funded_key(billed, to_micros("100"))
    narrow = await create_key(billed.store, "narrow", account_id=account_id)
    await billed.store.accounts.set(account_id, key_id=narrow.row.id, max_pending=1)
    narrow_auth = {"Authorization": f"Bearer {narrow.key}"}
    codes = [
        (await api.post(SUBMIT, json=remote_body(), headers=narrow_auth)).status_code
        for _ in range(2)
    ]
    assert codes == [200, 429]
    wide = await api.post(SUBMIT, json=remote_body(), headers=auth)
    assert wide.status_code == 200  # the account itself has no cap


async def test_billing_off_prices_but_never_refuses(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", workers=0, key_cache_seconds=0)
    rt = await open_runtime(settings)
    try:
        _, auth = await funded_key(rt, 0)
        transport = httpx.ASGITransport(app=create_app(runtime=rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            resp = await c.post(SUBMIT, json=remote_body(), headers=auth)
        assert resp.status_code == 200
        row = await rt.store.get_task(resp.json()["output"]["task_id"])
        assert row is not None and (row.quote, row.hold) == (QUOTE, None)
    finally:
        await rt.close()

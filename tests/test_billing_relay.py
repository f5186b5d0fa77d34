"""Relayed tasks are billed on the upstream's reported usage, not on the request; a task the
upstream finished but we could not deliver costs the customer nothing (the operator's loss)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stillmotion.config import Settings
from stillmotion.money import to_micros
from stillmotion.runtime import Runtime
from stillmotion.tasks.keys import create_key
from stillmotion.testing.fake_dashscope import FakeConfig, FakeDashScopeServer, Fault
from tests.conftest import poll, seed_body
from tests.relay_helpers import KEY, relay_settings, submit

#: wan2.6-i2v-flash at 720P with audio: 0.30 a second
PRICE = to_micros("0.30")


@pytest.fixture
def fake() -> Iterator[FakeDashScopeServer]:
    config = FakeConfig(keys={KEY: "ok"}, pending_seconds=0.05, running_seconds=0.1)
    config.usage_seconds = 3  # upstream says it made 3 s of the 5 asked for
    with FakeDashScopeServer(config) as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, fake: FakeDashScopeServer) -> Settings:
    return relay_settings(tmp_path, fake, billing="on", max_attempts=2)


async def funded(runtime: Runtime) -> tuple[str, dict[str, str]]:
    account_id = await runtime.store.accounts.create("acme", to_micros("10"))
    key = await create_key(runtime.store, "acme", account_id=account_id)
    return account_id, {"Authorization": f"Bearer {key.key}"}


async def test_relay_captures_the_upstream_usage(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    account_id, auth = await funded(runtime)
    await runtime.start_worker()
    task_id = await submit(client, auth, seed_body(duration=5))
    result = await poll(client, task_id, auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    assert result["usage"]["output_video_duration"] == 3
    row = await runtime.store.get_task(task_id)
    assert row is not None
    assert (row.quote, row.billed_ms, row.cost) == (5 * PRICE, 3000, 3 * PRICE)
    account = await runtime.store.accounts.get(account_id)
    assert account is not None
    assert (account.balance, account.held) == (to_micros("10") - 3 * PRICE, 0)
    assert not any((await runtime.store.verify_billing()).values())


async def test_an_undelivered_relay_task_is_the_operators_loss(
    client: httpx.AsyncClient, runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    fake.state.add_fault(Fault("result", status=403, code="AccessDenied", times=-1))
    account_id, auth = await funded(runtime)
    await runtime.start_worker()
    task_id = await submit(client, auth, seed_body(duration=5))
    result = await poll(client, task_id, auth, timeout=30)
    out = result["output"]
    assert (out["task_status"], out["code"]) == ("FAILED", "InternalError.ResultDownload")
    account = await runtime.store.accounts.get(account_id)
    assert account is not None
    assert (account.balance, account.held) == (to_micros("10"), 0)  # not charged
    entries = await runtime.store.accounts.entries(account_id)
    assert Counter(e["kind"] for e in entries) == {"topup": 1, "hold": 1, "release": 1, "loss": 1}
    loss = next(e for e in entries if e["kind"] == "loss")
    assert loss["amount"] == 3 * PRICE and loss["task_id"] == task_id
    assert (loss["balance_delta"], loss["held_delta"]) == (0, 0)
    assert not any((await runtime.store.verify_billing()).values())

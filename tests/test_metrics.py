"""``GET /metrics`` (docs/operations.md): the cluster's task figures from the database, this
process's histograms and relay counter, the token, the cache.

The per-process metrics live in one registry for the whole test process, so the tests compare
a scrape after with a reading before (deltas), never absolute values.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from stillmotion import metrics
from stillmotion.api.app import create_app
from stillmotion.config import Settings
from stillmotion.runtime import Runtime, open_runtime
from stillmotion.tasks.keys import create_key
from stillmotion.tasks.stats import CountsCache
from stillmotion.tasks.store import TaskStore
from stillmotion.testing.fake_dashscope import FakeConfig, FakeDashScopeServer
from tests.conftest import poll, seed_body
from tests.relay_helpers import KEY, relay_settings

MODEL = "wan2.6-i2v-flash"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """``{(sample name, sorted labels): value}`` of a scrape (the parser checks the format)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def local() -> Samples:
    """This process's metrics now (no database figures)."""
    return parse(metrics.exposition(None).decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: httpx.AsyncClient, **headers: str) -> Samples:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(resp.text)


async def test_tasks_queue_and_histograms_after_tasks_ran(
    runtime: Runtime, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    before = local()
    await runtime.start_worker()
    bodies = [seed_body(), seed_body(seed=7), seed_body("http://127.0.0.1:1/x.png")]
    ids = []
    for body in bodies:
        resp = await client.post("/task/bailian/image2video", json=body, headers=auth)
        assert resp.status_code == 200, resp.text
        ids.append(resp.json()["output"]["task_id"])
    statuses = [(await poll(client, i, auth))["output"]["task_status"] for i in ids]
    assert statuses == ["SUCCEEDED", "SUCCEEDED", "FAILED"]

    got = await scrape(client)
    tasks = {
        status: value(got, "stillmotion_tasks", model=MODEL, engine="motion", status=status)
        for status in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED")
    }
    assert tasks == {"PENDING": 0, "RUNNING": 0, "SUCCEEDED": 2, "FAILED": 1, "CANCELED": 0}
    assert value(got, "stillmotion_queue_depth") == 0
    assert value(got, "stillmotion_tasks_running") == 0
    assert value(got, "stillmotion_queue_oldest_pending_age_seconds") == 0
    assert value(got, "stillmotion_database_up") == 1
    for name in ("queue_wait", "render", "end_to_end"):
        for status, n in (("SUCCEEDED", 2), ("FAILED", 1)):
            sample = f"stillmotion_task_{name}_seconds_count"
            labels = {"engine": "motion", "status": status}
            assert value(got, sample, **labels) - value(before, sample, **labels) == n, name
    # a render takes time: the sums moved, and end to end is at least the render
    labels = {"engine": "motion", "status": "SUCCEEDED"}
    render = value(got, "stillmotion_task_render_seconds_sum", **labels) - value(
        before, "stillmotion_task_render_seconds_sum", **labels
    )
    e2e = value(got, "stillmotion_task_end_to_end_seconds_sum", **labels) - value(
        before, "stillmotion_task_end_to_end_seconds_sum", **labels
    )
    assert 0 < render <= e2e
    assert value(got, "process_resident_memory_bytes") > 0  # process metrics are there
    assert value(got, "python_info", **_python_info(got)) == 1


def _python_info(samples: Samples) -> dict[str, str]:
    (labels,) = [dict(lab) for name, lab in samples if name == "python_info"]
    return labels


async def test_queue_depth_and_oldest_pending_age_without_a_worker(
    runtime: Runtime, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for seed in (1, 2, 3):
        resp = await client.post(
            "/task/bailian/image2video", json=seed_body(seed=seed), headers=auth
        )
        assert resp.status_code == 200, resp.text
    await asyncio.sleep(1.2)
    got = await scrape(client)
    assert value(got, "stillmotion_queue_depth") == 3
    assert value(got, "stillmotion_tasks", model=MODEL, engine="motion", status="PENDING") == 3
    assert value(got, "stillmotion_tasks_running") == 0
    assert 1.2 <= value(got, "stillmotion_queue_oldest_pending_age_seconds") < 60


async def test_the_token_protects_metrics(runtime: Runtime, client: httpx.AsyncClient) -> None:
    runtime.settings.metrics_token = SecretStr("scrape-token-9f3a")
    try:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "scrape-token-9f3a"},
        ):
            resp = await client.get("/metrics", headers=headers)
            assert resp.status_code == 401, resp.text
            body = resp.json()
            assert set(body) == {"request_id", "code", "message"}
            assert body["code"] == "InvalidApiKey" and "scrape-token" not in resp.text
        await scrape(client, Authorization="Bearer scrape-token-9f3a")
        # an API key is no metrics token
        key = (await create_key(runtime.store, "k")).key
        assert (
            await client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
        ).status_code == 401
    finally:
        runtime.settings.metrics_token = None
    await scrape(client)  # unset: open


async def test_counts_are_cached_and_scrapes_share_one_query(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stillmotion.tasks import stats

    calls = 0
    real = stats.read_counts

    async def counting(store: object) -> metrics.TaskCounts:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return await real(runtime.store)

    monkeypatch.setattr(stats, "read_counts", counting)
    now = [100.0]
    cache = CountsCache(runtime.store, ttl=1.5, clock=lambda: now[0])
    results = await asyncio.gather(*(cache.get() for _ in range(20)))
    assert calls == 1 and all(r is results[0] for r in results)
    now[0] += 1.0
    await cache.get()
    assert calls == 1
    now[0] += 1.0
    await cache.get()
    assert calls == 2


async def test_a_database_that_does_not_answer_is_database_up_0(tmp_path: Path) -> None:
    # a closed port: every query fails at once; the scrape still answers, without a 500
    settings = Settings(data_dir=tmp_path / "data", workers=0)
    runtime = await open_runtime(settings)
    try:
        dead = await _unreachable_store(runtime)
        runtime.store, alive = dead, runtime.store
        transport = httpx.ASGITransport(app=create_app(runtime=runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            got = await scrape(client)
        assert value(got, "stillmotion_database_up") == 0
        assert not [k for k in got if k[0] == "stillmotion_tasks"]
        assert value(got, "process_resident_memory_bytes") > 0
        runtime.store = alive
        await dead.close()
    finally:
        await runtime.close()


async def _unreachable_store(runtime: Runtime) -> TaskStore:
    port = _closed_port()
    return await TaskStore.open(f"postgresql://nobody@127.0.0.1:{port}/none")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the relay's upstream calls --------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeDashScopeServer]:
    config = FakeConfig(keys={KEY: "ok"}, pending_seconds=0.1, running_seconds=0.2)
    with FakeDashScopeServer(config) as server:
        yield server


async def test_relay_upstream_calls_by_channel_and_status(
    tmp_path: Path, fake: FakeDashScopeServer
) -> None:
    channels = [{"name": "east", "base_url": fake.base_url, "api_keys": KEY}]
    settings = relay_settings(tmp_path, fake, dashscope_channels=channels)
    runtime = await open_runtime(settings)
    try:
        auth = {"Authorization": f"Bearer {(await create_key(runtime.store, 't')).key}"}
        transport = httpx.ASGITransport(app=create_app(runtime=runtime))
        async with httpx.AsyncClient(transport=transport, base_url=settings.base_url) as client:
            before = local()
            await runtime.start_worker()
            resp = await client.post("/task/bailian/image2video", json=seed_body(), headers=auth)
            assert resp.status_code == 200, resp.text
            done = await poll(client, resp.json()["output"]["task_id"], auth, timeout=30)
            assert done["output"]["task_status"] == "SUCCEEDED", done
            got = await scrape(client)
    finally:
        await runtime.close()
    name = "stillmotion_relay_upstream_requests_total"
    ok = value(got, name, channel="east", status="200") - value(
        before, name, channel="east", status="200"
    )
    # every API call the fake answered (a submit and at least one poll), once each, under
    # the channel's name
    answered = [op for _, op, status in fake.state.log if status == 200]
    assert ok == len(answered) and {"submit", "get"} <= set(answered)
    assert not [
        k for k in got if k[0] == name and dict(k[1])["channel"] != "east" and k not in before
    ]
    labels = {"engine": "dashscope", "status": "SUCCEEDED"}
    e2e = "stillmotion_task_end_to_end_seconds_count"
    assert value(got, e2e, **labels) - value(before, e2e, **labels) == 1


def test_relay_errors_and_refusals_are_counted() -> None:
    from stillmotion.engines.dashscope.client import UpstreamClient, UpstreamError

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/down"):
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(429, json={"code": "Throttling", "message": "slow down"})

    async def go() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        client = UpstreamClient(http, {"http://up.example/api/v1": "west"})
        for path in ("x", "down"):
            with pytest.raises(UpstreamError):
                await client._call("GET", f"http://up.example/api/v1/{path}", "sk-secret")
        with pytest.raises(UpstreamError):  # a base no channel has: its host
            await client._call("GET", "http://other.example/api/v1/tasks", "sk-secret")
        await http.aclose()

    name = "stillmotion_relay_upstream_requests_total"
    before = local()
    asyncio.run(go())
    after = local()

    def delta(**labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(channel="west", status="429") == 1
    assert delta(channel="west", status="error") == 1
    assert delta(channel="other.example", status="429") == 1


def test_webhook_delivery_counter() -> None:
    name = "stillmotion_webhook_deliveries_total"
    before = value(local(), name, outcome="delivered")
    metrics.record_webhook_delivery("delivered")
    metrics.record_webhook_delivery("delivered")
    assert value(local(), name, outcome="delivered") - before == 2


def test_negative_spans_count_as_zero() -> None:
    labels = {"engine": "clock-skew", "status": "SUCCEEDED"}
    t = time.time()
    metrics.observe_task_finished(
        engine="clock-skew",
        status="SUCCEEDED",
        created_at=t,
        scheduled_at=t - 5,
        started_at=t - 9,
        ended_at=t - 10,
    )
    got = local()
    for name in ("queue_wait", "render", "end_to_end"):
        assert value(got, f"stillmotion_task_{name}_seconds_count", **labels) == 1
        assert value(got, f"stillmotion_task_{name}_seconds_sum", **labels) == 0

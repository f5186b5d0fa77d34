"""The dashscope relay end to end: our API and worker, the fake upstream over loopback HTTP."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av
import httpx
import pytest
from pydantic import SecretStr

from stillmotion.config import Settings
from stillmotion.engines.dashscope.engine import DashScopeEngine
from stillmotion.runtime import Runtime
from stillmotion.testing.fake_dashscope import FakeConfig, FakeDashScopeServer, Fault
from stillmotion.testing.fake_dashscope_state import FakeTask
from stillmotion.testing.fake_dashscope_views import Views
from stillmotion.testing.images import image_bytes
from stillmotion.testing.media_server import MediaServer
from tests.conftest import poll, seed_body
from tests.relay_helpers import (
    BAD_KEY,
    DENIED_KEY,
    KEY,
    KEY2,
    SECRETS,
    finish_upstream,
    record_polls,
    relay_settings,
    submit,
    unfinished_upstream,
    upstream_overlap,
    wait_for,
    wait_row,
    wav_data_uri,
)


@pytest.fixture
def fake() -> Iterator[FakeDashScopeServer]:
    keys = {KEY: "ok", KEY2: "ok", BAD_KEY: "invalid", DENIED_KEY: "denied"}
    config = FakeConfig(keys=keys, pending_seconds=0.1, running_seconds=0.2)
    with FakeDashScopeServer(config) as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, fake: FakeDashScopeServer) -> Settings:
    return relay_settings(tmp_path, fake)


async def test_relay_end_to_end_with_a_data_uri(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    runtime.settings.dashscope_model_map = "wan2.6-i2v-flash=wan2.6-i2v-flash-us"
    await runtime.start_worker()
    body = seed_body(seed=1234, shot_type="multi", audio=False)
    task_id = await submit(client, auth, body)
    result = await poll(client, task_id, auth, timeout=30)
    out = result["output"]
    assert out["task_status"] == "SUCCEEDED", result
    assert len(fake.state.submits) == 1
    sent = fake.state.submits[0]["body"]
    assert sent["input"]["img_url"] == body["input"]["img_url"]  # the data URI as sent
    assert sent["model"] == "wan2.6-i2v-flash-us"
    assert sent["parameters"] == {
        "resolution": "720P",
        "duration": 2,
        "prompt_extend": True,
        "watermark": False,
        "seed": 1234,
        "shot_type": "multi",
        "audio": False,
    }
    assert "audio_url" not in sent["input"]
    assert result["usage"] == {
        "duration": 2,
        "input_video_duration": 0,
        "output_video_duration": 2,
        "SR": 720,
        "video_count": 1,
        "audio": False,
    }
    assert out["orig_prompt"] == body["input"]["prompt"]
    assert out["video_url"].startswith(runtime.settings.base_url + "/files/")
    assert str(fake.port) not in str(result) and "results/" not in str(result)
    url = urlsplit(out["video_url"])
    video = await client.get(f"{url.path}?{url.query}")
    assert video.status_code == 200
    with av.open(io.BytesIO(video.content)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (160, 96)
        assert not container.streams.audio
    row = await runtime.store.get_task(task_id)
    assert row is not None and row.attempts == 1
    assert row.engine_state["upstream_id"] == next(iter(fake.state.tasks))
    assert row.result is not None and row.result["num_frames"] == 60


async def test_url_media_are_forwarded_untouched(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    await runtime.start_worker()
    with MediaServer({"/f.png": (image_bytes(320, 480), "image/png")}) as media:
        body = seed_body(media.url("/f.png"))
        body["model"] = "wan2.5-i2v-preview"
        body["input"]["audio_url"] = "https://example.com/a.mp3"
        body["input"]["negative_prompt"] = "blurry"
        body["parameters"] = {"resolution": "480P", "duration": 5}
        task_id = await submit(client, auth, body)
        result = await poll(client, task_id, auth, timeout=30)
        assert media.hits == []  # the relay never fetches inputs itself
    assert result["output"]["task_status"] == "SUCCEEDED", result
    sent = fake.state.submits[0]["body"]
    assert sent["input"] == {
        "prompt": body["input"]["prompt"],
        "img_url": media.url("/f.png"),
        "negative_prompt": "blurry",
        "audio_url": "https://example.com/a.mp3",
    }
    assert "shot_type" not in sent["parameters"] and "audio" not in sent["parameters"]
    assert result["usage"] == {"duration": 5, "SR": 480, "video_count": 1}
    assert result["output"]["actual_prompt"].startswith(body["input"]["prompt"])


async def test_stored_audio_data_uri_is_rebuilt(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    await runtime.start_worker()
    audio = wav_data_uri(4.0)
    body = seed_body()
    body["input"]["audio_url"] = audio
    task_id = await submit(client, auth, body)
    assert (await poll(client, task_id, auth, timeout=30))["output"]["task_status"] == "SUCCEEDED"
    assert fake.state.submits[0]["body"]["input"]["audio_url"] == audio


@pytest.mark.parametrize(
    ("prompt", "code", "message"),
    [
        (
            "[fake:fail=DataInspectionFailed:Input data may contain inappropriate content.]",
            "DataInspectionFailed",
            "Input data may contain inappropriate content.",
        ),
        (
            "[fake:fail=InvalidParameter:duration customization is not supported]",
            "InvalidParameter",
            "duration customization is not supported",
        ),
    ],
)
async def test_upstream_failure_ends_our_task_with_its_code(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    prompt: str,
    code: str,
    message: str,
) -> None:
    await runtime.start_worker()
    body = seed_body()
    body["input"]["prompt"] = prompt
    result = await poll(client, await submit(client, auth, body), auth, timeout=30)
    assert result["output"]["task_status"] == "FAILED"
    assert (result["output"]["code"], result["output"]["message"]) == (code, message)
    assert "usage" not in result


class Answers:
    """The task statuses the fake answers to polls, per upstream task id, in order.

    With ``unknown_first``, the first that many polls of each task whose prompt holds
    ``marker`` are answered UNKNOWN instead (a task upstream does not show yet).
    """

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, unknown_first: int = 0, marker: str = ""
    ) -> None:
        self.statuses: dict[str, list[str]] = {}
        real = Views.task

        def task(views: Views, task: FakeTask, base: str) -> dict[str, Any]:
            seen = self.statuses.setdefault(task.task_id, [])
            body: dict[str, Any]
            if marker in task.prompt and len(seen) < unknown_first:
                output = {"task_id": task.task_id, "task_status": "UNKNOWN"}
                body = {"request_id": "scripted", "output": output}
            else:
                body = real(views, task, base)
            seen.append(body["output"]["task_status"])
            return body

        monkeypatch.setattr(Views, "task", task)


async def test_upstream_unknown_and_canceled_end_our_task(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    fake: FakeDashScopeServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = Answers(monkeypatch)
    await runtime.start_worker()
    engine = runtime.worker.engines["dashscope"]  # type: ignore[union-attr]
    body = seed_body()
    body["input"]["prompt"] = "expires [fake:expire=0.3] [fake:running=30]"
    expired = await submit(client, auth, body)
    body["input"]["prompt"] = "canceled upstream [fake:pending=30]"
    canceled = await submit(client, auth, body)
    row = await wait_row(runtime, canceled, lambda r: "upstream_id" in r.engine_state)
    upstream = row.engine_state["upstream_id"]
    resp = httpx.post(
        f"{fake.base_url}/tasks/{upstream}/cancel", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert resp.status_code == 200
    out = (await poll(client, canceled, auth, timeout=30))["output"]
    assert (out["task_status"], out["code"]) == ("FAILED", "InternalError.UpstreamCanceled")
    out = (await poll(client, expired, auth, timeout=30))["output"]
    assert (out["task_status"], out["code"]) == ("FAILED", "InternalError.UpstreamUnknown")
    # Each UNKNOWN came within unknown_grace of the submit, so it was polled again, up to
    # max_poll_failures UNKNOWN answers in a row; the last of them failed the task.
    assert (engine.timings.unknown_grace, engine.timings.max_poll_failures) == (60, 3)
    (upstream_expired,) = (t.task_id for t in fake.state.listing() if "expires" in t.prompt)
    polled = answers.statuses[upstream_expired]
    assert polled[-3:] == ["UNKNOWN"] * 3 and "UNKNOWN" not in polled[:-3], polled
    assert set(polled[:-3]) <= {"PENDING", "RUNNING"}, polled


async def test_unknown_long_after_the_submit_fails_at_once(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    fake: FakeDashScopeServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = Answers(monkeypatch)
    worker = await runtime.start_worker()
    engine = worker.engines["dashscope"]
    assert isinstance(engine, DashScopeEngine)
    engine.timings = replace(engine.timings, unknown_grace=0.0)
    body = seed_body()
    body["input"]["prompt"] = "expires [fake:expire=0.3] [fake:running=30]"
    out = (await poll(client, await submit(client, auth, body), auth, timeout=30))["output"]
    assert (out["task_status"], out["code"]) == ("FAILED", "InternalError.UpstreamUnknown")
    (polled,) = answers.statuses.values()
    assert polled[-1] == "UNKNOWN" and "UNKNOWN" not in polled[:-1], polled  # no retry


async def test_unknown_right_after_the_submit_is_polled_again(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    fake: FakeDashScopeServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Within unknown_grace an UNKNOWN may be upstream lag: fewer than max_poll_failures of
    # them in a row are retried, and the task goes on when upstream shows it.
    answers = Answers(monkeypatch, unknown_first=2, marker="lagging")
    await runtime.start_worker()
    body = seed_body()
    body["input"]["prompt"] = "lagging upstream"
    result = await poll(client, await submit(client, auth, body), auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    (polled,) = answers.statuses.values()
    assert polled[:2] == ["UNKNOWN", "UNKNOWN"] and polled[-1] == "SUCCEEDED", polled
    assert "UNKNOWN" not in polled[2:], polled


async def test_cancel_while_upstream_pending_cancels_upstream(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    # no cancel_running: a relayed task still PENDING upstream is cancelable as upstream says
    assert runtime.service.cancel_running is False
    await runtime.start_worker()
    body = seed_body()
    body["input"]["prompt"] = "slow to start [fake:pending=30]"
    task_id = await submit(client, auth, body)
    await wait_row(runtime, task_id, lambda r: "upstream_id" in r.engine_state)
    assert (await client.post(f"/task/{task_id}/cancel", headers=auth)).status_code == 200
    result = await poll(client, task_id, auth, timeout=30)
    assert result["output"]["task_status"] == "CANCELED"
    assert fake.state.requests["cancel"] == 1
    (task,) = fake.state.tasks.values()
    assert task.canceled_at is not None


async def test_cancel_is_refused_once_the_upstream_task_runs(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    await runtime.start_worker()
    body = seed_body()
    body["input"]["prompt"] = "runs a while [fake:pending=0.2] [fake:running=30]"
    task_id = await submit(client, auth, body)
    await wait_row(runtime, task_id, lambda r: r.engine_state.get("cancelable") is False)
    resp = await client.post(f"/task/{task_id}/cancel", headers=auth)
    assert resp.status_code == 400
    assert resp.json()["code"] == "UnsupportedOperation"
    assert fake.state.requests["cancel"] == 0


async def test_submit_429_defers_without_spending_attempts(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    fake.state.add_fault(Fault("submit", status=429, retry_after=0.4, times=2))
    await runtime.start_worker()
    task_id = await submit(client, auth, seed_body())
    result = await poll(client, task_id, auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    assert len(fake.state.submits) == 1 and len(fake.state.tasks) == 1  # 429s created nothing
    submits = [(t, status) for t, op, status in fake.state.log if op == "submit"]
    assert [s for _, s in submits] == [429, 429, 200]
    assert submits[1][0] - submits[0][0] >= 0.4 and submits[2][0] - submits[1][0] >= 0.4
    row = await runtime.store.get_task(task_id)
    assert row is not None and row.attempts == 1
    kinds = [e["kind"] for e in await runtime.store.events(task_id)]
    assert kinds.count("deferred") == 2


async def test_submit_5xx_is_retried(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    fake.state.add_fault(Fault("submit", status=503, code="ModelUnavailable", times=1))
    await runtime.start_worker()
    task_id = await submit(client, auth, seed_body())
    result = await poll(client, task_id, auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    assert len(fake.state.tasks) == 1
    kinds = [e["kind"] for e in await runtime.store.events(task_id)]
    assert "retry" in kinds


async def test_poll_errors_back_off_and_honour_retry_after(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    fake.state.add_fault(Fault("get", status=429, retry_after=0.5, times=1))
    fake.state.add_fault(Fault("get", status=500, times=1))
    await runtime.start_worker()
    task_id = await submit(client, auth, seed_body())
    result = await poll(client, task_id, auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    gets = [(t, status) for t, op, status in fake.state.log if op == "get"]
    assert [s for _, s in gets][:2] == [429, 500]
    assert gets[1][0] - gets[0][0] >= 0.5  # Retry-After honoured


async def test_poll_failures_are_bounded(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    first = 0.3
    runtime.settings.dashscope_poll_first = first
    fake.state.add_fault(Fault("get", status=502, times=-1))
    await runtime.start_worker()
    result = await poll(client, await submit(client, auth, seed_body()), auth, timeout=30)
    out = result["output"]
    assert (out["task_status"], out["code"]) == ("FAILED", "InternalError.PollFailed")
    assert fake.state.requests["get"] == 3
    gets = [t for t, op, _ in fake.state.log if op == "get"]
    # Exponential backoff: the waits after the 1st and 2nd failures are at least first and
    # 2 x first (a sleep never ends early; a busy machine only makes the gaps longer).
    assert gets[1] - gets[0] >= first
    assert gets[2] - gets[1] >= 2 * first


async def test_deadline_fails_the_task(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    runtime.settings.dashscope_task_deadline = 0.5
    await runtime.start_worker()
    body = seed_body()
    body["input"]["prompt"] = "never ends [fake:running=60]"
    out = (await poll(client, await submit(client, auth, body), auth, timeout=30))["output"]
    assert (out["task_status"], out["code"]) == ("FAILED", "InternalError.Timeout")


async def test_result_download_failure_is_retried(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    fake.state.add_fault(Fault("result", status=403, code="AccessDenied", times=1))
    await runtime.start_worker()
    task_id = await submit(client, auth, seed_body())
    result = await poll(client, task_id, auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    assert fake.state.requests["result"] == 2 and len(fake.state.submits) == 1
    events = await runtime.store.events(task_id)
    retry = [e for e in events if e["kind"] == "retry"]
    assert retry and retry[0]["detail"]["code"] == "InternalError.ResultDownload"
    assert "127.0.0.1" not in retry[0]["detail"]["message"]


async def test_progress_while_upstream_runs(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    await runtime.start_worker()
    body = seed_body()
    body["input"]["prompt"] = "a long one [fake:running=600]"  # still RUNNING when seen
    task_id = await submit(client, auth, body)
    seen: set[int] = set()
    for _ in range(200):
        out = (await client.get(f"/task/{task_id}", headers=auth)).json()["output"]
        if out["task_status"] == "RUNNING":
            seen.add(out["progress"])
        if 50 <= max(seen, default=0) < 100:
            break
        await asyncio.sleep(0.05)
    assert 50 <= max(seen) < 100


async def _all_succeed(client: httpx.AsyncClient, auth: dict[str, str], ids: list[str]) -> None:
    results = await asyncio.gather(*(poll(client, t, auth, timeout=60) for t in ids))
    assert [r["output"]["task_status"] for r in results] == ["SUCCEEDED"] * len(ids)


async def test_admission_keeps_the_in_flight_cap(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    runtime.settings.dashscope_max_in_flight = 2
    fake.state.config.running_seconds = 3600.0  # held upstream until this test releases them
    polled = record_polls(fake)
    worker = await runtime.start_worker()
    assert worker.limit("dashscope") == 2
    ids = [await submit(client, auth, seed_body()) for _ in range(6)]
    await wait_for(
        lambda: len(upstream := unfinished_upstream(fake)) == 2 and polled >= set(upstream),
        "two tasks in flight upstream, both polled",
    )
    await asyncio.sleep(0.3)  # time to send a third, were the cap not kept (no upper bound)
    assert len(fake.state.submits) == 2
    rows = [await runtime.store.get_task(t) for t in ids]
    assert sorted(row.attempts for row in rows if row is not None) == [0, 0, 0, 0, 1, 1]
    fake.state.config.running_seconds = 0.2
    finish_upstream(fake)
    await _all_succeed(client, auth, ids)
    # A slot frees only once a poll saw the task end, so never three at once, however slow.
    assert upstream_overlap(fake) <= 2
    assert len(fake.state.submits) == 6


async def test_admission_keeps_the_submit_rate_without_spending_attempts(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    # A burst of 1, then one every 2 s: over ten times slower than this worker claims on a
    # busy machine (~0.15 s a claim), so tasks must be handed back until their turn.
    rate, burst, count = 0.5, 1, 3
    runtime.settings.dashscope_submit_rate = rate
    # All of them wait in the queue before the worker starts, however fast this machine submits.
    ids = [await submit(client, auth, seed_body()) for _ in range(count)]
    await runtime.start_worker()
    await _all_succeed(client, auth, ids)
    times = sorted(s["at"] for s in fake.state.submits)
    assert times[-1] - times[0] >= (count - burst) / rate * 0.9
    window = [t for t in times if t - times[0] <= 0.5 / rate]
    assert len(window) <= burst + 1
    rows = [await runtime.store.get_task(t) for t in ids]
    assert all(row is not None and row.attempts == 1 for row in rows)
    kinds = [e["kind"] for t in ids for e in await runtime.store.events(t)]
    assert kinds.count("deferred") >= 1  # handed back to the queue, not slept on


async def test_many_tasks_are_polled_concurrently(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    # Upstream tasks do not end until this test releases them, so a worker that followed one
    # task at a time would never send the second: all twenty in flight upstream and each one
    # polled proves concurrent polling by counts, whatever the machine's speed.
    fake.state.config.running_seconds = 3600.0
    polled = record_polls(fake)
    ids = [await submit(client, auth, seed_body()) for _ in range(20)]
    await runtime.start_worker()  # all twenty are queued: the worker must take them at once
    await wait_for(
        lambda: len(upstream := unfinished_upstream(fake)) == 20 and polled >= set(upstream),
        "twenty tasks in flight upstream, each polled",
    )
    assert len(fake.state.submits) == 20
    finish_upstream(fake)
    await _all_succeed(client, auth, ids)
    assert len(fake.state.submits) == 20


async def test_refused_key_leaves_rotation_and_others_carry_on(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    runtime.settings.dashscope_api_keys = SecretStr(f"{BAD_KEY},{KEY}")
    await runtime.start_worker()
    ids = [await submit(client, auth, seed_body()) for _ in range(4)]
    for task_id in ids:
        assert (await poll(client, task_id, auth, timeout=30))["output"][
            "task_status"
        ] == "SUCCEEDED"
    submit_statuses = [status for _, op, status in fake.state.log if op == "submit"]
    assert submit_statuses.count(401) == 1  # tried once, then out of rotation
    assert {s["key"] for s in fake.state.submits} == {KEY}


@pytest.mark.parametrize(
    ("key", "code"), [(BAD_KEY, "InvalidApiKey"), (DENIED_KEY, "AccessDenied")]
)
async def test_refused_keys_fail_the_task(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    fake: FakeDashScopeServer,
    key: str,
    code: str,
) -> None:
    runtime.settings.dashscope_api_keys = SecretStr(key)
    await runtime.start_worker()
    out = (await poll(client, await submit(client, auth, seed_body()), auth, timeout=30))["output"]
    assert (out["task_status"], out["code"]) == ("FAILED", code)
    assert len(fake.state.tasks) == 0


async def test_keys_never_leak(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    fake: FakeDashScopeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    runtime.settings.dashscope_api_keys = SecretStr(f"{BAD_KEY},{KEY}")
    echo = Fault("submit", status=400, code="InvalidParameter", message=f"bad key {KEY} here")
    fake.state.add_fault(echo)
    await runtime.start_worker()
    first = await submit(client, auth, seed_body())
    failed = await poll(client, first, auth, timeout=30)
    second = await poll(client, await submit(client, auth, seed_body()), auth, timeout=30)
    assert failed["output"]["message"] == "bad key *** here"
    assert second["output"]["task_status"] == "SUCCEEDED"
    rows = [await runtime.store.get_task(t) for t in (first, second["output"]["task_id"])]
    events = [await runtime.store.events(t) for t in (first, second["output"]["task_id"])]
    stored = repr(rows) + repr(events) + repr(runtime.worker) + repr(runtime.settings)
    everything = caplog.text + repr(failed) + repr(second) + stored
    assert "key k-" in caplog.text  # fingerprints are what logs name
    for secret in SECRETS:
        assert secret not in everything


async def test_channels_spread_tasks_and_map_models(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    runtime.settings.dashscope_channels = [  # type: ignore[assignment]
        {"name": "cn", "api_keys": KEY, "max_in_flight": 1},
        {
            "name": "us",
            "api_keys": KEY2,
            "max_in_flight": 1,
            "model_map": {"wan2.6-i2v-flash": "wan2.6-i2v-flash-us"},
        },
    ]
    runtime.settings.dashscope_channels = Settings(
        dashscope_channels=runtime.settings.dashscope_channels
    ).dashscope_channels
    worker = await runtime.start_worker()
    assert worker.limit("dashscope") == 2
    ids = [await submit(client, auth, seed_body()) for _ in range(4)]
    for task_id in ids:
        assert (await poll(client, task_id, auth, timeout=30))["output"][
            "task_status"
        ] == "SUCCEEDED"
    by_key = {(s["key"], s["body"]["model"]) for s in fake.state.submits}
    assert by_key == {(KEY, "wan2.6-i2v-flash"), (KEY2, "wan2.6-i2v-flash-us")}
    channels = {(await runtime.store.get_task(t)).engine_state["channel"] for t in ids}  # type: ignore[union-attr]
    assert channels == {"cn", "us"}

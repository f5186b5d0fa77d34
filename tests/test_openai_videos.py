"""The ``openai-videos`` relay against the fake ``/v1/videos`` server: success with progress,
upstream failure, 429 with Retry-After, a crash between submit and storing the id
(reconciled, never resubmitted), a lost answer, cancel, caps; and its pure pieces."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av
import httpx
import pytest

from stillmotion.config import Settings
from stillmotion.domain import CANCELABLE, VideoRequest
from stillmotion.engines.base import EngineJob
from stillmotion.engines.openai_videos.bodies import build_body, wan_frames
from stillmotion.engines.openai_videos.client import status_of
from stillmotion.engines.openai_videos.config import VideoModel, parse_model_map
from stillmotion.engines.openai_videos.engine import OpenAIVideosEngine
from stillmotion.engines.relay.http import Failure, classify
from stillmotion.errors import ModelUnavailable
from stillmotion.media.geometry import output_size
from stillmotion.runtime import ENGINE_OPTIONS, Runtime, build_worker
from stillmotion.testing.fake_videos import FakeVideosConfig, FakeVideosServer, VideoFault
from stillmotion.worker.worker import Worker
from tests.conftest import poll, seed_body
from tests.relay_helpers import submit, wait_row

KEY = "sk-fleet-4b1d9c0e7a2f"
MODEL = "wan2.6-i2v-flash"
UPSTREAM = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
MAP = {MODEL: {"model": UPSTREAM, "fps": 16, "extras": {"num_inference_steps": 40}}}


@pytest.fixture
def fake() -> Iterator[FakeVideosServer]:
    config = FakeVideosConfig(keys={KEY}, queued_seconds=0.1, running_seconds=0.3)
    with FakeVideosServer(config) as server:
        yield server


def fleet_settings(tmp_path: Path, fake: FakeVideosServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp_path / "data",
        workers=4,
        lease_seconds=5,
        poll_interval=0.05,
        allow_private_urls=True,
        key_cache_seconds=0,
        routes=f"{MODEL}=openai-videos",
        openai_videos_base_url=fake.base_url,
        openai_videos_api_keys=KEY,
        openai_videos_model_map=MAP,
        openai_videos_poll_first=0.05,
        openai_videos_poll_max=0.2,
        openai_videos_max_poll_failures=3,
        openai_videos_submit_rate=100,
        openai_videos_request_timeout=5,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path, fake: FakeVideosServer) -> Settings:
    return fleet_settings(tmp_path, fake)


async def _video(client: httpx.AsyncClient, url: str) -> tuple[int, int, bool]:
    parts = urlsplit(url)
    resp = await client.get(f"{parts.path}?{parts.query}")
    assert resp.status_code == 200
    with av.open(io.BytesIO(resp.content)) as container:
        ctx = container.streams.video[0].codec_context
        return ctx.width, ctx.height, bool(container.streams.audio)


# -- end to end --------------------------------------------------------------------------------


async def test_success_with_progress_and_audio_muxed_by_us(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeVideosServer
) -> None:
    fake.state.config.running_seconds = 4.0  # the heartbeat stores progress every 1.7 s
    await runtime.start_worker()
    body = seed_body(seed=77, audio=True)
    body["input"]["negative_prompt"] = "blurry"
    task_id = await submit(client, auth, body)
    row = await wait_row(runtime, task_id, lambda r: 0.1 < r.progress < 0.9, timeout=20)
    assert row.engine_state["upstream_id"].startswith("video_gen_")
    result = await poll(client, task_id, auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    (sent,) = fake.state.submits
    assert sent["content_type"] == "multipart/form-data"
    assert sent["submit_id"] == row.engine_state["submit_id"]
    width, height = output_size(480, 320, "720P")
    assert width % 16 == 0 and height % 16 == 0
    params = sent["params"]
    assert params["model"] == UPSTREAM and params["prompt"] == body["input"]["prompt"]
    assert (params["width"], params["height"], params["seconds"]) == (width, height, "2")
    assert (params["num_frames"], params["fps"], params["seed"]) == (33, 16, 77)
    assert params["num_inference_steps"] == 40 and params["negative_prompt"] == "blurry"
    assert params["input_reference"]["type"] == "data"  # the frame inline, never a URL of ours
    assert params["input_reference"]["media_type"] == "image/jpeg"
    assert await _video(client, result["output"]["video_url"]) == (width, height, True)
    assert result["usage"]["output_video_duration"] == 2 and result["usage"]["audio"] is True
    assert fake.state.requests["content"] == 1


async def test_silent_request_and_json_body(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeVideosServer
) -> None:
    runtime.settings.openai_videos_body = "json"
    await runtime.start_worker()
    task_id = await submit(client, auth, seed_body(audio=False))
    result = await poll(client, task_id, auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    (sent,) = fake.state.submits
    assert sent["content_type"] == "application/json"
    assert sent["body"]["input_reference"]["image_url"].startswith("data:image/jpeg;base64,")
    assert (await _video(client, result["output"]["video_url"]))[2] is False


async def test_upstream_failure_keeps_its_code_and_message(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeVideosServer
) -> None:
    fake.state.fail_next_tasks(1, "torch.OutOfMemoryError", f"CUDA out of memory ({KEY})")
    await runtime.start_worker()
    task_id = await submit(client, auth, seed_body())
    out = (await poll(client, task_id, auth, timeout=30))["output"]
    assert (out["task_status"], out["code"]) == ("FAILED", "torch.OutOfMemoryError")
    assert "CUDA out of memory" in out["message"] and KEY not in out["message"]
    assert len(fake.state.submits) == 1 and fake.state.requests["content"] == 0


async def test_429_with_retry_after_defers_and_backs_off(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeVideosServer
) -> None:
    fake.state.add_fault(VideoFault("submit", status=429, retry_after=0.6))
    fake.state.add_fault(VideoFault("get", status=429, retry_after=0.3, times=2))
    await runtime.start_worker()
    task_id = await submit(client, auth, seed_body())
    result = await poll(client, task_id, auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    assert fake.state.requests["submit"] == 2 and len(fake.state.submits) == 1
    submits = [at for at, op, _ in fake.state.log if op == "submit"]
    assert submits[1] - submits[0] >= 0.5  # the channel waited out Retry-After
    gets = [(at, status) for at, op, status in fake.state.log if op == "get"]
    assert [s for _, s in gets[:2]] == [429, 429] and gets[2][0] - gets[1][0] >= 0.25
    row = await runtime.store.get_task(task_id)
    assert row is not None and row.attempts == 1  # a deferral spends no attempt


class StopsBeforeStoringTheId(OpenAIVideosEngine):
    """Hangs right after the server accepted the create, before the id is saved."""

    reached: asyncio.Event

    async def _store_upstream_id(self, job: EngineJob, state: dict[str, Any]) -> None:
        self.reached.set()
        await asyncio.Event().wait()


async def _kill(worker: Worker) -> None:
    assert worker._loop_task is not None
    running = [worker._loop_task, *worker._active]
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    for engine in worker.engines.values():
        await engine.aclose()


async def test_crash_between_submit_and_storing_the_id_is_reconciled(
    tmp_path: Path, fake: FakeVideosServer
) -> None:
    from stillmotion.api.app import create_app
    from stillmotion.runtime import open_runtime
    from stillmotion.tasks.keys import create_key

    runtime = await open_runtime(fleet_settings(tmp_path, fake, lease_seconds=1.0))
    try:
        key = (await create_key(runtime.store, "t")).key
        auth = {"Authorization": f"Bearer {key}"}
        transport = httpx.ASGITransport(app=create_app(runtime=runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            worker = build_worker(runtime)
            await worker.engines["openai-videos"].aclose()
            engine = StopsBeforeStoringTheId(**ENGINE_OPTIONS["openai-videos"](runtime.settings))
            engine.reached = asyncio.Event()
            worker.engines["openai-videos"] = engine
            runtime.worker = worker
            runtime.service.set_on_submit(worker.wake)
            worker.start()
            task_id = await submit(client, auth, seed_body())
            await asyncio.wait_for(engine.reached.wait(), 10)
            row = await runtime.store.get_task(task_id)
            assert row is not None and row.engine_state["submitting"] == "default"
            await _kill(worker)
            runtime.worker = None
            await runtime.start_worker()  # a fresh process: claims it once the lease expires
            result = await poll(client, task_id, auth, timeout=30)
            assert result["output"]["task_status"] == "SUCCEEDED", result
            assert len(fake.state.submits) == 1 and len(fake.state.videos) == 1
            assert fake.state.requests["list"] >= 1
            row = await runtime.store.get_task(task_id)
            assert row is not None and row.attempts == 2
            assert row.engine_state["upstream_id"] == next(iter(fake.state.videos))
    finally:
        await runtime.close()


async def test_a_lost_answer_is_reconciled_at_once(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeVideosServer
) -> None:
    fake.state.add_fault(VideoFault("submit", drop=True))
    await runtime.start_worker()
    task_id = await submit(client, auth, seed_body())
    result = await poll(client, task_id, auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    assert len(fake.state.submits) == 1 and fake.state.requests["list"] >= 1
    row = await runtime.store.get_task(task_id)
    assert row is not None and row.attempts == 1
    assert row.engine_state["upstream_id"] == next(iter(fake.state.videos))


async def test_a_lost_answer_without_a_list_fails_clearly(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeVideosServer
) -> None:
    fake.state.add_fault(VideoFault("submit", drop=True))
    fake.state.add_fault(VideoFault("list", status=404, times=-1))  # a server with no list
    await runtime.start_worker()
    task_id = await submit(client, auth, seed_body())
    out = (await poll(client, task_id, auth, timeout=30))["output"]
    assert (out["task_status"], out["code"]) == ("FAILED", "InternalError.SubmitUnknown")
    assert "not submitted again" in out["message"]
    assert len(fake.state.submits) == 1


async def test_cancel_deletes_the_upstream_video(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeVideosServer
) -> None:
    fake.state.config.queued_seconds = 30
    await runtime.start_worker()
    task_id = await submit(client, auth, seed_body())
    row = await wait_row(runtime, task_id, lambda r: r.engine_state.get(CANCELABLE) is True)
    resp = await client.post(f"/task/{task_id}/cancel", headers=auth)
    assert resp.status_code == 200, resp.text
    out = (await poll(client, task_id, auth, timeout=30))["output"]
    assert out["task_status"] == "CANCELED"
    assert fake.state.deletes == [row.engine_state["upstream_id"]]


async def test_the_in_flight_cap_holds(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeVideosServer
) -> None:
    runtime.settings.openai_videos_max_in_flight = 2
    await runtime.start_worker()
    ids = [await submit(client, auth, seed_body()) for _ in range(5)]
    for task_id in ids:
        result = await poll(client, task_id, auth, timeout=40)
        assert result["output"]["task_status"] == "SUCCEEDED", result
    assert fake.state.peak_active <= 2 and len(fake.state.submits) == 5
    rows = [await runtime.store.get_task(i) for i in ids]
    assert all(r is not None and r.attempts == 1 for r in rows)  # waited, never retried


# -- the pieces --------------------------------------------------------------------------------


def test_model_map_formats_and_refusals() -> None:
    toml_like = parse_model_map(MAP)
    assert toml_like[MODEL] == VideoModel(UPSTREAM, 16, {"num_inference_steps": 40})
    assert parse_model_map('{"a": "m"}') == {"a": VideoModel("m")}
    assert parse_model_map("a=m,b=n")["b"] == VideoModel("n")
    assert parse_model_map("") == {}
    for bad in ({"a": {"modle": "x"}}, {"a": {"extras": {"seed": 1}}}, {"a": {"fps": 0}}, "a"):
        with pytest.raises(ValueError):
            parse_model_map(bad)
    with pytest.raises(ModelUnavailable):
        OpenAIVideosEngine(model_map={"a": {"extras": {"size": "1x1"}}})
    with pytest.raises(ModelUnavailable, match="openai_videos_channels"):
        OpenAIVideosEngine(channels=[{"name": "x", "keys": "k"}])


def test_openai_error_bodies_are_classified() -> None:
    vllm = {"error": {"message": "bad size", "type": "Bad Request", "param": None, "code": 400}}
    err = classify(httpx.Response(400, json=vllm), may_apply=True)
    assert (err.failure, err.code, err.message) == (Failure.REJECTED, "HTTP400", "bad size")
    named = {"error": {"message": "slow", "type": "rate_limit", "code": "rate_limit_exceeded"}}
    err = classify(httpx.Response(429, json=named, headers={"Retry-After": "2"}), may_apply=True)
    assert (err.failure, err.code, err.retry_after) == (Failure.THROTTLED, "rate_limit_exceeded", 2)


def test_frames_status_words_and_the_body() -> None:
    assert (wan_frames(5, 16), wan_frames(2, 16), wan_frames(5, 24)) == (81, 33, 121)
    done = status_of({"id": "v", "status": "in_progress", "progress": 40})
    assert (done.state, done.progress) == ("RUNNING", 0.4)
    failed = status_of({"status": "failed", "error": {"code": "RuntimeError", "message": "m"}})
    assert (failed.state, failed.code, failed.message) == ("FAILED", "RuntimeError", "m")
    assert status_of({"status": "queued"}).state == "PENDING"
    assert status_of({"status": "completed"}).state == "SUCCEEDED"
    assert status_of({"status": "cancelled"}).state == "CANCELED"
    req = VideoRequest(
        model=MODEL,
        prompt="p",
        negative_prompt="",
        image=None,
        audio_source=None,
        resolution="720P",
        duration=5,
        audio=False,
        shot_type="single",
        seed=5,
        prompt_extend=True,
        watermark=False,
    )
    entry = VideoModel(extras={"guidance_scale": 3.5})
    sent = build_body(
        req, entry, width=816, height=544, fps=16, image=("image/png", b"x"), form=True
    )
    assert "model" not in sent and "negative_prompt" not in sent  # the server's own model
    assert (sent["size"], sent["seconds"], sent["num_frames"]) == ("816x544", "5", 81)
    assert sent["image_reference"] == {"image_url": "data:image/png;base64,eA=="}
    assert sent["guidance_scale"] == 3.5 and sent["seed"] == 5

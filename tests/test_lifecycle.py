"""In-process service with its worker: PENDING -> RUNNING -> SUCCEEDED, media failures, files."""

from __future__ import annotations

import asyncio
import io
import re
from urllib.parse import urlsplit

import av
import httpx
import pytest

from stillmotion.engines.base import CancelSignal, EngineJob, EngineResult, ProgressFn
from stillmotion.engines.motion.engine import MotionEngine
from stillmotion.runtime import Runtime
from stillmotion.testing.images import image_bytes
from stillmotion.testing.media_server import MediaServer
from tests.conftest import poll, seed_body

TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")


@pytest.fixture
async def worker_runtime(runtime: Runtime) -> Runtime:
    await runtime.start_worker()
    return runtime


async def _submit(client: httpx.AsyncClient, auth: dict[str, str], body: dict) -> str:  # type: ignore[type-arg]
    resp = await client.post("/task/bailian/image2video", json=body, headers=auth)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["output"]["task_id"])


async def _status(client: httpx.AsyncClient, auth: dict[str, str], task_id: str) -> str:
    resp = await client.get(f"/task/{task_id}", headers=auth)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["output"]["task_status"])


async def test_task_succeeds_and_video_downloads(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The engine is held until the test has seen the task RUNNING, and the worker starts only
    # after the test has seen it PENDING: each status is observed for certain, in order.
    release = asyncio.Event()
    held: list[str] = []
    generate = MotionEngine.generate

    async def hold(
        self: MotionEngine, job: EngineJob, progress: ProgressFn, cancel: CancelSignal
    ) -> EngineResult:
        held.append(job.task_id)
        await release.wait()
        return await generate(self, job, progress, cancel)

    monkeypatch.setattr(MotionEngine, "generate", hold)
    task_id = await _submit(client, auth, seed_body())
    seen = [await _status(client, auth, task_id)]
    assert seen == ["PENDING"]  # no worker yet
    await runtime.start_worker()
    for _ in range(1200):  # bounded: up to a minute on a busy machine
        if held:
            break
        await asyncio.sleep(0.05)
    assert held == [task_id]
    seen.append(await _status(client, auth, task_id))
    assert seen == ["PENDING", "RUNNING"]  # the engine has it and is held
    release.set()
    body = await poll(client, task_id, auth)
    out = body["output"]
    assert out["task_status"] == "SUCCEEDED", body
    for status in body["_seen"]:
        if status != seen[-1]:
            seen.append(status)
    assert seen == ["PENDING", "RUNNING", "SUCCEEDED"]
    for field in ("submit_time", "scheduled_time", "end_time"):
        assert TIME.match(out[field]), field
    assert out["submit_time"] <= out["scheduled_time"] <= out["end_time"]
    assert body["usage"] == {
        "duration": 2,
        "input_video_duration": 0,
        "output_video_duration": 2,
        "SR": 720,
        "video_count": 1,
        "audio": True,
    }
    url = urlsplit(out["video_url"])
    assert out["video_url"].startswith(runtime.settings.base_url + "/files/")
    video = await client.get(f"{url.path}?{url.query}")
    assert video.status_code == 200
    assert video.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(video.content)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        # 480x320 input at 720P keeps 3:2: sqrt(921600/1.5)=783.8 -> 1168x768 after flooring
        assert (stream.codec_context.width, stream.codec_context.height) == (1168, 768)
        assert sum(1 for _ in container.decode(stream)) == 60
        assert len(container.streams.audio) == 1
    ranged = await client.get(f"{url.path}?{url.query}", headers={"Range": "bytes=0-99"})
    assert ranged.status_code == 206
    assert len(ranged.content) == 100
    assert ranged.content == video.content[:100]
    events = [e["kind"] for e in await runtime.store.events(task_id)]
    assert events[0] == "created" and events.count("claimed") == 1, events
    assert events.index("claimed") < events.index("succeeded") == len(events) - 1, events


async def test_bad_signatures_are_refused(
    client: httpx.AsyncClient, auth: dict[str, str], worker_runtime: Runtime
) -> None:
    task_id = await _submit(client, auth, seed_body())
    out = (await poll(client, task_id, auth))["output"]
    url = urlsplit(out["video_url"])
    tampered = url.query.replace("Signature=", "Signature=0")
    for query in (tampered, "Expires=1&Signature=abc", ""):
        resp = await client.get(f"{url.path}?{query}")
        assert resp.status_code == 403
        assert resp.json()["code"] == "AccessDenied"
    key = url.path.removeprefix("/files/")
    expired = worker_runtime.storage.signer
    sig = expired.signature(key, 1000)
    assert (await client.get(f"{url.path}?Expires=1000&Signature={sig}")).status_code == 403


async def test_url_image_and_silent_flash(
    client: httpx.AsyncClient, auth: dict[str, str], worker_runtime: Runtime
) -> None:
    with MediaServer({"/frame.png": (image_bytes(320, 480), "image/png")}) as server:
        body = seed_body(server.url("/frame.png"), audio=False, shot_type="multi")
        task_id = await _submit(client, auth, body)
        result = await poll(client, task_id, auth)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    assert result["usage"]["audio"] is False
    url = urlsplit(result["output"]["video_url"])
    video = await client.get(f"{url.path}?{url.query}")
    with av.open(io.BytesIO(video.content)) as container:
        assert len(container.streams.audio) == 0
        assert (
            container.streams.video[0].codec_context.height
            > container.streams.video[0].codec_context.width
        )


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/missing.png", "BadRequest.InputDownloadFailed"),
        ("/text.png", "BadRequest.UnsupportedFileFormat"),
        ("/tiny.png", "InvalidParameter"),
    ],
)
async def test_media_problems_fail_the_task(
    client: httpx.AsyncClient, auth: dict[str, str], worker_runtime: Runtime, path: str, code: str
) -> None:
    files = {
        "/text.png": (b"hello, not an image", "image/png"),
        "/tiny.png": (image_bytes(100, 100), "image/png"),
    }
    with MediaServer(files) as server:
        task_id = await _submit(client, auth, seed_body(server.url(path)))
        body = await poll(client, task_id, auth)
    out = body["output"]
    assert out["task_status"] == "FAILED"
    assert out["code"] == code
    assert out["message"]
    assert "usage" not in body


async def test_private_urls_refused_by_default(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    runtime.settings.allow_private_urls = False
    await runtime.start_worker()
    with MediaServer({"/frame.png": (image_bytes(320, 480), "image/png")}) as server:
        task_id = await _submit(client, auth, seed_body(server.url("/frame.png")))
        body = await poll(client, task_id, auth)
        assert server.hits == []
    assert body["output"]["task_status"] == "FAILED"
    assert body["output"]["code"] == "InvalidURL"


async def test_running_cancel_is_refused_by_default_and_stops_when_enabled(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    await runtime.start_worker()
    task_id = await _submit(client, auth, seed_body(duration=15, resolution="1080P"))
    for _ in range(400):
        status = (await client.get(f"/task/{task_id}", headers=auth)).json()["output"]
        if status["task_status"] == "RUNNING":
            break
        await asyncio.sleep(0.05)
    assert status["task_status"] == "RUNNING"
    resp = await client.post(f"/task/{task_id}/cancel", headers=auth)
    assert resp.status_code == 400
    assert resp.json()["code"] == "UnsupportedOperation"
    runtime.service.cancel_running = True
    resp = await client.post(f"/task/{task_id}/cancel", headers=auth)
    assert resp.status_code == 200
    body = await poll(client, task_id, auth, timeout=30)
    assert body["output"]["task_status"] == "CANCELED"
    assert "video_url" not in body["output"]

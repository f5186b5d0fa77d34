"""The official ``dashscope`` SDK, unchanged, against this server (contract 4).

The 1.x ``VideoSynthesis`` / ``AioVideoSynthesis`` API runs against ``stillmotion serve``
subprocesses: ``working`` renders (one worker), ``idle`` has no worker so its tasks stay
PENDING and can be cancelled without a race, until a test starts a `stillmotion worker` on
its database. The 2.x ``AsyncClient`` runs in-process, where a broken service shows whether
it resends a failed submit.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import av
import dashscope
import httpx
import pytest
import requests
from dashscope import VideoSynthesis
from dashscope.aigc.video_synthesis import AioVideoSynthesis
from dashscope.api_entities.aio_session import close_shared_aio_session
from dashscope.common.error import InvalidTask, UploadFileException
from dashscope.v2.errors import InternalServerError

from stillmotion.api.app import create_app
from stillmotion.errors import InternalError
from stillmotion.runtime import Runtime
from stillmotion.testing.images import data_uri, image_bytes
from tests.servers import Server, served

MODEL = "wan2.6-i2v-flash"
SMALL: dict[str, Any] = {"resolution": "720P", "duration": 2}  # 60 frames: quick to render
SIZE = (1168, 768)  # a 480x320 first frame at 720P (contract 3.4)
Point = Callable[[Server], None]


def _start(root: Path, workers: int) -> Iterator[tuple[Server, str]]:
    yield from served(root, "sdk", workers)


@pytest.fixture(scope="module")
def working(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    yield from _start(tmp_path_factory.mktemp("working"), workers=1)


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    yield from _start(tmp_path_factory.mktemp("idle"), workers=0)


@pytest.fixture
def point(monkeypatch: pytest.MonkeyPatch) -> Point:
    """Point the SDK at a server the documented way (read at request time)."""

    def at(server: Server) -> None:
        monkeypatch.setattr(dashscope, "base_http_api_url", f"{server.base}/api/v1")

    return at


def _submit(key: str, prompt: str | None = "The camera slowly pushes in.", **params: Any) -> Any:
    return VideoSynthesis.async_call(
        model=MODEL, prompt=prompt, img_url=data_uri(480, 320, "JPEG"), api_key=key,
        **{**SMALL, **params},
    )  # fmt: skip


def _check_mp4(url: str, base: str) -> None:
    assert url.startswith(f"{base}/files/videos/")
    resp = requests.get(url, timeout=30)
    assert resp.status_code == 200
    with av.open(io.BytesIO(resp.content)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264"
        assert (video.codec_context.width, video.codec_context.height) == SIZE
        assert sum(1 for _ in container.decode(video)) == 60


@pytest.mark.e2e
def test_call_ends_succeeded_with_an_mp4(working: tuple[Server, str], point: Point) -> None:
    server, key = working
    point(server)
    rsp = VideoSynthesis.call(
        model=MODEL, prompt="A quiet harbour, the camera pushes in.",
        img_url=data_uri(480, 320, "JPEG"), api_key=key, audio=True, **SMALL,
    )  # fmt: skip
    assert rsp.status_code == 200, rsp
    assert rsp.output.task_status == "SUCCEEDED"
    assert rsp.output.task_id and rsp.request_id
    assert (rsp.usage["duration"], rsp.usage["SR"], rsp.usage.video_count) == (2, 720, 1)
    _check_mp4(rsp.output.video_url, server.base)


@contextlib.contextmanager
def dedicated_worker(server: Server) -> Iterator[None]:
    """A `stillmotion worker` on ``server``'s database while the block runs."""
    cmd = [sys.executable, "-m", "stillmotion", "worker", "--workers", "1"]
    proc = subprocess.Popen(cmd, env=server.env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield
    finally:
        proc.terminate()  # a graceful stop: the worker stops its render processes
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.mark.e2e
def test_async_call_fetch_wait_list(idle: tuple[Server, str], point: Point) -> None:
    server, key = idle
    point(server)
    submitted = _submit(key, prompt=None)  # the SDK sends "prompt": null
    assert submitted.status_code == 200, submitted
    assert submitted.output.task_status == "PENDING"
    task_id = submitted.output.task_id
    fetched = VideoSynthesis.fetch(submitted, api_key=key)
    assert fetched.status_code == 200
    assert (fetched.output.task_id, fetched.output.task_status) == (task_id, "PENDING")  # idle
    with dedicated_worker(server):
        done = VideoSynthesis.wait(task_id, api_key=key)
    assert done.output.task_status == "SUCCEEDED", done
    _check_mp4(done.output.video_url, server.base)
    listed = VideoSynthesis.list(api_key=key, status="SUCCEEDED", model_name=MODEL)
    assert listed.status_code == 200
    assert task_id in [item["task_id"] for item in listed.output["data"]]


@pytest.mark.e2e
def test_cancel_and_list(idle: tuple[Server, str], point: Point) -> None:
    server, _ = idle
    point(server)
    key = server.cli("keys", "create", "--name", "lister").strip()
    first, second = (_submit(key).output.task_id for _ in range(2))
    canceled = VideoSynthesis.cancel(first, api_key=key)
    assert canceled.status_code == 200, canceled
    assert VideoSynthesis.fetch(first, api_key=key).output.task_status == "CANCELED"
    again = VideoSynthesis.cancel(first, api_key=key)
    assert (again.status_code, again.code) == (400, "UnsupportedOperation")
    assert "PENDING" in again.message
    page = VideoSynthesis.list(api_key=key, page_size=1)
    assert page.status_code == 200
    assert (page.output["total"], page.output["total_page"]) == (2, 2)
    assert [item["task_id"] for item in page.output["data"]] == [second]
    only = VideoSynthesis.list(api_key=key, status="CANCELED")
    assert [(i["task_id"], i["status"]) for i in only.output["data"]] == [(first, "CANCELED")]


@pytest.mark.e2e
def test_errors_carry_our_code_and_message(
    idle: tuple[Server, str], point: Point, tmp_path: Path
) -> None:
    server, key = idle
    point(server)
    local = tmp_path / "frame.jpg"
    local.write_bytes(image_bytes(480, 320, "JPEG"))
    with pytest.raises(UploadFileException, match="code: InvalidParameter.*not a local path"):
        VideoSynthesis.async_call(model=MODEL, img_url=str(local), api_key=key, **SMALL)
    bad_key = _submit("sm-not-a-key")
    assert (bad_key.status_code, bad_key.code) == (401, "InvalidApiKey")
    assert bad_key.message == "Invalid API-key provided."
    bad_duration = _submit(key, duration=16)
    assert (bad_duration.status_code, bad_duration.code) == (400, "InvalidParameter")
    assert bad_duration.message.startswith("parameters.duration: 16 is not supported")
    with pytest.raises(InvalidTask, match="parameters.duration: 16"):
        VideoSynthesis.call(model=MODEL, img_url=data_uri(480, 320, "JPEG"), api_key=key,
                            resolution="720P", duration=16)  # fmt: skip
    task_id = _submit(key).output.task_id
    other = server.cli("keys", "create", "--name", "other").strip()
    foreign = VideoSynthesis.wait(task_id, api_key=other)  # UNKNOWN ends the wait at once
    assert foreign.output.task_status == "UNKNOWN"
    assert VideoSynthesis.fetch(task_id, api_key="sm-not-a-key").status_code == 401


@pytest.mark.e2e
async def test_aio_call_fetch_wait(working: tuple[Server, str], point: Point) -> None:
    server, key = working
    point(server)
    try:
        rsp = await AioVideoSynthesis.call(
            model=MODEL, prompt="Pan across the bay.", img_url=data_uri(480, 320, "JPEG"),
            api_key=key, **SMALL,
        )  # fmt: skip
        assert rsp.output.task_status == "SUCCEEDED", rsp
        _check_mp4(rsp.output.video_url, server.base)
        submitted = await AioVideoSynthesis.async_call(
            model=MODEL, img_url=data_uri(480, 320, "JPEG"), api_key=key, **SMALL
        )
        assert submitted.output.task_status == "PENDING"
        fetched = await AioVideoSynthesis.fetch(submitted, api_key=key)  # GET .../tasks/{id}/
        assert fetched.output.task_id == submitted.output.task_id
        done = await AioVideoSynthesis.wait(submitted, api_key=key)
        assert done.output.task_status == "SUCCEEDED"
        refused = await AioVideoSynthesis.cancel(submitted, api_key=key)
        assert (refused.status_code, refused.code) == (400, "UnsupportedOperation")
    finally:
        await close_shared_aio_session()


@pytest.mark.e2e
async def test_aio_cancel_and_list(idle: tuple[Server, str], point: Point) -> None:
    server, _ = idle
    point(server)
    key = server.cli("keys", "create", "--name", "aio").strip()
    try:
        submitted = await AioVideoSynthesis.async_call(
            model=MODEL, img_url=data_uri(480, 320, "JPEG"), api_key=key, **SMALL
        )
        task_id = submitted.output.task_id
        assert (await AioVideoSynthesis.cancel(task_id, api_key=key)).status_code == 200
        fetched = await AioVideoSynthesis.fetch(task_id, api_key=key)
        assert fetched.output.task_status == "CANCELED"
        listed = await AioVideoSynthesis.list(api_key=key, model_name=MODEL)
        assert listed.status_code == 200
        assert [(i["task_id"], i["status"]) for i in listed.output["data"]] == [
            (task_id, "CANCELED")
        ]
    finally:
        await close_shared_aio_session()


SUBPROCESS_SCRIPT = """
import json, dashscope
from dashscope import VideoSynthesis
from stillmotion.testing.images import data_uri, image_bytes
rsp = VideoSynthesis.async_call(model="wan2.6-i2v-flash", img_url=data_uri(480, 320, "JPEG"),
                                resolution="720P", duration=2)
got = VideoSynthesis.fetch(rsp)
print(json.dumps({"base": dashscope.base_http_api_url, "status": rsp.status_code,
                  "task_id": rsp.output.task_id, "fetched": got.output.task_status}))
"""


@pytest.mark.e2e
def test_base_url_from_the_environment(idle: tuple[Server, str]) -> None:
    """``DASHSCOPE_HTTP_BASE_URL`` is read when dashscope is imported: a fresh interpreter."""
    server, key = idle
    env = {**server.env, "DASHSCOPE_HTTP_BASE_URL": f"{server.base}/api/v1",
           "DASHSCOPE_API_KEY": key}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", SUBPROCESS_SCRIPT], env=env, capture_output=True,
                         timeout=120, check=True)  # fmt: skip
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert result["base"] == f"{server.base}/api/v1"
    assert (result["status"], result["fetched"]) == (200, "PENDING")
    resp = requests.get(f"{server.base}/api/v1/tasks/{result['task_id']}",
                        headers={"Authorization": f"Bearer {key}"}, timeout=10)  # fmt: skip
    assert resp.json()["output"]["task_status"] == "PENDING"


@pytest.fixture
async def v2_client(runtime: Runtime, api_key: str) -> AsyncIterator[dashscope.AsyncClient]:
    """The 2.x client on an in-process app (no worker: tasks stay PENDING)."""
    transport = httpx.ASGITransport(app=create_app(runtime=runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://test/api/v1") as http:
        http.headers["Authorization"] = f"Bearer {api_key}"
        yield dashscope.AsyncClient(api_key=api_key, base_url="http://test/api/v1",
                                    http_client=http)  # fmt: skip


async def test_v2_client_jobs(v2_client: dashscope.AsyncClient) -> None:
    jobs = v2_client.videos.jobs
    job = await jobs.create(model=MODEL, prompt="Drift left.", image_url=data_uri(480, 320, "JPEG"),
                            resolution="720P", duration=2)  # fmt: skip
    assert job.status == "PENDING" and job.task_id
    fetched = await jobs.fetch(job.task_id)
    assert (fetched.task_id, fetched.status) == (job.task_id, "PENDING")
    assert (await jobs.cancel(job.task_id)).is_error is False
    assert (await jobs.fetch(job.task_id)).status == "CANCELED"
    listed = await jobs.list(status="CANCELED")
    assert (listed.total, listed.page_no) == (1, 1)
    assert [(t.task_id, t.status) for t in listed.tasks] == [(job.task_id, "CANCELED")]


async def test_v2_client_does_not_resend_a_failed_submit(
    v2_client: dashscope.AsyncClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"submit": 0, "get": 0}

    def broken(name: str) -> Callable[..., Any]:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            raise InternalError("The database went away.")

        return fail

    monkeypatch.setattr(runtime.service, "submit", broken("submit"))
    monkeypatch.setattr(runtime.service, "get", broken("get"))
    with pytest.raises(InternalServerError, match="The database went away."):
        await v2_client.videos.jobs.create(model=MODEL, image_url=data_uri(480, 320, "JPEG"))
    assert calls["submit"] == 1  # x-should-retry: false
    with pytest.raises(InternalServerError):
        await v2_client.videos.jobs.fetch("some-task")
    assert calls["get"] == 3  # reads are retried (twice by default)


# -- the SDK's other body generations: media[] (Wan 2.7 / 3.0), kf2v, templates ---------------


@pytest.mark.e2e
def test_media_bodies_for_wan27_and_wan30(idle: tuple[Server, str], point: Point) -> None:
    server, key = idle
    point(server)
    frame = data_uri(480, 320, "JPEG")
    for model in ("wan2.7-i2v", "wan3.0-video"):
        media = [{"type": "first_frame", "url": frame}, {"type": "last_frame", "url": frame}]
        rsp = VideoSynthesis.async_call(
            model=model, prompt="A harbour at dawn.", media=media, api_key=key, **SMALL
        )
        assert rsp.status_code == 200, rsp
        assert rsp.output.task_status == "PENDING"
        fetched = VideoSynthesis.fetch(rsp, api_key=key)
        assert (fetched.output.task_id, fetched.output.task_status) == (rsp.output.task_id,
                                                                        "PENDING")  # fmt: skip
    legacy = VideoSynthesis.async_call(model="wan2.7-i2v", img_url=frame, api_key=key, **SMALL)
    assert (legacy.status_code, legacy.code) == (400, "InvalidParameter")
    assert "input.media" in legacy.message


@pytest.mark.e2e
def test_kf2v_goes_to_its_own_path_and_renders(working: tuple[Server, str], point: Point) -> None:
    server, key = working
    point(server)
    rsp = VideoSynthesis.call(  # the SDK sends kf2v models to .../image2video/video-synthesis
        model="wan2.2-kf2v-flash", prompt="From dawn to dusk.",
        first_frame_url=data_uri(480, 320, "JPEG", seed=3),
        last_frame_url=data_uri(480, 320, "JPEG", seed=4), api_key=key, resolution="480P",
    )  # fmt: skip
    assert rsp.status_code == 200, rsp
    assert rsp.output.task_status == "SUCCEEDED"
    assert (rsp.usage["duration"], rsp.usage["SR"], rsp.usage.video_count) == (5, 480, 1)
    resp = requests.get(rsp.output.video_url, timeout=30)
    with av.open(io.BytesIO(resp.content)) as container:
        video = container.streams.video[0]
        assert sum(1 for _ in container.decode(video)) == 150  # 5 s at 30 fps


@pytest.mark.e2e
def test_templates_through_the_sdk(idle: tuple[Server, str], point: Point) -> None:
    from stillmotion.engines.motion import MotionEngine

    server, key = idle
    point(server)
    frame = data_uri(480, 320, "JPEG")
    drawn = sorted(MotionEngine.templates)
    for template in [*drawn[:1], "frenchkiss"]:
        rsp = VideoSynthesis.async_call(
            model="wan2.6-i2v", img_url=frame, template=template, api_key=key, **SMALL
        )
        if template in drawn:
            assert rsp.status_code == 200 and rsp.output.task_status == "PENDING", rsp
        else:  # the catalog has it; the motion engine does not draw it: the list is named
            assert (rsp.status_code, rsp.code) == (400, "InvalidParameter"), rsp
            assert "supported templates" in rsp.message
    flash = VideoSynthesis.async_call(model=MODEL, img_url=frame, template="hug", api_key=key)
    assert (flash.status_code, flash.code) == (400, "InvalidParameter")
    assert "input.template is not supported by model" in flash.message

"""The SDK (stillmotion.client): against the real app in-process (AsyncClient over
ASGITransport), against a subprocess ``stillmotion serve`` (Client), and against a mock
transport for the DashScope-native paths and the polling policy."""

from __future__ import annotations

import ast
import base64
import io
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import av
import httpx
import pytest

from stillmotion.api.app import create_app
from stillmotion.client import (
    APIConnectionError,
    AsyncClient,
    AuthenticationError,
    Client,
    InvalidInputError,
    InvalidParameterError,
    ServerError,
    Task,
    TaskFailed,
    UnsupportedOperationError,
    WaitTimeout,
)
from stillmotion.client._media import as_data_uri
from stillmotion.media.geometry import output_size
from stillmotion.runtime import Runtime
from stillmotion.testing.images import image_bytes
from stillmotion.testing.media_server import MediaServer
from tests.servers import Server, served

CLIENT_PKG = Path(__file__).resolve().parents[1] / "stillmotion" / "client"
MODEL = "wan2.6-i2v-flash"


def _video_size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as container:
        ctx = container.streams.video[0].codec_context
        assert sum(1 for _ in container.decode(video=0)) > 0
        return ctx.width, ctx.height


# -- packaging ------------------------------------------------------------------------


def test_client_imports_only_httpx_and_the_stdlib() -> None:
    for path in CLIENT_PKG.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                ok = top in sys.stdlib_module_names or top in {"httpx", "__future__"}
                assert ok or name.startswith("stillmotion.client"), f"{path.name}: {name}"


# -- in-process, async ------------------------------------------------------------------


@pytest.fixture
async def sdk(runtime: Runtime, api_key: str) -> AsyncIterator[AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(runtime=runtime))
    async with AsyncClient(
        runtime.settings.base_url,
        api_key,
        transport=transport,
        poll_interval=0.05,
        max_poll_interval=0.2,
    ) as client:
        yield client


async def test_async_submit_wait_download(
    sdk: AsyncClient, runtime: Runtime, tmp_path: Path
) -> None:
    await runtime.start_worker()
    task = await sdk.submit(
        MODEL,
        image_bytes(480, 320, "JPEG"),
        prompt="push in slowly",
        resolution="720P",
        duration=2,
        audio=False,
        seed=7,
    )
    assert task.status == "PENDING" and task.task_id
    seen: list[Task] = []
    done = await sdk.wait(task.task_id, timeout=120, on_progress=seen.append)
    assert done.succeeded and done.progress == 100 and done.video_url
    assert done.usage == {
        "duration": 2,
        "input_video_duration": 0,
        "output_video_duration": 2,
        "SR": 720,
        "video_count": 1,
        "audio": False,
    }
    assert seen[-1] == done and all(t.task_id == task.task_id for t in seen)
    out = await sdk.download(done, tmp_path / "sub" / "out.mp4")
    assert _video_size(out) == output_size(480, 320, "720P")
    assert not list(out.parent.glob(".*.part"))


async def test_async_invalid_parameter_names_the_field(sdk: AsyncClient) -> None:
    with pytest.raises(InvalidParameterError) as info:
        await sdk.submit(MODEL, image_bytes(480, 320, "PNG"), duration=16)
    err = info.value
    assert (err.status, err.code, err.field) == (400, "InvalidParameter", "parameters.duration")
    assert "2 to 15" in err.message and err.request_id


async def test_async_bad_key(runtime: Runtime) -> None:
    transport = httpx.ASGITransport(app=create_app(runtime=runtime))
    async with AsyncClient(runtime.settings.base_url, "sm-wrong", transport=transport) as bad:
        with pytest.raises(AuthenticationError) as info:
            await bad.get("whatever")
    assert (info.value.status, info.value.code) == (401, "InvalidApiKey")
    assert "Invalid API-key" in info.value.message


async def test_async_failed_task_raises_task_failed(sdk: AsyncClient, runtime: Runtime) -> None:
    await runtime.start_worker()
    with MediaServer({}) as media:
        task = await sdk.submit(MODEL, media.url("/missing.png"), duration=2, resolution="720P")
        with pytest.raises(TaskFailed) as info:
            await sdk.wait(task.task_id, timeout=60)
    assert info.value.code == "BadRequest.InputDownloadFailed"
    assert info.value.task.status == "FAILED" and info.value.message


async def test_async_cancel_and_unknown(sdk: AsyncClient) -> None:
    task = await sdk.submit(MODEL, image_bytes(480, 320, "WEBP"))  # no worker: stays PENDING
    await sdk.cancel(task.task_id)
    assert (await sdk.get(task.task_id)).status == "CANCELED"
    with pytest.raises(UnsupportedOperationError):
        await sdk.cancel(task.task_id)
    with pytest.raises(TaskFailed) as info:
        await sdk.wait(task.task_id, timeout=5)
    assert info.value.code == "TaskCanceled"
    assert (await sdk.get("no-such-task")).status == "UNKNOWN"


# -- subprocess server, sync ------------------------------------------------------------


@pytest.fixture(name="served")
def served_fixture(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    yield from served(tmp_path, "sdk")


def test_sync_client_against_serve(served: tuple[Server, str], tmp_path: Path) -> None:
    srv, key = served
    image = tmp_path / "frame.png"
    image.write_bytes(image_bytes(320, 480, "PNG"))
    with Client(srv.base, key, poll_interval=0.1, max_poll_interval=0.5) as sm:
        task = sm.submit(MODEL, image, prompt="pan left", resolution="720P", duration=2)
        done = sm.wait(task.task_id, timeout=120)
        assert _video_size(sm.download(done, tmp_path / "a.mp4")) == output_size(320, 480, "720P")
        with pytest.raises(InvalidParameterError, match="parameters.resolution"):
            sm.submit(MODEL, image, resolution="480P")
        with MediaServer({}) as media:
            failed = sm.submit(MODEL, media.url("/gone.jpg"), duration=2, resolution="720P")
            with pytest.raises(TaskFailed, match="BadRequest.InputDownloadFailed"):
                sm.wait(failed.task_id, timeout=60)
    with Client(srv.base, "sm-not-a-key") as bad, pytest.raises(AuthenticationError):
        bad.submit(MODEL, image)


def test_env_supplies_url_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLMOTION_URL", "http://example.test:9/")
    monkeypatch.setenv("STILLMOTION_API_KEY", "sm-env")
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json=_body()))
    with Client(transport=transport) as sm:
        sm.get("t1")
    assert str(seen[0].url) == "http://example.test:9/task/t1"
    assert seen[0].headers["authorization"] == "Bearer sm-env"


# -- DashScope-native paths and the polling policy, on a mock transport -------------------


def _body(status: str = "SUCCEEDED", task_id: str = "t1", **output: object) -> dict[str, object]:
    out = {"task_id": task_id, "task_status": status, **output}
    return {"request_id": "r1", "output": out}


def _mock(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    client = Client(
        "https://dashscope.example/api/v1",
        "sk-1",
        poll_interval=0.01,
        max_poll_interval=0.02,
        transport=httpx.MockTransport(record),
    )
    return client, seen


def test_native_base_url_uses_dashscope_paths_and_async_header(tmp_path: Path) -> None:
    video = b"\x00\x00\x00\x18ftypmp42 fake video"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "oss.example":
            return httpx.Response(200, content=video)
        status = "PENDING" if request.method == "POST" else "SUCCEEDED"
        return httpx.Response(200, json=_body(status, video_url="https://oss.example/v.mp4?sig=1"))

    client, seen = _mock(handler)
    with client:
        task = client.submit("wan2.6-i2v", "https://img.example/a.jpg", prompt="hi", seed=3)
        client.cancel(task.task_id)
        done = client.wait(task.task_id)
        client.download(done, tmp_path / "v.mp4")
    submit, cancel, poll, download = seen
    assert submit.url.path == "/api/v1/services/aigc/video-generation/video-synthesis"
    assert submit.headers["x-dashscope-async"] == "enable"
    assert json.loads(submit.content) == {
        "model": "wan2.6-i2v",
        "input": {"img_url": "https://img.example/a.jpg", "prompt": "hi"},
        "parameters": {"seed": 3},
    }
    assert (cancel.method, cancel.url.path) == ("POST", "/api/v1/tasks/t1/cancel")
    assert (poll.method, poll.url.path) == ("GET", "/api/v1/tasks/t1")
    assert "x-dashscope-async" not in poll.headers
    assert "authorization" not in download.headers  # the key never goes to the video host
    assert (tmp_path / "v.mp4").read_bytes() == video


def test_wait_times_out_within_its_bound() -> None:
    client, seen = _mock(lambda r: httpx.Response(200, json=_body("RUNNING", progress=40)))
    start = time.monotonic()
    with client, pytest.raises(WaitTimeout) as info:
        client.wait("t1", timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 2.0
    assert info.value.task.status == "RUNNING" and info.value.task.progress == 40
    assert 3 <= len(seen) <= 40


def test_wait_rides_out_two_connection_errors_but_not_three() -> None:
    answers: list[Exception | None] = [httpx.ConnectError("down"), httpx.ConnectError("down")]

    def handler(request: httpx.Request) -> httpx.Response:
        if answers:
            error = answers.pop(0)
            if error is not None:
                raise error
        return httpx.Response(200, json=_body("SUCCEEDED", video_url="https://x/v.mp4"))

    client, _ = _mock(handler)
    with client:
        assert client.wait("t1", timeout=5).video_url == "https://x/v.mp4"
        answers.extend([httpx.ConnectError("down")] * 3)
        with pytest.raises(APIConnectionError, match="dashscope.example"):
            client.wait("t1", timeout=5)


def test_server_errors_are_typed_even_without_a_json_body() -> None:
    client, _ = _mock(lambda r: httpx.Response(502, text="<html>bad gateway</html>"))
    with client, pytest.raises(ServerError) as info:
        client.get("t1")
    assert info.value.status == 502 and info.value.request_id is None
    assert "HTTP502" in str(info.value) and "bad gateway" in str(info.value)


# -- media ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("BMP", "image/bmp"), ("WEBP", "image/webp")],
)
def test_images_become_data_uris_with_the_sniffed_mime(fmt: str, mime: str, tmp_path: Path) -> None:
    data = image_bytes(300, 300, fmt)
    path = tmp_path / "picture.bin"  # the extension is not trusted
    path.write_bytes(data)
    for value in (data, path, str(path)):
        uri = as_data_uri(value)
        head, _, payload = uri.partition(",")
        assert head == f"data:{mime};base64" and base64.b64decode(payload) == data


def test_urls_pass_through_and_bad_inputs_fail_locally(tmp_path: Path) -> None:
    for url in ("https://e/a.jpg", "http://e/a.png", "data:image/png;base64,AA==", "oss://b/k"):
        assert as_data_uri(url) == url
    with pytest.raises(InvalidInputError, match="not a JPEG, PNG, BMP or WEBP"):
        as_data_uri(b"GIF89a....")
    with pytest.raises(InvalidInputError, match="cannot read"):
        as_data_uri(tmp_path / "missing.jpg")
    wav = io.BytesIO(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    assert as_data_uri(wav.getvalue(), audio=True).startswith("data:audio/wav;base64,")
    assert as_data_uri(b"ID3\x04rest", audio=True).startswith("data:audio/mpeg;base64,")

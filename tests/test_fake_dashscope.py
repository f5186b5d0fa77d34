"""The fake DashScope upstream: the contract (section 2) it plays, and its scripted faults."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from stillmotion.testing.fake_dashscope import FakeConfig, FakeDashScopeServer, Fault
from tests.servers import wait_for_port

KEY = "sk-fake-test"
SUBMIT = "/services/aigc/video-generation/video-synthesis"
AUTH = {"Authorization": f"Bearer {KEY}"}
ASYNC = {**AUTH, "X-DashScope-Async": "enable"}


@pytest.fixture
def fake() -> Iterator[FakeDashScopeServer]:
    keys = {KEY: "ok", "sk-denied": "denied"}
    config = FakeConfig(keys=keys, pending_seconds=0.2, running_seconds=0.3)
    with FakeDashScopeServer(config) as server:
        yield server


@pytest.fixture
def http(fake: FakeDashScopeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, timeout=10) as client:
        yield client


def body(prompt: str = "a cat", model: str = "wan2.6-i2v-flash", **params: Any) -> dict[str, Any]:
    return {
        "model": model,
        "input": {
            "prompt": prompt,
            "img_url": "https://e.com/a.png",
            "extend_prompt": True,
            "function": "video-synthesis",
        },
        "parameters": params,
    }


def create(http: httpx.Client, **kwargs: Any) -> str:
    resp = http.post(SUBMIT, json=body(**kwargs), headers=ASYNC)
    assert resp.status_code == 200, resp.text
    assert resp.json()["output"]["task_status"] == "PENDING"
    return str(resp.json()["output"]["task_id"])


def test_submit_needs_async_header_and_a_known_key(http: httpx.Client) -> None:
    resp = http.post(SUBMIT, json=body(), headers=AUTH)
    assert (resp.status_code, resp.json()["code"]) == (403, "AccessDenied")
    assert "synchronous" in resp.json()["message"]
    cases = [
        ({}, 401, "No API-key provided."),
        ({"Authorization": "Bearer sk-nope"}, 401, "Invalid API-key provided."),
        ({"Authorization": "Bearer sk-denied"}, 403, "Access denied."),
    ]
    for headers, status, message in cases:
        resp = http.post(SUBMIT, json=body(), headers={**headers, "X-DashScope-Async": "enable"})
        assert resp.status_code == status
        assert set(resp.json()) == {"request_id", "code", "message"}
        assert resp.json()["message"] == message
        assert resp.headers["content-type"].startswith("application/json")
    resp = http.post(SUBMIT, json={"input": {}}, headers=ASYNC)
    assert resp.json()["code"] == "BadRequest.EmptyModel"


def test_status_progression_usage_and_result(http: httpx.Client, fake: FakeDashScopeServer) -> None:
    task_id = create(http, duration=3, resolution="720P", audio=True)
    seen = []
    for _ in range(100):
        out = http.get(f"/tasks/{task_id}/", headers=AUTH).json()  # the aio SDK's slash
        status = out["output"]["task_status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "SUCCEEDED":
            break
        time.sleep(0.02)
    assert seen == ["PENDING", "RUNNING", "SUCCEEDED"]
    output = out["output"]
    assert output["submit_time"] <= output["scheduled_time"] <= output["end_time"]
    assert output["orig_prompt"] == "a cat" and "actual_prompt" not in output  # wan2.6
    assert out["usage"] == {
        "duration": 3,
        "input_video_duration": 0,
        "output_video_duration": 3,
        "SR": 720,
        "video_count": 1,
        "audio": True,
    }
    assert output["video_url"].startswith(f"{fake.root_url}/results/{task_id}.mp4?Expires=")
    video = httpx.get(output["video_url"])
    assert (video.status_code, video.headers["content-type"]) == (200, "video/mp4")
    with av.open(io.BytesIO(video.content)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.frames == 90
        assert len(container.streams.audio) == 1
    tampered = output["video_url"].replace("Signature=", "Signature=0")
    assert httpx.get(tampered).status_code == 403


def test_wan25_usage_and_actual_prompt(http: httpx.Client, fake: FakeDashScopeServer) -> None:
    fake.state.config.running_seconds = 0
    fake.state.config.pending_seconds = 0
    task_id = create(
        http, model="wan2.5-i2v-preview", duration=10, resolution="480P", prompt_extend=True
    )
    out = http.get(f"/tasks/{task_id}", headers=AUTH).json()
    assert out["usage"] == {"duration": 10, "SR": 480, "video_count": 1}
    assert out["output"]["actual_prompt"].startswith("a cat")


def test_result_urls_and_tasks_expire(http: httpx.Client, fake: FakeDashScopeServer) -> None:
    fake.state.control({"pending_seconds": 0, "running_seconds": 0, "url_ttl": 0.2})
    task_id = create(http, prompt="short-lived [fake:expire=1.3]")
    url = http.get(f"/tasks/{task_id}", headers=AUTH).json()["output"]["video_url"]
    assert httpx.get(url).status_code == 200
    time.sleep(1.3)  # Expires is whole seconds, rounded up
    expired = httpx.get(url)
    assert (expired.status_code, expired.json()["code"]) == (403, "AccessDenied")
    out = http.get(f"/tasks/{task_id}", headers=AUTH).json()["output"]
    assert out == {"task_id": task_id, "task_status": "UNKNOWN"}
    unknown = http.get("/tasks/no-such-task", headers=AUTH).json()["output"]
    assert unknown["task_status"] == "UNKNOWN"


def test_cancel_only_pending(http: httpx.Client, fake: FakeDashScopeServer) -> None:
    pending = create(http, prompt="waits [fake:pending=30]")
    assert http.post(f"/tasks/{pending}/cancel", headers=AUTH).status_code == 200
    out = http.get(f"/tasks/{pending}", headers=AUTH).json()["output"]
    assert out["task_status"] == "CANCELED" and "end_time" in out
    running = create(http, prompt="runs [fake:pending=0] [fake:running=30]")
    refused = http.post(f"/tasks/{running}/cancel", headers=AUTH)
    assert (refused.status_code, refused.json()["code"]) == (400, "UnsupportedOperation")
    assert "PENDING" in refused.json()["message"]


def test_failed_tasks_by_prompt(http: httpx.Client, fake: FakeDashScopeServer) -> None:
    fake.state.control({"pending_seconds": 0, "running_seconds": 0})
    task_id = create(http, prompt="[fake:fail=DataInspectionFailed:Inappropriate content.]")
    resp = http.get(f"/tasks/{task_id}", headers=AUTH)
    assert resp.status_code == 200
    out = resp.json()["output"]
    assert (out["task_status"], out["code"]) == ("FAILED", "DataInspectionFailed")
    assert out["message"] == "Inappropriate content." and "usage" not in resp.json()


def test_list_filters_and_pages(http: httpx.Client, fake: FakeDashScopeServer) -> None:
    ids = [create(http) for _ in range(3)] + [create(http, model="wan2.6-i2v")]
    page = http.get(
        "/tasks", params={"model_name": "wan2.6-i2v-flash", "page_size": 2}, headers=AUTH
    ).json()
    assert (page["total"], page["total_page"], len(page["data"])) == (3, 2, 2)
    assert [i["task_id"] for i in page["data"]] == ids[2:0:-1]  # newest first
    item = page["data"][0]
    assert KEY not in str(item) and isinstance(item["gmt_create"], int)
    second = http.get(
        "/tasks/",
        params={"model_name": "wan2.6-i2v-flash", "page_size": 2, "page_no": 2},
        headers=AUTH,
    ).json()
    assert [i["task_id"] for i in second["data"]] == [ids[0]]
    by_id = http.get("/tasks", params={"task_id": ids[3]}, headers=AUTH).json()
    assert [i["model_name"] for i in by_id["data"]] == ["wan2.6-i2v"]
    old = http.get(
        "/tasks",
        params={"start_time": "20200101000000", "end_time": "20200101120000"},
        headers=AUTH,
    ).json()
    assert old["total"] == 0
    wide = http.get(
        "/tasks",
        params={"start_time": "20200101000000", "end_time": "20200103000000"},
        headers=AUTH,
    )
    assert (wide.status_code, wide.json()["code"]) == (400, "InvalidParameter")


def test_scripted_faults(http: httpx.Client, fake: FakeDashScopeServer) -> None:
    fake.state.add_fault(Fault("submit", status=429, retry_after=2, times=1))
    throttled = http.post(SUBMIT, json=body(), headers=ASYNC)
    assert (throttled.status_code, throttled.headers["retry-after"]) == (429, "2")
    assert throttled.json()["code"] == "Throttling.RateQuota"
    task_id = create(http)
    stats = httpx.post(
        f"{fake.root_url}/_control",
        json={"faults": [{"op": "get", "status": 500, "times": 2}, {"op": "get", "delay": 0.3}]},
    ).json()
    assert [f["op"] for f in stats["faults"]] == ["get", "get"]
    assert [http.get(f"/tasks/{task_id}", headers=AUTH).status_code for _ in range(2)] == [500] * 2
    start = time.monotonic()
    assert http.get(f"/tasks/{task_id}", headers=AUTH).status_code == 200
    assert time.monotonic() - start >= 0.3
    errored = http.post(SUBMIT, json=body(prompt="[fake:error=503]"), headers=ASYNC)
    assert errored.status_code == 503
    stats = httpx.get(f"{fake.root_url}/_control").json()
    assert stats["submits"] == 1 and stats["requests"]["submit"] == 3
    assert stats["faults"] == []


def test_dropped_submit_creates_the_task(http: httpx.Client, fake: FakeDashScopeServer) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        http.post(SUBMIT, json=body(prompt="[fake:drop]"), headers=ASYNC)
    fake.state.add_fault(Fault("submit", drop=True))
    with pytest.raises(httpx.RemoteProtocolError):
        http.post(SUBMIT, json=body(), headers=ASYNC)
    assert len(fake.state.tasks) == 2 and len(fake.state.submits) == 2
    assert create(http)  # the next one is answered


def test_submit_id_is_idempotent(http: httpx.Client, fake: FakeDashScopeServer) -> None:
    headers = {**ASYNC, "X-Stillmotion-Submit-Id": "abc"}
    first = http.post(SUBMIT, json=body(), headers=headers).json()["output"]["task_id"]
    again = http.post(SUBMIT, json=body(), headers=headers).json()["output"]["task_id"]
    assert first == again
    assert len(fake.state.tasks) == 1 and len(fake.state.submits) == 2


def test_control_keys_and_reset(http: httpx.Client, fake: FakeDashScopeServer) -> None:
    create(http)
    control = f"{fake.root_url}/_control"
    assert httpx.post(control, json={"keys": {KEY: "denied"}}).status_code == 200
    assert http.post(SUBMIT, json=body(), headers=ASYNC).status_code == 403
    assert httpx.post(control, json={"keys": {KEY: "bogus"}}).status_code == 400
    stats = httpx.post(control, json={"reset": True, "keys": {KEY: "ok"}}).json()
    assert stats["submits"] == 0 and stats["tasks"] == 0
    assert create(http)


def test_cli_command_serves_the_fake(tmp_path: Path) -> None:
    """`stillmotion fake-dashscope --port 0` binds a free port itself, writes it to the port
    file once it accepts connections, and names it on stderr."""
    port_file, log = tmp_path / "fake.port", tmp_path / "fake.log"
    cmd = [
        sys.executable,
        "-m",
        "stillmotion",
        "fake-dashscope",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--key",
        "sk-cli",
        "--pending",
        "0",
        "--running",
        "0",
    ]
    with log.open("wb") as out:  # the child holds its own copy
        proc = subprocess.Popen(cmd, stderr=out, env={**os.environ, "NO_COLOR": "1"})
    try:
        port = wait_for_port(proc, port_file, log.read_text, "fake-dashscope")
        base = f"http://127.0.0.1:{port}/api/v1"
        resp = httpx.post(  # accepting connections already: no retry
            base + SUBMIT,
            json=body(),
            headers={"Authorization": "Bearer sk-cli", "X-DashScope-Async": "enable"},
        )
        assert resp.status_code == 200, resp.text
        task_id = resp.json()["output"]["task_id"]
        out = httpx.get(f"{base}/tasks/{task_id}", headers={"Authorization": "Bearer sk-cli"})
        assert out.json()["output"]["task_status"] == "SUCCEEDED"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert log.read_text().splitlines()[0] == f"fake DashScope on {base} (keys: 1)"


def test_cli_command_on_a_taken_port_exits_3_and_says_why(tmp_path: Path) -> None:
    port_file, log = tmp_path / "fake.port", tmp_path / "fake.log"
    with socket.socket() as taken:  # held (and listening) for the whole test: no race
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "stillmotion", "fake-dashscope", "--port", str(port)]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*cmd, "--port-file", str(port_file)],
                stderr=out,
                env={**os.environ, "NO_COLOR": "1"},
            )
        try:
            with pytest.raises(AssertionError) as failed:
                wait_for_port(proc, port_file, log.read_text, "fake-dashscope")
        finally:
            proc.wait(timeout=60)
    assert proc.returncode == 3 and not port_file.exists()
    message = str(failed.value)
    assert message.startswith("fake-dashscope exited with status 3 before it served:")
    assert f"error: cannot listen on 127.0.0.1:{port}: " in message

"""End to end: `stillmotion serve` as a subprocess, driven over loopback HTTP with requests.

Includes the crash test: SIGKILL the server while it renders, start it again, and the task
still completes (its lease expires and it is claimed again).
"""

from __future__ import annotations

import io
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
import requests

from stillmotion.testing.images import data_uri, image_bytes
from stillmotion.testing.media_server import MediaServer
from tests.servers import Server

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data")
    try:
        yield srv
    finally:
        if srv.proc is not None:
            srv.kill()


def _poll(server: Server, task_id: str, key: str, until: set[str], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(
            f"{server.base}/task/{task_id}", headers={"Authorization": f"Bearer {key}"}, timeout=10
        ).json()
        if body["output"]["task_status"] in until:
            return body
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} never reached {until}")


def _submit(server: Server, key: str, img_url: str, **params: Any) -> str:
    body = {
        "model": "wan2.6-i2v-flash",
        "input": {"prompt": "镜头缓慢推近, a quiet harbour at dawn", "img_url": img_url},
        "parameters": {"resolution": "720P", "duration": 3, "audio": True, **params},
    }
    resp = requests.post(
        f"{server.base}/task/bailian/image2video",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["output"]["task_status"] == "PENDING"
    return str(resp.json()["output"]["task_id"])


def _check_video(url: str, size: tuple[int, int], frames: int) -> None:
    resp = requests.get(url, timeout=30)
    assert resp.status_code == 200
    with av.open(io.BytesIO(resp.content)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264"
        assert (video.codec_context.width, video.codec_context.height) == size
        assert video.codec_context.pix_fmt == "yuv420p"
        assert round(float(video.average_rate or 0)) == 30
        assert sum(1 for _ in container.decode(video)) == frames
        assert container.streams.audio[0].codec_context.name == "aac"


def test_serve_base64_and_loopback_url(server: Server) -> None:
    key = server.cli("keys", "create", "--name", "e2e").strip()
    assert key.startswith("sm-") and "\n" not in key
    server.start()
    task_id = _submit(server, key, data_uri(750, 1000, "JPEG"))
    body = _poll(server, task_id, key, {"SUCCEEDED", "FAILED"})
    assert body["output"]["task_status"] == "SUCCEEDED", body
    assert body["output"]["video_url"].startswith(server.base + "/files/")
    _check_video(body["output"]["video_url"], (816, 1104), 90)
    with MediaServer({"/f.webp": (image_bytes(640, 360, "WEBP"), "image/webp")}) as media:
        task_id = _submit(server, key, media.url("/f.webp"))
        body = _poll(server, task_id, key, {"SUCCEEDED", "FAILED"})
    assert body["output"]["task_status"] == "SUCCEEDED", body
    _check_video(body["output"]["video_url"], (1280, 720), 90)
    listed = server.cli("keys", "list")
    assert "e2e" in listed and key not in listed


def test_sigkill_while_rendering_then_restart_completes(server: Server) -> None:
    key = server.cli("keys", "create", "--name", "crash").strip()
    server.start()
    task_id = _submit(server, key, data_uri(1920, 1080, "JPEG"), resolution="1080P", duration=15)
    _poll(server, task_id, key, {"RUNNING"}, timeout=60)
    time.sleep(0.5)
    server.kill(signal.SIGKILL)
    server.start()
    body = _poll(server, task_id, key, {"SUCCEEDED", "FAILED"}, timeout=240)
    assert body["output"]["task_status"] == "SUCCEEDED", body
    _check_video(body["output"]["video_url"], (1920, 1072), 450)


def test_sigterm_hands_the_running_task_back_at_once(server: Server) -> None:
    key = server.cli("keys", "create", "--name", "term").strip()
    server.env["STILLMOTION_LEASE_SECONDS"] = "300"  # a lost lease would take 5 minutes
    server.start()
    task_id = _submit(server, key, data_uri(1920, 1080, "JPEG"), resolution="1080P", duration=15)
    _poll(server, task_id, key, {"RUNNING"}, timeout=60)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)  # the service only, as a process manager would
    server.proc.wait(timeout=60)
    server.proc = None
    server.start()
    # well inside the 300 s lease: the stopped worker handed the task back
    body = _poll(server, task_id, key, {"SUCCEEDED", "FAILED"}, timeout=150)
    assert body["output"]["task_status"] == "SUCCEEDED", body
    _check_video(body["output"]["video_url"], (1920, 1072), 450)
    db = Path(server.env["STILLMOTION_DATA_DIR"]) / "stillmotion.db"
    with sqlite3.connect(db) as conn:
        kinds = [
            k
            for (k,) in conn.execute(
                "SELECT kind FROM task_events WHERE task_id = ? ORDER BY id", (task_id,)
            )
        ]
    assert kinds == ["created", "claimed", "released", "claimed", "succeeded"]

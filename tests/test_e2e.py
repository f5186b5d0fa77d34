"""End to end: `stillmotion serve` as a subprocess, driven over loopback HTTP with requests.

Includes the crash tests: SIGKILL the server (and its render processes) while it renders,
right after a submit and between tasks, start it again, and every task completes exactly
once: the restarted worker finds its predecessor's process gone and reclaims its tasks at
once, long before their leases expire.
"""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
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
    server.start()
    key = server.cli("keys", "create", "--name", "e2e").strip()
    assert key.startswith("sm-") and "\n" not in key
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


def _events(server: Server, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    db = Path(server.env["STILLMOTION_DATA_DIR"]) / "stillmotion.db"
    with closing(sqlite3.connect(db)) as conn:  # `with conn` alone commits, never closes
        rows = conn.execute(
            "SELECT kind, detail FROM task_events WHERE task_id = ? ORDER BY id", (task_id,)
        ).fetchall()
    return [(kind, json.loads(detail) if detail else {}) for kind, detail in rows]


def _ran_once(events: list[tuple[str, dict[str, Any]]]) -> None:
    """One success; every claim after the first follows the reclaim of the one before it,
    with the attempt counted (a dead worker's attempt is not refunded)."""
    kinds = [kind for kind, _ in events]
    assert kinds.count("succeeded") == 1 and kinds[-1] == "succeeded", kinds
    claims = [detail["attempt"] for kind, detail in events if kind == "claimed"]
    assert claims == list(range(1, len(claims) + 1)), events
    assert kinds.count("reclaimed") == len(claims) - 1, kinds
    for before, after in zip(kinds, kinds[1:], strict=False):
        assert not (before == "claimed" and after == "claimed"), kinds  # never two at once


def test_sigkill_while_rendering_then_restart_completes(server: Server) -> None:
    server.env["STILLMOTION_LEASE_SECONDS"] = "300"  # only a reclaim can bring it back soon
    server.start()
    key = server.cli("keys", "create", "--name", "crash").strip()
    task_id = _submit(server, key, data_uri(1920, 1080, "JPEG"), resolution="1080P", duration=15)
    _poll(server, task_id, key, {"RUNNING"}, timeout=60)
    time.sleep(0.5)
    server.kill(signal.SIGKILL)
    server.start()
    body = _poll(server, task_id, key, {"SUCCEEDED", "FAILED"}, timeout=240)
    assert body["output"]["task_status"] == "SUCCEEDED", body
    _check_video(body["output"]["video_url"], (1920, 1072), 450)
    events = _events(server, task_id)
    # the render really was interrupted, and the restarted worker took the task back
    assert [k for k, _ in events] == ["created", "claimed", "reclaimed", "claimed", "succeeded"]
    assert "is gone" in events[2][1]["reason"]
    _ran_once(events)


def test_sigterm_hands_the_running_task_back_at_once(server: Server) -> None:
    server.env["STILLMOTION_LEASE_SECONDS"] = "300"  # a lost lease would take 5 minutes
    server.log = Path(server.env["STILLMOTION_DATA_DIR"]).parent / "serve.log"
    server.env["STILLMOTION_LOG_LEVEL"] = "info"
    server.start()
    key = server.cli("keys", "create", "--name", "term").strip()
    task_id = _submit(server, key, data_uri(1920, 1080, "JPEG"), resolution="1080P", duration=15)
    _poll(server, task_id, key, {"RUNNING"}, timeout=60)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)  # the service only, as a process manager would
    server.proc.wait(timeout=60)
    server.proc = None
    stopped = server.log.read_text()
    assert "RUNNING -> PENDING" in stopped  # handed back, and logged
    for noise in ("Traceback", "never retrieved", "Error"):  # a clean exit
        assert noise not in stopped, stopped
    server.start()
    # well inside the 300 s lease: the stopped worker handed the task back
    body = _poll(server, task_id, key, {"SUCCEEDED", "FAILED"}, timeout=150)
    assert body["output"]["task_status"] == "SUCCEEDED", body
    _check_video(body["output"]["video_url"], (1920, 1072), 450)
    db = Path(server.env["STILLMOTION_DATA_DIR"]) / "stillmotion.db"
    with closing(sqlite3.connect(db)) as conn:  # `with conn` alone commits, never closes
        kinds = [
            k
            for (k,) in conn.execute(
                "SELECT kind FROM task_events WHERE task_id = ? ORDER BY id", (task_id,)
            )
        ]
    assert kinds == ["created", "claimed", "released", "claimed", "succeeded"]


def _wait(what: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _statuses(server: Server, key: str, ids: list[str]) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    return [
        requests.get(f"{server.base}/task/{i}", headers=headers, timeout=10).json()["output"][
            "task_status"
        ]
        for i in ids
    ]


def test_sigkill_loop_loses_nothing_and_runs_nothing_twice(server: Server) -> None:
    """Three SIGKILLs of the whole process group at different moments: during a render,
    right after a submit, and between tasks. With 300 s leases only the reclaim by the
    restarted worker can bring interrupted tasks back within the test's time."""
    server.env["STILLMOTION_LEASE_SECONDS"] = "300"
    server.start()
    key = server.cli("keys", "create", "--name", "loop").strip()

    def submit() -> str:
        return _submit(server, key, data_uri(640, 360, "JPEG"), duration=3)

    ids = [submit() for _ in range(3)]
    _poll(server, ids[0], key, {"RUNNING"}, timeout=60)  # 1: during a render
    server.kill(signal.SIGKILL)
    server.start()
    # claimed again well inside the 300 s lease: the restarted worker reclaimed it
    _wait(lambda: [k for k, _ in _events(server, ids[0])].count("claimed") == 2, 60)
    ids.append(submit())  # 2: right after a submit
    server.kill(signal.SIGKILL)
    server.start()
    _wait(lambda: all(s == "SUCCEEDED" for s in _statuses(server, key, ids)), 240)
    server.kill(signal.SIGKILL)  # 3: between tasks (idle)
    server.start()
    ids.append(submit())
    _wait(lambda: all(s in ("SUCCEEDED", "FAILED") for s in _statuses(server, key, ids)), 240)

    interrupted = 0
    for task_id in ids:
        body = _poll(server, task_id, key, {"SUCCEEDED"}, timeout=10)
        _check_video(body["output"]["video_url"], (1280, 720), 90)
        events = _events(server, task_id)
        _ran_once(events)
        interrupted += sum(1 for kind, _ in events if kind == "reclaimed")
    assert interrupted >= 1  # the first kill hit a render
    work = Path(server.env["STILLMOTION_DATA_DIR"]) / "work"
    assert len(list(work.iterdir())) <= 1  # the dead workers' directories are gone

"""Operations (docs/operations.md): ``GET /readyz``, draining on SIGTERM, JSON log lines."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from stillmotion.api.app import begin_draining, create_app
from stillmotion.config import Settings
from stillmotion.runtime import Runtime, open_runtime
from stillmotion.tasks.store import TaskStore
from stillmotion.testing.images import data_uri
from tests.conftest import seed_body
from tests.servers import Server


@pytest.fixture
async def app_client(runtime: Runtime) -> Any:
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=runtime.settings.base_url) as c:
        yield app, c


async def test_readyz_is_ready(app_client: Any) -> None:
    _, client = app_client
    resp = await client.get("/readyz")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "ready", "database": "ok", "storage": "ok"}


async def test_readyz_is_503_while_draining_and_the_worker_stops_claiming(
    runtime: Runtime, app_client: Any, auth: dict[str, str]
) -> None:
    app, client = app_client
    worker = await runtime.start_worker()
    begin_draining(app)  # what `serve` does on SIGTERM (api/draining.py), and the lifespan's end
    begin_draining(app)  # idempotent
    resp = await client.get("/readyz")
    assert resp.status_code == 503, resp.text
    assert resp.json() == {"status": "draining"}
    assert (await client.get("/healthz")).status_code == 200  # alive, still serving
    sub = await client.post("/task/bailian/image2video", json=seed_body(), headers=auth)
    assert sub.status_code == 200, sub.text  # requests are still answered
    await asyncio.sleep(0.5)  # many poll intervals (0.05 s): a claiming worker would have taken it
    row = await runtime.store.get_task(sub.json()["output"]["task_id"])
    assert row is not None and row.status.value == "PENDING"
    assert worker.describe()["active"] == 0


async def test_readyz_asks_the_storage_when_it_can_answer(
    runtime: Runtime, app_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = app_client
    calls: list[str] = []

    async def ready() -> None:
        calls.append("ready")

    monkeypatch.setattr(runtime.storage, "ready", ready, raising=False)
    assert (await client.get("/readyz")).status_code == 200 and calls == ["ready"]

    async def down() -> None:
        raise OSError("bucket unreachable")

    monkeypatch.setattr(runtime.storage, "ready", down, raising=False)
    resp = await client.get("/readyz")
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert body["status"] == "error" and body["database"] == "ok"
    assert body["storage"] == "error: bucket unreachable"


async def test_readyz_is_503_when_the_database_does_not_answer(tmp_path: Path) -> None:
    runtime = await open_runtime(Settings(data_dir=tmp_path / "data", workers=0))
    alive = runtime.store
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = await TaskStore.open(f"postgresql://nobody@127.0.0.1:{port}/none")
    try:
        runtime.store = dead
        transport = httpx.ASGITransport(app=create_app(runtime=runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            resp = await client.get("/readyz")
        assert resp.status_code == 503, resp.text
        body = resp.json()
        assert body["status"] == "error" and body["database"].startswith("error: ")
        assert len(body["database"]) <= 207 and body["storage"] == "ok"
    finally:
        runtime.store = alive
        await dead.close()
        await runtime.close()


# -- `stillmotion serve` as a process ---------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data")
    srv.env["STILLMOTION_LOG_LEVEL"] = "info"
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.kill()


def _stop(server: Server, timeout: float = 60) -> int:
    """SIGTERM to the service only (as a process manager would); its exit status."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=timeout)
    server.proc = None
    return code


@pytest.mark.e2e
def test_json_log_lines_carry_ids_and_never_a_secret(server: Server) -> None:
    server.env["STILLMOTION_LOG_FORMAT"] = "json"
    key = server.cli("keys", "create", "--name", "json").strip()
    server.start()
    auth = {"Authorization": f"Bearer {key}"}
    body = seed_body(data_uri(320, 240, "JPEG"))
    sub = requests.post(
        f"{server.base}/task/bailian/image2video", json=body, headers=auth, timeout=30
    )
    assert sub.status_code == 200, sub.text
    task_id = sub.json()["output"]["task_id"]
    request_id = sub.json()["request_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = requests.get(f"{server.base}/task/{task_id}", headers=auth, timeout=30).json()
        if got["output"]["task_status"] in ("SUCCEEDED", "FAILED"):
            break
        time.sleep(0.2)
    assert got["output"]["task_status"] == "SUCCEEDED", got
    signed = f"{server.base}/files/videos/x.mp4?Expires=1&Signature=SIGSECRET"
    assert requests.get(signed, timeout=10).status_code == 403
    assert (
        requests.get(
            f"{server.base}/task/{task_id}",
            headers={"Authorization": "Bearer sk-nope-123"},
            timeout=10,
        ).status_code
        == 401
    )
    _stop(server)

    text = server.output()
    assert key not in text and "SIGSECRET" not in text and "sk-nope-123" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert line["time"].endswith("Z") and line["level"] in ("INFO", "WARNING", "ERROR")
    banners = [
        x for x in lines if x["message"].startswith("stillmotion ") and "serving on" in x["message"]
    ]
    assert len(banners) == 1, lines
    access = [x for x in lines if x["logger"] == "stillmotion.access"]
    (submit,) = [x for x in access if x["message"].startswith("POST /task/bailian/image2video 200")]
    assert submit["request_id"] == request_id and submit["key_id"]
    assert not submit["key_id"].startswith("sk-")
    transitions = [x for x in lines if x["logger"] == "stillmotion.tasks"]
    assert {x.get("task_id") for x in transitions} == {task_id}, transitions
    assert any("RUNNING -> SUCCEEDED" in x["message"] for x in transitions)


@pytest.mark.e2e
def test_sigterm_drains_then_stops(server: Server) -> None:
    server.env["STILLMOTION_DRAIN_SECONDS"] = "3"
    key = server.cli("keys", "create", "--name", "drain").strip()
    server.start()
    base = server.base
    assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
    # a request in flight when the signal comes: its head and half its body sent
    body = json.dumps(seed_body(data_uri(320, 240, "JPEG"))).encode()
    head = (
        f"POST /task/bailian/image2video HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    conn = socket.create_connection(("127.0.0.1", server.port or 0), timeout=30)
    conn.sendall(head + body[: len(body) // 2])
    time.sleep(0.3)
    assert server.proc is not None
    proc = server.proc
    signaled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    ready = requests.get(f"{base}/readyz", timeout=10)  # still serving, but not ready
    assert ready.status_code == 503 and ready.json() == {"status": "draining"}
    assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
    assert proc.poll() is None
    # once the drain period is over the port closes, while the request in flight waits
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", server.port or 0), timeout=1).close()
        except OSError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the port did not close after the drain period")
    assert time.monotonic() - signaled >= 3  # it served the drain period out
    assert proc.poll() is None  # it waits for the request in flight
    conn.sendall(body[len(body) // 2 :])  # which completes
    answer = _read_response(conn)
    conn.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    proc.wait(timeout=60)
    server.proc = None
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/readyz", timeout=5)
    log = server.output()
    assert "draining" in log and "Traceback" not in log


def _read_response(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


@pytest.mark.e2e
def test_sigterm_without_a_drain_period_stops_promptly(server: Server) -> None:
    server.env["STILLMOTION_WORKERS"] = "0"
    server.start()
    started = time.monotonic()
    _stop(server)
    assert time.monotonic() - started < 15
    assert "Traceback" not in server.output()

"""Completion webhooks (docs/webhooks.md), on SQLite and PostgreSQL: the outbox row written
in every terminal transition's transaction, delivery to a real HTTP receiver on loopback that
fails the first attempts (Standard Webhooks signature checked here), tenancy, the SSRF guard,
the max age, the submit header's validation, the CLI and the admin API."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from stillmotion.api.app import create_app
from stillmotion.cli import app as cli_app
from stillmotion.config import Settings
from stillmotion.metrics import REGISTRY
from stillmotion.runtime import Runtime, open_runtime
from stillmotion.tasks.keys import create_key
from stillmotion.tasks.store import TaskRow, TaskStore
from stillmotion.tasks.webhooks import delivery_id, enqueue
from stillmotion.worker.webhooks import WebhookConfig, WebhookSender, retry_delay, sign
from tests.conftest import poll, seed_body
from tests.store_fixtures import BACKENDS, FakeClock, database_url

SUBMIT = "/task/bailian/image2video"
REMOTE_IMG = "https://example.com/frames/cat.png"  # never fetched
CALLBACK = "X-Stillmotion-Callback"


# -- a real receiver on loopback -----------------------------------------------------------


class Receiver:
    """A ThreadingHTTPServer that records every POST and answers ``statuses`` in turn (the
    last one from then on)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with owner.lock:
                    owner.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    n = len(owner.requests)
                    status = owner.statuses[min(n, len(owner.statuses)) - 1]
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    async def wait_for(self, count: int, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.requests) < count:
            assert loop.time() < deadline, f"{len(self.requests)} of {count} requests came"
            await asyncio.sleep(0.02)


@contextmanager
def receiving(statuses: list[int]) -> Iterator[Receiver]:
    receiver = Receiver(statuses)
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(5)


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check (docs/webhooks.md): HMAC-SHA256 of ``id.timestamp.body``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in headers["webhook-signature"].split() if "," in s]
    return any(hmac.compare_digest(expected, g) for g in given)


# -- runtimes and stores -------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
async def rt(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Runtime]:
    """A runtime on each database, loopback allowed, tiny webhook backoff; no worker yet."""
    async with database_url(request.param, tmp_path) as url:
        settings = Settings(
            data_dir=tmp_path / "data", database_url=url, workers=1, lease_seconds=5,
            poll_interval=0.05, allow_private_urls=True, key_cache_seconds=0,
            webhook_backoff_seconds=0.05,
        )  # fmt: skip
        runtime = await open_runtime(settings)
        try:
            yield runtime
        finally:
            await runtime.close()


@pytest.fixture
async def api(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(runtime=rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def new_key(rt: Runtime, name: str, *, admin: bool = False) -> tuple[str, dict[str, str]]:
    account_id = await rt.store.accounts.create(name, 0)
    key = await create_key(rt.store, f"{name}-key", account_id=account_id, is_admin=admin)
    return account_id, {"Authorization": f"Bearer {key.key}"}


async def deliveries_of(rt: Runtime, task_id: str) -> list[dict[str, Any]]:
    return await rt.store.webhooks.deliveries(task_id=task_id)


async def settled(store: TaskStore, task_id: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The task's deliveries once none is pending."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await store.webhooks.deliveries(task_id=task_id)
        if found and all(d["status"] != "pending" for d in found):
            return found
        assert loop.time() < deadline, found
        await asyncio.sleep(0.05)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[TaskStore]:
    async with database_url(request.param, tmp_path) as url:
        s = await TaskStore.open(url, clock=clock)
        try:
            await s.upgrade()
            yield s
        finally:
            await s.close()


async def new_task(store: TaskStore, account_id: str, callback: str | None = None) -> TaskRow:
    return await store.create_task(
        task_id=str(uuid.uuid4()), key_id="key-a", model="wan2.6-i2v", engine="motion",
        request={"prompt": "a cat"}, max_attempts=1, account_id=account_id,
        callback_url=callback,
    )  # fmt: skip


def plain_render(row: TaskRow, rid: str) -> dict[str, Any]:
    return {"request_id": rid, "output": {"task_id": row.id, "task_status": row.status.value}}


# -- delivery end to end -------------------------------------------------------------------


async def test_callback_header_delivers_the_task_body_signed_after_two_failures(
    rt: Runtime, api: httpx.AsyncClient
) -> None:
    account_id, auth = await new_key(rt, "acme")
    before = {o: _delivery_count(o) for o in ("delivered", "failed")}
    await rt.start_worker()
    with receiving([500, 500, 200]) as receiver:
        resp = await api.post(SUBMIT, json=seed_body(), headers={**auth, CALLBACK: receiver.url})
        assert resp.status_code == 200, resp.text
        task_id = resp.json()["output"]["task_id"]
        polled = await poll(api, task_id, auth)
        assert polled["output"]["task_status"] == "SUCCEEDED"
        await receiver.wait_for(3)
        (delivery,) = await settled(rt.store, task_id)
        await asyncio.sleep(0.2)  # nothing more comes once delivered
        assert len(receiver.requests) == 3
    secret = await rt.store.webhooks.callback_secret(account_id)
    ids = {headers["webhook-id"] for headers, _ in receiver.requests}
    assert ids == {delivery_id(task_id, None)} == {delivery["id"]}
    for headers, body in receiver.requests:
        assert verify(secret, headers, body)
        assert headers["content-type"] == "application/json"
        assert abs(int(headers["webhook-timestamp"]) - rt.store.now()) < 60
    _, body = receiver.requests[-1]
    sent = json.loads(body)
    got = (await api.get(f"/task/{task_id}", headers=auth)).json()
    assert sent["request_id"] == delivery["id"]
    assert sent["output"] == got["output"] and sent["usage"] == got["usage"]
    assert delivery["status"] == "delivered" and delivery["attempt_count"] == 3
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    assert [a["error"] for a in delivery["attempts"]] == ["HTTP 500", "HTTP 500", None]
    assert all(a["duration_ms"] >= 0 for a in delivery["attempts"])
    # and /metrics counts them: two failed attempts, one delivered
    after = {o: _delivery_count(o) for o in before}
    assert {o: after[o] - before[o] for o in before} == {"delivered": 1, "failed": 2}


def _delivery_count(outcome: str) -> float:
    value = REGISTRY.get_sample_value("stillmotion_webhook_deliveries_total", {"outcome": outcome})
    return value or 0.0


async def test_an_account_endpoint_gets_failed_and_canceled_tasks_and_no_one_elses(
    rt: Runtime, api: httpx.AsyncClient
) -> None:
    acme, auth = await new_key(rt, "acme")
    other, other_auth = await new_key(rt, "other")
    with receiving([200]) as mine, receiving([200]) as theirs:
        endpoint, secret = await rt.store.webhooks.add_endpoint(acme, mine.url)
        await rt.store.webhooks.add_endpoint(other, theirs.url)
        canceled = (await api.post(SUBMIT, json=seed_body(REMOTE_IMG), headers=auth)).json()
        canceled_id = canceled["output"]["task_id"]
        assert (await api.post(f"/task/{canceled_id}/cancel", headers=auth)).status_code == 200
        # written in the cancel's transaction: there before any worker runs
        (pending,) = await deliveries_of(rt, canceled_id)
        assert pending["status"] == "pending" and pending["endpoint_id"] == endpoint.id
        await rt.start_worker()
        bad = seed_body("http://127.0.0.1:1/frame.png")  # refused connection: FAILED
        failed_id = (await api.post(SUBMIT, json=bad, headers=auth)).json()["output"]["task_id"]
        assert (await poll(api, failed_id, auth))["output"]["task_status"] == "FAILED"
        await mine.wait_for(2)
        await settled(rt.store, failed_id)
        await asyncio.sleep(0.2)
        assert theirs.requests == [] and len(mine.requests) == 2
    statuses = {}
    for headers, body in mine.requests:
        assert verify(secret, headers, body)
        output = json.loads(body)["output"]
        statuses[output["task_id"]] = output["task_status"]
    assert statuses == {canceled_id: "CANCELED", failed_id: "FAILED"}
    assert await rt.store.webhooks.deliveries(account_id=other) == []
    assert not await rt.store.webhooks.deliveries(task_id=failed_id, account_id=other)


# -- the outbox is written by the terminal transition --------------------------------------


async def test_every_terminal_transition_writes_one_delivery_per_endpoint(
    store: TaskStore, clock: FakeClock
) -> None:
    account = await store.accounts.create("acme", 0)
    endpoint, _ = await store.webhooks.add_endpoint(account, "https://hooks.example.com/a")
    removed, _ = await store.webhooks.add_endpoint(account, "https://hooks.example.com/b")
    assert await store.webhooks.remove_endpoint(removed.id)
    assert [e.id for e in await store.webhooks.endpoints(account)] == [endpoint.id]
    cb = "https://client.example.com/done"

    async def ends(task: TaskRow) -> set[str | None]:
        return {d["endpoint_id"] for d in await store.webhooks.deliveries(task_id=task.id)}

    # finish_failure, then a duplicate finish: one row per endpoint, no more
    t1 = await new_task(store, account, cb)
    assert (await store.claim("w#1", 30)) is not None
    assert await store.finish_failure(t1.id, "w#1", "InvalidParameter", "bad")
    assert not await store.finish_failure(t1.id, "w#1", "InvalidParameter", "bad")
    rows = await store.webhooks.deliveries(task_id=t1.id)
    assert sorted(d["id"] for d in rows) == sorted(
        [delivery_id(t1.id, endpoint.id), delivery_id(t1.id, None)]
    )
    async with store._write.begin() as conn:  # the outbox write again: nothing more
        await enqueue(conn, [t1.id, t1.id], clock.now)
    assert len(await store.webhooks.deliveries(task_id=t1.id)) == 2
    assert {(d["status"], d["attempt_count"], d["url"]) for d in rows} == {
        ("pending", 0, "https://hooks.example.com/a"), ("pending", 0, cb)
    }  # fmt: skip
    # finish_success, finish_canceled, cancel_pending, retry_later's last attempt, the reaper
    t2 = await new_task(store, account)
    await store.claim("w#2", 30)
    assert await store.finish_success(t2.id, "w#2", {"video_key": "v", "fps": 30})
    t3 = await new_task(store, account)
    await store.claim("w#3", 30)
    assert await store.finish_canceled(t3.id, "w#3")
    t4 = await new_task(store, account)
    assert await store.cancel_pending(t4.id, "key-a") is not None
    t5 = await new_task(store, account)
    await store.claim("w#5", 30)
    assert await store.retry_later(t5.id, "w#5", 1.0, "InternalError", "again")
    t6 = await new_task(store, account)
    await store.claim("w#6", 5)
    clock.advance(10)
    assert await store.reap_expired() == 1
    for task in (t2, t3, t4, t5, t6):
        assert await ends(task) == {endpoint.id}, task.id
        assert (await store.get_task(task.id)).status.value in (  # type: ignore[union-attr]
            "SUCCEEDED", "CANCELED", "FAILED"
        )  # fmt: skip


async def test_a_dead_workers_last_attempt_writes_its_delivery(
    store: TaskStore, clock: FakeClock
) -> None:
    from stillmotion.tasks.workers import WorkerRow

    account = await store.accounts.create("acme", 0)
    endpoint, _ = await store.webhooks.add_endpoint(account, "https://hooks.example.com/a")
    task = await new_task(store, account)
    dead = WorkerRow("dead", "h", "m", 1, None, ["motion"], "0", clock.now, clock.now)
    await store.workers.register(dead)
    assert await store.claim("dead#1", 30) is not None
    (row,) = await store.workers.registered()
    done = await store.workers.reclaim(row, "gone")
    assert done is not None and done.failed == [task.id]
    (delivery,) = await store.webhooks.deliveries(task_id=task.id)
    assert delivery["endpoint_id"] == endpoint.id


# -- the sender: SSRF guard, max age -------------------------------------------------------


async def test_a_loopback_callback_is_refused_without_a_request(
    store: TaskStore, clock: FakeClock
) -> None:
    account = await store.accounts.create("acme", 0)
    refused = _delivery_count("refused")
    with receiving([200]) as receiver:
        task = await new_task(store, account, receiver.url)
        assert await store.cancel_pending(task.id, "key-a") is not None
        sender = WebhookSender(store, plain_render, WebhookConfig(), "s1")
        try:
            assert await sender.deliver_due() == 1
            assert await sender.deliver_due() == 0
        finally:
            await sender.aclose()
        assert receiver.requests == []
    assert (_delivery_count("refused") - refused) == 1
    (delivery,) = await store.webhooks.deliveries(task_id=task.id)
    assert delivery["status"] == "failed" and delivery["attempt_count"] == 1
    assert "non-public address" in delivery["last_error"]
    assert "STILLMOTION_ALLOW_PRIVATE_URLS" in delivery["last_error"]
    assert delivery["attempts"][0]["status_code"] is None


async def test_retries_back_off_and_stop_after_the_max_age(
    store: TaskStore, clock: FakeClock
) -> None:
    account = await store.accounts.create("acme", 0)
    config = WebhookConfig(backoff=10, max_age=100, allow_private=True)
    assert [retry_delay(10, n) for n in (1, 2, 3)] == [10, 60, 240]
    with receiving([503]) as receiver:
        _, secret = await store.webhooks.add_endpoint(account, receiver.url)
        task = await new_task(store, account)
        assert await store.cancel_pending(task.id, "key-a") is not None
        sender = WebhookSender(store, plain_render, config, "s1")
        try:
            assert await sender.deliver_due() == 1  # t0: fails, next at t0 + 10
            assert await sender.deliver_due() == 0
            clock.advance(10)
            assert await sender.deliver_due() == 1  # fails, next at t0 + 70
            clock.advance(60)
            assert await sender.deliver_due() == 1  # fails; t0 + 310 is past the max age
            clock.advance(1000)
            assert await sender.deliver_due() == 0
        finally:
            await sender.aclose()
        assert len(receiver.requests) == 3
    (delivery,) = await store.webhooks.deliveries(task_id=task.id)
    assert delivery["status"] == "failed" and delivery["attempt_count"] == 3
    assert delivery["last_status"] == 503 and delivery["last_error"] == "HTTP 503"
    headers, body = receiver.requests[0]
    assert headers["webhook-signature"] == sign(
        secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body
    )


# -- submit header, CLI, admin API ---------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["ftp://hooks.example.com/x", "file:///etc/passwd", "hooks.example.com", "http://"]
)
async def test_a_bad_callback_header_is_a_400_naming_it(
    rt: Runtime, api: httpx.AsyncClient, value: str
) -> None:
    _, auth = await new_key(rt, "acme")
    resp = await api.post(SUBMIT, json=seed_body(REMOTE_IMG), headers={**auth, CALLBACK: value})
    assert resp.status_code == 400
    assert resp.json()["code"] == "InvalidParameter"
    assert CALLBACK in resp.json()["message"]
    native = await api.post(
        "/api/v1/services/aigc/video-generation/video-synthesis",
        json=seed_body(REMOTE_IMG),
        headers={**auth, CALLBACK: value, "X-DashScope-Async": "enable"},
    )
    assert native.status_code == 400 and CALLBACK in native.json()["message"]


def test_cli_add_list_secret_deliveries_remove(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runner = CliRunner(env={"COLUMNS": "200"})

    def ok(*args: str) -> str:
        result = runner.invoke(cli_app, [*args, "--data-dir", str(data)])
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result.stdout

    account = ok("accounts", "create", "--name", "acme").strip()
    endpoint_id, secret = ok(
        "webhooks", "add", "--account", account, "https://h.example.com/x"
    ).split()
    assert endpoint_id.startswith("we_") and secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 24
    listed = json.loads(ok("webhooks", "list", "--account", account, "--json"))
    assert [e["id"] for e in listed] == [endpoint_id] and "secret" not in listed[0]
    assert endpoint_id in ok("webhooks", "list")
    callback_secret = ok("webhooks", "secret", "--account", account).strip()
    assert callback_secret.startswith("whsec_")
    assert ok("webhooks", "secret", "--account", account).strip() == callback_secret

    async def cancel_one() -> str:
        s = await TaskStore.open(f"sqlite:///{data / 'stillmotion.db'}")
        try:
            task = await new_task(s, account)
            await s.cancel_pending(task.id, "key-a")
            return task.id
        finally:
            await s.close()

    task_id = asyncio.run(cancel_one())
    shown = json.loads(ok("webhooks", "deliveries", "--task", task_id, "--json"))
    assert [(d["id"], d["status"], d["attempts"]) for d in shown] == [
        (delivery_id(task_id, endpoint_id), "pending", [])
    ]
    assert delivery_id(task_id, endpoint_id) in ok("webhooks", "deliveries", "--account", account)
    bad = runner.invoke(cli_app, ["webhooks", "add", "--account", account, "ftp://x", "--data-dir",
                                  str(data)])  # fmt: skip
    assert bad.exit_code == 2 and "http" in bad.stderr
    ok("webhooks", "remove", endpoint_id)
    assert json.loads(ok("webhooks", "list", "--json")) == []
    gone = runner.invoke(cli_app, ["webhooks", "remove", endpoint_id, "--data-dir", str(data)])
    assert gone.exit_code == 1


async def test_admin_api_webhooks(rt: Runtime, api: httpx.AsyncClient) -> None:
    account, auth = await new_key(rt, "acme")
    _, admin = await new_key(rt, "ops", admin=True)
    base = f"/admin/v1/accounts/{account}"
    for method, path in (
        ("POST", f"{base}/webhooks"), ("GET", f"{base}/webhooks"),
        ("GET", f"{base}/webhook-secret"), ("GET", "/admin/v1/webhook-deliveries"),
        ("DELETE", "/admin/v1/webhooks/we_x"),
    ):  # fmt: skip
        resp = await api.request(method, path, headers=auth, json={"url": "https://h.example.com"})
        assert resp.status_code == 403 and resp.json()["code"] == "AccessDenied", path
    made = await api.post(f"{base}/webhooks", headers=admin, json={"url": "https://h.example.com"})
    assert made.status_code == 201, made.text
    endpoint = made.json()
    assert endpoint["secret"].startswith("whsec_") and endpoint["account_id"] == account
    bad = await api.post(f"{base}/webhooks", headers=admin, json={"url": "gopher://x"})
    assert bad.status_code == 400
    missing = await api.post(
        "/admin/v1/accounts/nope/webhooks", headers=admin, json={"url": "https://h.example.com"}
    )
    assert missing.status_code == 404
    listed = (await api.get(f"{base}/webhooks", headers=admin)).json()
    assert [e["id"] for e in listed["data"]] == [endpoint["id"]] and "secret" not in listed["data"][
        0
    ]
    secret = (await api.get(f"{base}/webhook-secret", headers=admin)).json()
    assert secret["secret"].startswith("whsec_")
    task = (await api.post(SUBMIT, json=seed_body(REMOTE_IMG), headers=auth)).json()["output"]
    await api.post(f"/task/{task['task_id']}/cancel", headers=auth)
    found = await api.get(
        "/admin/v1/webhook-deliveries", params={"task": task["task_id"]}, headers=admin
    )
    assert found.status_code == 200
    (delivery,) = found.json()["data"]
    assert delivery["endpoint_id"] == endpoint["id"] and delivery["status"] == "pending"
    assert delivery["attempts"] == [] and delivery["next_time"] is not None
    gone = await api.delete(f"/admin/v1/webhooks/{endpoint['id']}", headers=admin)
    assert gone.status_code == 200 and gone.json()["id"] == endpoint["id"]
    assert (
        await api.delete(f"/admin/v1/webhooks/{endpoint['id']}", headers=admin)
    ).status_code == 404
    assert (await api.get(f"{base}/webhooks", headers=admin)).json()["data"] == []


async def test_a_removed_endpoints_pending_delivery_fails(store: TaskStore) -> None:
    account = await store.accounts.create("acme", 0)
    endpoint, _ = await store.webhooks.add_endpoint(account, "https://hooks.example.com/a")
    task = await new_task(store, account)
    assert await store.cancel_pending(task.id, "key-a") is not None
    assert await store.webhooks.remove_endpoint(endpoint.id)
    assert not await store.webhooks.remove_endpoint(endpoint.id)
    sender = WebhookSender(store, plain_render, WebhookConfig(), "s1")
    try:
        assert await sender.deliver_due() == 1
    finally:
        await sender.aclose()
    (delivery,) = await store.webhooks.deliveries(task_id=task.id)
    assert delivery["status"] == "failed" and "removed" in delivery["last_error"]
    later = await new_task(store, account)
    assert await store.cancel_pending(later.id, "key-a") is not None
    assert await store.webhooks.deliveries(task_id=later.id) == []

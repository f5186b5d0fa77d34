"""SIGKILL of `stillmotion serve` (billing on) while tasks render and while they finish, on
SQLite and PostgreSQL: after every kill the books balance, and once the restarted server
has finished every task, each was held once and captured or released exactly once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from stillmotion.money import to_micros
from stillmotion.tasks.keys import create_key
from stillmotion.tasks.store import TaskStore
from stillmotion.testing.images import data_uri
from tests.servers import Server
from tests.store_fixtures import database_url

pytestmark = pytest.mark.e2e
BALANCE = to_micros("50")
TASKS = 8
#: seconds after the submits at which the whole process group is killed: while the first
#: renders run, as they finish, and while later ones start
KILL_AFTER = (0.6, 1.6, 2.8)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database_url(request.param, tmp_path) as url:
        yield url


async def _open(url: str) -> TaskStore:
    store = await TaskStore.open(url)
    await store.upgrade()
    return store


async def _books(url: str) -> dict[str, list[dict[str, object]]]:
    store = await TaskStore.open(url)
    try:
        return {k: v for k, v in (await store.verify_billing()).items() if v}
    finally:
        await store.close()


async def _submit_all(base: str, key: str) -> list[str]:
    body = {
        "model": "wan2.6-i2v-flash",
        "input": {"prompt": "a lighthouse at dusk", "img_url": data_uri(480, 320, "JPEG")},
        "parameters": {"resolution": "720P", "duration": 2},
    }
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        replies = [
            await http.post("/task/bailian/image2video", json=body, headers=_auth(key))
            for _ in range(TASKS)
        ]
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    return [r.json()["output"]["task_id"] for r in replies]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _wait_all_ended(base: str, key: str, ids: list[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        while time.monotonic() < deadline:
            states = [
                (await http.get(f"/task/{i}", headers=_auth(key))).json()["output"]["task_status"]
                for i in ids
            ]
            if all(s in ("SUCCEEDED", "FAILED", "CANCELED") for s in states):
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"tasks not finished in {timeout} s: {Counter(states)}")


async def test_sigkill_while_rendering_and_finishing_settles_every_task_once(
    db: str, tmp_path: Path
) -> None:
    store = await _open(db)
    try:
        account_id = await store.accounts.create("crash", BALANCE)
        key = (await create_key(store, "crash", account_id=account_id)).key
    finally:
        await store.close()
    server = Server(tmp_path / "data")
    server.env.update(
        STILLMOTION_DATABASE_URL=db,
        STILLMOTION_BILLING="on",
        STILLMOTION_WORKERS="2",
        STILLMOTION_LEASE_SECONDS="300",  # only the restarted worker's reclaim brings tasks back
        STILLMOTION_MAX_ATTEMPTS="5",
    )
    server.start()
    try:
        ids = await _submit_all(server.base, key)
        started = time.monotonic()
        for moment in KILL_AFTER:
            await asyncio.sleep(max(0.0, started + moment - time.monotonic()))
            server.kill(signal.SIGKILL)
            assert await _books(db) == {}  # consistent at whatever moment the kill came
            server.start()
            started = time.monotonic() - moment
        await _wait_all_ended(server.base, key, ids)
    finally:
        if server.proc is not None:
            server.kill(signal.SIGKILL)
    await _check_settled_once(db, account_id, ids)
    assert server.cli("billing", "verify").strip().startswith("billing verify: ok")


async def _check_settled_once(db: str, account_id: str, ids: list[str]) -> None:
    assert await _books(db) == {}
    store = await TaskStore.open(db)
    try:
        entries = await store.accounts.entries(account_id, limit=1000)
        per_task = Counter((e["task_id"], e["kind"]) for e in entries if e["task_id"])
        cost = 0
        for task_id in ids:
            row = await store.get_task(task_id)
            assert row is not None and row.cost is not None
            settle = "capture" if row.status.value == "SUCCEEDED" else "release"
            assert per_task[(task_id, "hold")] == 1 and per_task[(task_id, settle)] == 1
            assert sum(n for (t, _), n in per_task.items() if t == task_id) == 2
            cost += row.cost
        account = await store.accounts.get(account_id)
        assert account is not None
        assert (account.balance, account.held) == (BALANCE - cost, 0)
        events = [e["kind"] for task_id in ids for e in await store.events(task_id)]
        assert "reclaimed" in events  # the kills did interrupt renders
    finally:
        await store.close()

"""A relayed task is never submitted upstream twice: crashes, restarts and lost answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stillmotion.config import Settings
from stillmotion.engines.base import EngineJob
from stillmotion.engines.dashscope.channels import Channel
from stillmotion.engines.dashscope.engine import DashScopeEngine
from stillmotion.runtime import ENGINE_OPTIONS, Runtime, build_worker
from stillmotion.testing.fake_dashscope import FakeConfig, FakeDashScopeServer
from stillmotion.worker.worker import Worker
from tests.conftest import poll, seed_body
from tests.relay_helpers import KEY, relay_settings, submit, wait_row


@pytest.fixture
def fake() -> Iterator[FakeDashScopeServer]:
    config = FakeConfig(keys={KEY: "ok"}, pending_seconds=0.1, running_seconds=0.3)
    with FakeDashScopeServer(config) as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, fake: FakeDashScopeServer) -> Settings:
    return relay_settings(tmp_path, fake, lease_seconds=1.0)


class StopsBeforeStoringTheId(DashScopeEngine):
    """Hangs right after the upstream accepted the submit, before the id is saved."""

    reached: asyncio.Event

    async def _store_upstream_id(self, job: EngineJob, state: dict[str, Any]) -> None:
        self.reached.set()
        await asyncio.Event().wait()


class StopsBeforeSending(DashScopeEngine):
    """Hangs after the "submitting" marker is saved, before the submit is sent."""

    reached: asyncio.Event

    async def _send(self, channel: Channel, key: str, body: dict[str, Any], submit_id: str) -> str:
        self.reached.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class FailsToStoreTheIdOnce(DashScopeEngine):
    """The database write of the upstream id fails once (e.g. the database went away)."""

    failed = False

    async def _store_upstream_id(self, job: EngineJob, state: dict[str, Any]) -> None:
        if not FailsToStoreTheIdOnce.failed:
            FailsToStoreTheIdOnce.failed = True
            raise RuntimeError("database is gone")
        await super()._store_upstream_id(job, state)


async def start_with(runtime: Runtime, engine_cls: type[DashScopeEngine]) -> DashScopeEngine:
    """Start a worker whose dashscope engine is ``engine_cls``."""
    worker = build_worker(runtime)
    await worker.engines["dashscope"].aclose()
    engine = engine_cls(**ENGINE_OPTIONS["dashscope"](runtime.settings))
    engine.reached = asyncio.Event()  # type: ignore[attr-defined]
    worker.engines["dashscope"] = engine  # the runner shares this mapping
    runtime.worker = worker
    runtime.service.set_on_submit(worker.wake)
    worker.start()
    return engine


async def kill(worker: Worker) -> None:
    """A hard stop: no release, no final write; the claim stays until its lease expires."""
    assert worker._loop_task is not None
    running = [worker._loop_task, *worker._active]
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    for engine in worker.engines.values():
        await engine.aclose()


async def test_worker_killed_between_submit_and_storing_the_id_never_resubmits(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    engine = await start_with(runtime, StopsBeforeStoringTheId)
    task_id = await submit(client, auth, seed_body())
    await asyncio.wait_for(engine.reached.wait(), 10)  # type: ignore[attr-defined]
    assert len(fake.state.submits) == 1
    row = await runtime.store.get_task(task_id)
    assert row is not None and row.engine_state["submitting"] == "default"
    assert "upstream_id" not in row.engine_state
    assert runtime.worker is not None
    await kill(runtime.worker)
    await runtime.start_worker()  # a fresh process: claims the task once its lease expires
    result = await poll(client, task_id, auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    assert len(fake.state.submits) == 1 and len(fake.state.tasks) == 1
    row = await runtime.store.get_task(task_id)
    assert row is not None and row.attempts == 2
    assert row.engine_state["upstream_id"] == next(iter(fake.state.tasks))
    assert fake.state.requests["list"] >= 1


async def test_worker_killed_before_sending_fails_with_submit_unknown(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    engine = await start_with(runtime, StopsBeforeSending)
    task_id = await submit(client, auth, seed_body())
    await asyncio.wait_for(engine.reached.wait(), 10)  # type: ignore[attr-defined]
    assert runtime.worker is not None
    await kill(runtime.worker)
    await runtime.start_worker()
    out = (await poll(client, task_id, auth, timeout=30))["output"]
    assert (out["task_status"], out["code"]) == ("FAILED", "InternalError.SubmitUnknown")
    assert "not submitted again" in out["message"]
    assert fake.state.submits == []


async def test_an_identical_foreign_task_makes_reconciliation_refuse(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    engine = await start_with(runtime, StopsBeforeStoringTheId)
    body = seed_body()
    task_id = await submit(client, auth, body)
    await asyncio.wait_for(engine.reached.wait(), 10)  # type: ignore[attr-defined]
    twin = {
        "model": body["model"],
        "input": {"prompt": body["input"]["prompt"], "img_url": "https://example.com/x.png"},
    }
    headers = {"Authorization": f"Bearer {KEY}", "X-DashScope-Async": "enable"}
    url = f"{fake.base_url}/services/aigc/video-generation/video-synthesis"
    assert httpx.post(url, json=twin, headers=headers).status_code == 200
    assert runtime.worker is not None
    await kill(runtime.worker)
    await runtime.start_worker()
    out = (await poll(client, task_id, auth, timeout=30))["output"]
    assert (out["task_status"], out["code"]) == ("FAILED", "InternalError.SubmitUnknown")
    assert "2 upstream tasks match" in out["message"]
    assert len(fake.state.submits) == 2  # ours and the twin: nothing more


async def test_failed_id_write_is_reconciled_on_the_next_attempt(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    FailsToStoreTheIdOnce.failed = False
    await start_with(runtime, FailsToStoreTheIdOnce)
    task_id = await submit(client, auth, seed_body())
    result = await poll(client, task_id, auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    assert FailsToStoreTheIdOnce.failed
    assert len(fake.state.submits) == 1
    kinds = [e["kind"] for e in await runtime.store.events(task_id)]
    assert kinds.count("claimed") == 2 and "retry" in kinds


@pytest.mark.parametrize("directive", ["[fake:drop]", "[fake:slow=3]"])
async def test_lost_submit_answers_are_reconciled(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    fake: FakeDashScopeServer,
    directive: str,
) -> None:
    runtime.settings.dashscope_request_timeout = 1.0
    await runtime.start_worker()
    body = seed_body()
    body["input"]["prompt"] = f"the answer gets lost {directive}"
    task_id = await submit(client, auth, body)
    result = await poll(client, task_id, auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    assert len(fake.state.submits) == 1 and len(fake.state.tasks) == 1
    row = await runtime.store.get_task(task_id)
    assert row is not None and row.attempts == 1
    assert row.engine_state["upstream_id"] == next(iter(fake.state.tasks))


async def test_graceful_restart_resumes_polling(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    fake.state.config.running_seconds = 1.5
    worker = await runtime.start_worker()
    task_id = await submit(client, auth, seed_body())
    row = await wait_row(runtime, task_id, lambda r: "upstream_id" in r.engine_state)
    await worker.stop(grace=0)  # hands the task back to the queue, state kept
    released = await runtime.store.get_task(task_id)
    assert released is not None and released.status.value == "PENDING"
    await runtime.start_worker()
    result = await poll(client, task_id, auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    assert len(fake.state.submits) == 1
    final = await runtime.store.get_task(task_id)
    assert final is not None
    assert final.engine_state["upstream_id"] == row.engine_state["upstream_id"]
    assert fake.state.requests["list"] == 0  # resumed from the stored id, no reconciliation

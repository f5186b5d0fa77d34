"""Shared pieces of the relay tests: the fake upstream, relay settings, submit and wait."""

from __future__ import annotations

import asyncio
import base64
import io
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from stillmotion import catalog
from stillmotion.config import Settings
from stillmotion.runtime import Runtime
from stillmotion.tasks.store import TaskRow
from stillmotion.testing.fake_dashscope import FakeDashScopeServer
from stillmotion.testing.fake_dashscope_state import FakeTask

KEY = "sk-relay-good-5f0c2e7a9b1d4c3e"
KEY2 = "sk-relay-second-77aa1c0e4b2f9d31"
BAD_KEY = "sk-relay-revoked-0d9e8c7b6a5f4e3d"
DENIED_KEY = "sk-relay-denied-3c4d5e6f7a8b9c0d"
SECRETS = (KEY, KEY2, BAD_KEY, DENIED_KEY)
ROUTES = ",".join(f"{m}=dashscope" for m in catalog.model_names())


def relay_settings(tmp_path: Path, fake: FakeDashScopeServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp_path / "data",
        workers=1,
        lease_seconds=5,
        poll_interval=0.05,
        allow_private_urls=True,
        key_cache_seconds=0,
        routes=ROUTES,
        dashscope_base_url=fake.base_url,
        dashscope_api_keys=KEY,
        dashscope_poll_first=0.05,
        dashscope_poll_max=0.2,
        dashscope_max_poll_failures=3,
        dashscope_submit_rate=100,
        dashscope_request_timeout=2,
        dashscope_allow_private=True,
    )
    values.update(overrides)
    return Settings(**values)


async def submit(client: httpx.AsyncClient, auth: dict[str, str], body: dict[str, Any]) -> str:
    resp = await client.post("/task/bailian/image2video", json=body, headers=auth)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["output"]["task_id"])


async def wait_row(runtime: Runtime, task_id: str, check: Any, timeout: float = 20.0) -> TaskRow:
    """Poll the store until ``check(row)`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        row = await runtime.store.get_task(task_id)
        if row is not None and check(row):
            return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task_id}: condition not met in {timeout}s (row: {row})")


def record_polls(fake: FakeDashScopeServer) -> set[str]:
    """The upstream task ids the fake was asked about (polls, result downloads), as a set that
    fills while the test runs."""
    asked: set[str] = set()
    get = fake.state.get

    def recording_get(task_id: str) -> FakeTask | None:
        asked.add(task_id)
        return get(task_id)

    fake.state.get = recording_get  # type: ignore[method-assign]
    return asked


def unfinished_upstream(fake: FakeDashScopeServer) -> list[str]:
    """Ids of the upstream tasks that are PENDING or RUNNING now."""
    now = fake.state.clock()
    return [t.task_id for t in fake.state.listing() if t.status_at(now) in ("PENDING", "RUNNING")]


def finish_upstream(fake: FakeDashScopeServer) -> None:
    """End every upstream task now (SUCCEEDED unless scripted to fail): a hold released."""
    with fake.state.lock:
        for task in fake.state.tasks.values():
            task.pending_seconds = task.running_seconds = 0.0


async def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``check()`` until it holds; bounded by ``timeout`` (generous: a busy machine)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"not met in {timeout} s: {what}")
        await asyncio.sleep(0.02)


def upstream_overlap(fake: FakeDashScopeServer) -> int:
    """The most upstream tasks that were unfinished at one time."""
    edges: list[tuple[float, int]] = []
    for task in fake.state.tasks.values():
        edges += [(task.created, 1), (task.ended, -1)]
    most = now = 0
    for _, step in sorted(edges):
        now += step
        most = max(most, now)
    return most


def wav_data_uri(seconds: float, rate: int = 16000) -> str:
    tone = (np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate) * 9000).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(tone.tobytes())
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()

"""Shared fixtures: settings in a temp data dir, an opened runtime, an in-process client."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stillmotion.api.app import create_app
from stillmotion.config import Settings
from stillmotion.runtime import Runtime, open_runtime
from stillmotion.tasks.keys import create_key
from stillmotion.testing.images import data_uri

#: ``db_url`` (a fresh database on each backend) for the store's test modules.
pytest_plugins = ["tests.store_fixtures"]

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"}


def pytest_report_header() -> str:
    return f"sqlite {sqlite3.sqlite_version}"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move everything alive after collection (modules, torch, the app's imports) out of the
    collector's reach, so that the per-test ``gc.collect()`` below scans only what the tests
    made: ~0.3 s a collection would otherwise add a minute or two to the suite."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def _collect_all_garbage_at_the_end() -> Iterator[None]:
    """After the session-scoped fixtures are closed: hand everything frozen back to the
    collector and collect once, so that their leaks fail the last test too."""
    yield
    gc.unfreeze()
    gc.collect()


@pytest.fixture(scope="module", autouse=True)
def _collect_garbage_per_module() -> Iterator[None]:
    """After a module's own fixtures are closed: collect their garbage (a leak fails the
    module's last test), then freeze what lives on so later modules do not rescan it."""
    yield
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect at each test's teardown (after its other fixtures are closed), so that a
    finalizer's exception or an unclosed resource in a reference cycle (``ResourceWarning``,
    an error under ``filterwarnings``) fails the test that made it, not a later one."""
    yield
    gc.collect()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        workers=1,
        lease_seconds=5,
        poll_interval=0.05,
        allow_private_urls=True,
        key_cache_seconds=0,
    )


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = await open_runtime(settings)
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=runtime.settings.base_url) as c:
        yield c


@pytest.fixture
async def api_key(runtime: Runtime) -> str:
    return (await create_key(runtime.store, "test")).key


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def seed_body(img_url: str | None = None, **parameters: Any) -> dict[str, Any]:
    """The seed document's request (contract 1.2), small enough to render quickly."""
    params: dict[str, Any] = {"resolution": "720P", "duration": 2, "prompt_extend": True}
    params.update(parameters)
    return {
        "model": "wan2.6-i2v-flash",
        "input": {
            "prompt": "A cat walks slowly through the garden, the camera pushes in.",
            "img_url": img_url or data_uri(480, 320, "JPEG"),
        },
        "parameters": params,
    }


async def poll(
    client: httpx.AsyncClient, task_id: str, headers: dict[str, str], timeout: float = 60.0
) -> dict[str, Any]:
    """Poll ``GET /task/{id}`` until a terminal status (bounded by ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: list[str] = []
    while loop.time() < deadline:
        resp = await client.get(f"/task/{task_id}", headers=headers)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        status = body["output"]["task_status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in TERMINAL:
            body["_seen"] = seen
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} not finished after {timeout}s (seen {seen})")

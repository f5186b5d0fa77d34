"""The DashScope-native routes under /api/v1, in-process: the async header, trailing slashes,
the task list (filters, paging, time zone), cancel, tenancy, error shapes, x-should-retry.

The module's settings use Asia/Shanghai so that list times are parsed in a zone that is not
UTC (a server that ignored ``time_zone`` would be 8 hours off).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from stillmotion.api import routes_dashscope
from stillmotion.api.app import create_app
from stillmotion.config import Settings
from stillmotion.errors import InternalError, Throttling
from stillmotion.runtime import Runtime
from stillmotion.tasks.keys import create_key
from tests.conftest import seed_body

SUBMIT = "/api/v1/services/aigc/video-generation/video-synthesis"
ASYNC = {"X-DashScope-Async": "enable"}
ZONE = "Asia/Shanghai"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", workers=0, key_cache_seconds=0, time_zone=ZONE)


async def submit(
    client: httpx.AsyncClient, auth: dict[str, str], body: Any = None, **params: Any
) -> str:
    resp = await client.post(SUBMIT, json=body or seed_body(**params), headers={**auth, **ASYNC})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["output"]["task_id"])


def stamp(epoch: float, zone: str = ZONE) -> str:
    return datetime.fromtimestamp(epoch, ZoneInfo(zone)).strftime("%Y%m%d%H%M%S")


def assert_error(resp: httpx.Response, status: int, code: str, message: str = "") -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"request_id", "code", "message"}
    assert body["code"] == code
    assert message in body["message"]
    assert body["request_id"]


async def test_submit_requires_async_header(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for headers in ({}, {"X-DashScope-Async": "disable"}):
        resp = await client.post(SUBMIT, json=seed_body(), headers={**auth, **headers})
        assert_error(resp, 403, "AccessDenied", "does not support synchronous calls")
        assert "x-should-retry" not in resp.headers
    listed = (await client.get("/api/v1/tasks", headers=auth)).json()
    assert listed["total"] == 0  # nothing was created
    resp = await client.post(SUBMIT, json=seed_body(), headers={**auth, **ASYNC})
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"request_id", "output"}
    assert body["output"]["task_status"] == "PENDING"
    assert body["output"]["task_id"]


async def test_sdk_body_quirks_are_accepted(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    body = seed_body()
    body["input"].update(prompt=None, extend_prompt=True, function="video-synthesis")
    body["parameters"] = {}
    task_id = await submit(client, auth, body)
    got = (await client.get(f"/api/v1/tasks/{task_id}", headers=auth)).json()
    assert got["output"]["task_status"] == "PENDING"
    assert got["output"]["orig_prompt"] == ""


async def test_query_with_and_without_trailing_slash(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task_id = await submit(client, auth)
    plain = await client.get(f"/api/v1/tasks/{task_id}", headers=auth)
    slash = await client.get(f"/api/v1/tasks/{task_id}/", headers=auth)
    for resp in (plain, slash):
        assert resp.status_code == 200, resp.text
        output = resp.json()["output"]
        assert (output["task_id"], output["task_status"]) == (task_id, "PENDING")
        assert output["orig_prompt"].startswith("A cat walks")
    assert plain.json()["output"] == slash.json()["output"]
    unknown = (await client.get("/api/v1/tasks/nope/", headers=auth)).json()
    assert unknown["output"] == {"task_id": "nope", "task_status": "UNKNOWN"}


async def test_cancel_pending_then_refuse(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    task_id = await submit(client, auth)
    resp = await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=auth)
    assert resp.status_code == 200
    assert set(resp.json()) == {"request_id"}
    got = (await client.get(f"/api/v1/tasks/{task_id}", headers=auth)).json()
    assert got["output"]["task_status"] == "CANCELED"
    again = await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=auth)
    assert_error(again, 400, "UnsupportedOperation", "confirm if the task is in PENDING status")


async def test_other_keys_tasks_are_unknown_and_unlisted(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    task_id = await submit(client, auth)
    other = {"Authorization": f"Bearer {(await create_key(runtime.store, 'other')).key}"}
    got = (await client.get(f"/api/v1/tasks/{task_id}", headers=other)).json()
    assert got["output"] == {"task_id": task_id, "task_status": "UNKNOWN"}
    listed = (await client.get("/api/v1/tasks", headers=other)).json()
    assert (listed["total"], listed["data"]) == (0, [])
    by_id = (await client.get("/api/v1/tasks", params={"task_id": task_id}, headers=other)).json()
    assert by_id["total"] == 0
    resp = await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=other)
    assert_error(resp, 400, "UnsupportedOperation")
    mine = (await client.get("/api/v1/tasks", headers=auth)).json()
    assert [item["task_id"] for item in mine["data"]] == [task_id]
    owner = mine["data"][0]["api_key_id"]
    foreign = await client.get("/api/v1/tasks", params={"api_key_id": "x" + owner}, headers=auth)
    assert foreign.json()["total"] == 0


async def test_list_pages_newest_first(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    ids = [await submit(client, auth) for _ in range(3)]
    first = await client.get("/api/v1/tasks", params={"page_size": 2}, headers=auth)
    assert first.status_code == 200
    page1 = first.json()
    assert set(page1) == {
        "request_id", "data", "tasks", "page_no", "page_size", "total", "total_page"
    }  # fmt: skip
    assert [t["task_id"] for t in page1["tasks"]] == [item["task_id"] for item in page1["data"]]
    assert (page1["page_no"], page1["page_size"], page1["total"], page1["total_page"]) == (
        1, 2, 3, 2,
    )  # fmt: skip
    page2 = (
        await client.get("/api/v1/tasks/", params={"page_size": 2, "page_no": 2}, headers=auth)
    ).json()
    listed = [item["task_id"] for item in page1["data"] + page2["data"]]
    assert listed == ids[::-1]
    beyond = (await client.get("/api/v1/tasks", params={"page_no": 9}, headers=auth)).json()
    assert (beyond["data"], beyond["total"], beyond["total_page"]) == ([], 3, 1)


async def test_list_item_shape(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    before = time.time()
    task_id = await submit(client, auth)
    await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=auth)
    item = (await client.get("/api/v1/tasks", headers=auth)).json()["data"][0]
    assert item["task_id"] == task_id
    assert (item["status"], item["model_name"]) == ("CANCELED", "wan2.6-i2v-flash")
    assert isinstance(item["api_key_id"], str) and item["api_key_id"]
    assert isinstance(item["gmt_create"], int)
    assert before * 1000 - 1 <= item["gmt_create"] <= time.time() * 1000 + 1
    assert item["start_time"] is None  # never ran
    assert item["gmt_create"] <= item["end_time"] <= time.time() * 1000 + 1


async def test_list_filters(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    flash = await submit(client, auth)
    full = seed_body()
    full["model"] = "wan2.6-i2v"
    other_model = await submit(client, auth, full)
    canceled = await submit(client, auth)
    await client.post(f"/api/v1/tasks/{canceled}/cancel", headers=auth)

    async def ids(**params: Any) -> list[str]:
        resp = await client.get("/api/v1/tasks", params=params, headers=auth)
        assert resp.status_code == 200, resp.text
        return [item["task_id"] for item in resp.json()["data"]]

    assert await ids(status="CANCELED") == [canceled]
    assert await ids(status="PENDING") == [other_model, flash]
    assert await ids(model_name="wan2.6-i2v") == [other_model]
    assert await ids(model_name="wan2.6-i2v-flash", status="PENDING") == [flash]
    assert await ids(task_id=flash) == [flash]
    assert await ids(task_id=flash, status="CANCELED") == []
    assert await ids(region="cn-beijing", page_size=1) == [canceled]


async def test_list_time_window_uses_the_time_zone(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task_id = await submit(client, auth)
    now = time.time()

    async def total(start: float, end: float, zone: str = ZONE) -> int:
        params = {"start_time": stamp(start, zone), "end_time": stamp(end, zone)}
        resp = await client.get("/api/v1/tasks", params=params, headers=auth)
        assert resp.status_code == 200, resp.text
        return int(resp.json()["total"])

    assert await total(now - 60, now) == 1
    listed = (await client.get("/api/v1/tasks", headers=auth)).json()["data"]
    created = listed[0]["gmt_create"] / 1000
    assert await total(created - 1, created) == 1  # end_time includes its whole second
    assert await total(now - 60, now, zone="UTC") == 0  # read as Shanghai: 8 h earlier
    assert await total(now + 60, now + 120) == 0
    assert await total(now - 7200, now - 3600) == 0
    by_id = await client.get(
        "/api/v1/tasks",
        params={"task_id": task_id, "start_time": stamp(now + 60), "end_time": stamp(now + 90)},
        headers=auth,
    )
    assert by_id.json()["total"] == 0


async def test_list_defaults_to_the_last_24_hours(
    client: httpx.AsyncClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await submit(client, auth)
    created = time.time()
    later = created + 25 * 3600
    monkeypatch.setattr(routes_dashscope, "time", SimpleNamespace(time=lambda: later))
    assert (await client.get("/api/v1/tasks", headers=auth)).json()["total"] == 0
    params = {"start_time": stamp(created - 60)}
    assert (await client.get("/api/v1/tasks", params=params, headers=auth)).json()["total"] == 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"start_time": "2026-01-01"}, "start_time: '2026-01-01' is not a time"),
        ({"end_time": "20261301000000"}, "end_time"),
        ({"start_time": "20260102000000", "end_time": "20260101000000"}, "not be later"),
        ({"status": "DONE"}, "status"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": 101}, "page_size"),
        ({"page_no": "x"}, "page_no"),
    ],
)
async def test_list_rejects_bad_parameters(
    client: httpx.AsyncClient, auth: dict[str, str], params: dict[str, Any], message: str
) -> None:
    resp = await client.get("/api/v1/tasks", params=params, headers=auth)
    assert_error(resp, 400, "InvalidParameter", message)


async def test_uploads_explain_that_local_files_are_not_taken(client: httpx.AsyncClient) -> None:
    params = {"action": "getPolicy", "model": "wan2.6-i2v-flash"}
    resp = await client.get("/api/v1/uploads", params=params)
    assert_error(resp, 400, "InvalidParameter", "data:{mime};base64,{data} URI")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", SUBMIT),
        ("GET", "/api/v1/tasks/x"),
        ("GET", "/api/v1/tasks/x/"),
        ("POST", "/api/v1/tasks/x/cancel"),
        ("GET", "/api/v1/tasks"),
        ("GET", "/api/v1/tasks/"),
    ],
)
async def test_every_route_needs_a_key(client: httpx.AsyncClient, method: str, path: str) -> None:
    resp = await client.request(method, path, json=seed_body(), headers=ASYNC)
    assert_error(resp, 401, "InvalidApiKey", "No API-key provided.")
    bad = {**ASYNC, "Authorization": "Bearer sm-wrong"}
    resp = await client.request(method, path, json=seed_body(), headers=bad)
    assert_error(resp, 401, "InvalidApiKey", "Invalid API-key")


async def test_submit_validation_errors_use_the_error_shape(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    resp = await client.post(SUBMIT, json=seed_body(duration=16), headers={**auth, **ASYNC})
    assert_error(resp, 400, "InvalidParameter", "parameters.duration: 16 is not supported")
    assert "x-should-retry" not in resp.headers
    resp = await client.post(SUBMIT, content=b"{", headers={**auth, **ASYNC})
    assert_error(resp, 400, "InvalidParameter", "not valid JSON")
    resp = await client.get(SUBMIT, headers=auth)
    assert_error(resp, 405, "MethodNotAllowed")


async def test_submit_server_errors_say_do_not_retry(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise InternalError("The database went away.")

    monkeypatch.setattr(runtime.service, "submit", broken)
    monkeypatch.setattr(runtime.service, "get", broken)
    resp = await client.post(SUBMIT, json=seed_body(), headers={**auth, **ASYNC})
    assert_error(resp, 500, "InternalError", "The database went away.")
    assert resp.headers["x-should-retry"] == "false"
    query = await client.get("/api/v1/tasks/x", headers=auth)
    assert_error(query, 500, "InternalError")
    assert "x-should-retry" not in query.headers  # reads are safe to retry


async def test_throttled_submit_may_be_retried(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def throttled(*args: Any, **kwargs: Any) -> Any:
        raise Throttling("Requests rate limit exceeded.")

    monkeypatch.setattr(runtime.service, "submit", throttled)
    resp = await client.post(SUBMIT, json=seed_body(), headers={**auth, **ASYNC})
    assert_error(resp, 429, "Throttling")
    assert "x-should-retry" not in resp.headers  # refused before anything was created


@pytest.fixture
async def lenient_client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client that gets the 500 answer of an unexpected exception instead of the raise."""
    transport = httpx.ASGITransport(app=create_app(runtime=runtime), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_unexpected_submit_errors_say_do_not_retry(
    lenient_client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(runtime.service, "submit", crash)
    resp = await lenient_client.post(SUBMIT, json=seed_body(), headers={**auth, **ASYNC})
    assert_error(resp, 500, "InternalError", "An internal error occurred.")
    assert resp.headers["x-should-retry"] == "false"

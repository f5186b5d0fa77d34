"""The HTTP API in-process: submit, query, cancel, auth, validation errors, tenancy."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from stillmotion.api.app import create_app
from stillmotion.runtime import Runtime
from stillmotion.tasks.keys import create_key
from stillmotion.testing.images import data_uri
from tests.conftest import seed_body

TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")


async def submit(client: httpx.AsyncClient, auth: dict[str, str], body: Any) -> httpx.Response:
    return await client.post("/task/bailian/image2video", json=body, headers=auth)


async def test_submit_returns_pending_task(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    resp = await submit(client, auth, seed_body())
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"request_id", "output"}
    assert body["output"]["task_status"] == "PENDING"
    task_id = body["output"]["task_id"]
    got = (await client.get(f"/task/{task_id}", headers=auth)).json()
    assert got["output"]["task_id"] == task_id
    assert got["output"]["task_status"] == "PENDING"
    assert TIME.match(got["output"]["submit_time"])
    assert got["output"]["orig_prompt"].startswith("A cat walks")
    assert "usage" not in got


@pytest.mark.parametrize(
    ("headers", "message"),
    [({}, "No API-key provided."), ({"Authorization": "Bearer sm-wrong"}, "Invalid API-key")],
)
async def test_bad_keys_get_401(
    client: httpx.AsyncClient, headers: dict[str, str], message: str
) -> None:
    resp = await client.post("/task/bailian/image2video", json=seed_body(), headers=headers)
    assert resp.status_code == 401
    body = resp.json()
    assert body["code"] == "InvalidApiKey"
    assert message in body["message"]
    assert body["request_id"]
    resp = await client.get("/task/whatever", headers=headers)
    assert resp.status_code == 401


async def test_revoked_key_is_refused(client: httpx.AsyncClient, runtime: Runtime) -> None:
    new = await create_key(runtime.store, "short-lived")
    headers = {"Authorization": f"Bearer {new.key}"}
    assert (await client.get("/task/x", headers=headers)).status_code == 200
    assert await runtime.store.revoke_key(new.row.id)
    assert (await client.get("/task/x", headers=headers)).status_code == 401


def _body(**changes: Any) -> dict[str, Any]:
    body = seed_body()
    for dotted, value in changes.items():
        section, _, name = dotted.partition("__")
        if not name:
            if value is None:
                body.pop(section)
            else:
                body[section] = value
        elif value is ...:
            body[section].pop(name, None)
        else:
            body[section][name] = value
    return body


BAD = [
    (_body(model=None), "BadRequest.EmptyModel", "model"),
    (_body(model="wan9-i2v"), "InvalidParameter", "wan2.6-i2v-flash"),
    (_body(input=None), "BadRequest.EmptyInput", "input"),
    (_body(input__img_url=...), "InvalidParameter", "img_url"),
    (_body(input__img_url="ftp://example.com/a.png"), "InvalidURL", "img_url"),
    (_body(input__img_url="data:image/gif;base64,R0lGOD=="), "InvalidParameter", "image/png"),
    (_body(input__img_url=data_uri(200, 300)), "InvalidParameter", "240"),
    (_body(parameters__resolution="480P"), "InvalidParameter", "720P, 1080P"),
    (_body(parameters__duration=16), "InvalidParameter", "2 to 15"),
    (_body(parameters__duration="5"), "InvalidParameter", "duration"),
    (_body(model="wan2.5-i2v-preview", parameters__duration=3), "InvalidParameter", "5 or 10"),
    (_body(model="wan2.6-i2v", parameters__audio=False), "InvalidParameter", "parameters.audio"),
    (_body(parameters__shot_type="triple"), "InvalidParameter", "single, multi"),
    (
        _body(model="wan2.5-i2v-preview", parameters__duration=5, parameters__shot_type="multi"),
        "InvalidParameter",
        "shot_type",
    ),
    (_body(parameters__seed=-1), "InvalidParameter", "2147483647"),
    (_body(parameters__seed=2**31), "InvalidParameter", "seed"),
    (_body(parameters__prompt_extend="yes"), "InvalidParameter", "prompt_extend"),
    (_body(input__prompt=5), "InvalidParameter", "input.prompt"),
    (_body(input__audio_url="file:///etc/passwd"), "InvalidURL", "audio_url"),
    (_body(parameters=[1, 2]), "InvalidParameter", "parameters"),
]


@pytest.mark.parametrize(("body", "code", "needle"), BAD)
async def test_invalid_requests_name_the_field(
    client: httpx.AsyncClient, auth: dict[str, str], body: Any, code: str, needle: str
) -> None:
    resp = await submit(client, auth, body)
    assert resp.status_code == 400, resp.text
    err = resp.json()
    assert set(err) == {"request_id", "code", "message"}
    assert err["code"] == code
    assert needle in err["message"]


async def test_malformed_json_and_empty_body(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    resp = await client.post("/task/bailian/image2video", content=b"{nope", headers=headers)
    assert resp.status_code == 400
    assert resp.json()["code"] == "InvalidParameter"
    resp = await client.post("/task/bailian/image2video", content=b"", headers=headers)
    assert resp.status_code == 400


async def test_too_large_body_is_413(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    limit = runtime.settings.max_body_bytes
    body = seed_body(img_url="data:image/png;base64," + "A" * (limit + 10))
    resp = await submit(client, auth, body)
    assert resp.status_code == 413
    assert resp.json()["code"] == "BadRequest.TooLarge"


async def test_defaults_and_truncation(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    body = {
        "model": "wan2.6-i2v",
        "input": {
            "img_url": data_uri(480, 320),
            "prompt": "x" * 2000,
            "negative_prompt": "n" * 600,
        },
    }
    resp = await submit(client, auth, body)
    assert resp.status_code == 200, resp.text
    row = await runtime.store.get_task(resp.json()["output"]["task_id"])
    assert row is not None
    req = row.request
    assert (req["resolution"], req["duration"], req["audio"], req["shot_type"]) == (
        "1080P",
        5,
        True,
        "single",
    )
    assert len(req["prompt"]) == 1500 and len(req["negative_prompt"]) == 500
    assert 0 <= req["seed"] <= 2147483647
    assert req["image"]["storage_key"].startswith(f"inputs/{row.id}/")


async def test_sdk_style_body_is_accepted(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    body = {
        "model": "wan2.5-i2v-preview",
        "parameters": {"audio": True, "duration": 5, "resolution": "480P"},
        "input": {
            "prompt": None,
            "extend_prompt": True,
            "function": "video-synthesis",
            "img_url": data_uri(300, 300),
        },
    }
    resp = await submit(client, auth, body)
    assert resp.status_code == 200, resp.text


async def test_unknown_and_foreign_tasks_are_unknown(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    task_id = (await submit(client, auth, seed_body())).json()["output"]["task_id"]
    other = {"Authorization": f"Bearer {(await create_key(runtime.store, 'other')).key}"}
    for headers, tid in ((auth, "no-such-task"), (other, task_id)):
        resp = await client.get(f"/task/{tid}", headers=headers)
        assert resp.status_code == 200
        assert resp.json()["output"] == {"task_id": tid, "task_status": "UNKNOWN"}
    resp = await client.post(f"/task/{task_id}/cancel", headers=other)
    assert resp.status_code == 400
    assert resp.json()["code"] == "UnsupportedOperation"
    assert (await runtime.store.get_task(task_id)).status.value == "PENDING"  # type: ignore[union-attr]


async def test_cancel_pending_then_refuse(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    task_id = (await submit(client, auth, seed_body())).json()["output"]["task_id"]
    resp = await client.post(f"/task/{task_id}/cancel", headers=auth)
    assert resp.status_code == 200
    assert set(resp.json()) == {"request_id"}
    got = (await client.get(f"/task/{task_id}", headers=auth)).json()["output"]
    assert got["task_status"] == "CANCELED"
    assert TIME.match(got["end_time"])
    resp = await client.post(f"/task/{task_id}/cancel", headers=auth)
    assert resp.status_code == 400
    err = resp.json()
    assert err["code"] == "UnsupportedOperation"
    assert "PENDING" in err["message"]


async def test_health_docs_and_catalog(client: httpx.AsyncClient) -> None:
    health = (await client.get("/healthz")).json()
    assert health["status"] == "ok"
    assert health["routes"]["wan2.6-i2v"] == "motion"
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert "/task/bailian/image2video" in spec["paths"]
    models = (await client.get("/v1/models")).json()["data"]
    names = {m["id"]: m for m in models}
    assert names["wan2.5-i2v-preview"]["durations"] == [5, 10]
    assert names["wan2.6-i2v-flash"]["audio"] == "optional"


async def test_unknown_route_and_method_use_error_shape(client: httpx.AsyncClient) -> None:
    resp = await client.get("/nope")
    assert resp.status_code == 404
    assert set(resp.json()) == {"request_id", "code", "message"}
    resp = await client.delete("/task/bailian/image2video")
    assert resp.status_code == 405
    assert set(resp.json()) == {"request_id", "code", "message"}


async def test_a_client_that_hangs_up_mid_body_is_not_an_error(
    runtime: Runtime, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """wrk and impatient clients close connections mid-request: no 500, no traceback."""
    app = create_app(runtime=runtime)
    headers = [(k.lower().encode(), v.encode()) for k, v in auth.items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/task/bailian/image2video",
        "raw_path": b"/task/bailian/image2video", "query_string": b"", "root_path": "",
        "headers": [*headers, (b"content-type", b"application/json"), (b"content-length", b"999")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {},
    }  # fmt: skip
    messages = iter([{"type": "http.request", "body": b'{"model"', "more_body": True},
                     {"type": "http.disconnect"}])  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with caplog.at_level("WARNING"):
        await app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    (key,) = await runtime.store.list_keys()
    assert (await runtime.store.list_tasks(key.id, limit=1))[1] == 0  # nothing was created


async def test_submit_server_errors_say_do_not_retry(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(key_id: str, body: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(runtime.service, "submit", broken)
    # Starlette re-raises after answering 500; a real server logs it, the test client must not
    transport = httpx.ASGITransport(app=create_app(runtime=runtime), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=str(client.base_url)) as raw:
        resp = await submit(raw, auth, seed_body())
        assert resp.status_code == 500
        assert resp.headers["x-should-retry"] == "false"
        assert resp.json()["code"] == "InternalError"
        assert "database" not in resp.json()["message"]
        resp = await raw.get("/task/some-id", headers=auth)
        assert "x-should-retry" not in resp.headers

"""A task keeps only what the contract defines, every bad query is a 400 (never a 500), on
SQLite and PostgreSQL alike, no failed submit leaves a file behind, and decoding a data URI
never holds the event loop."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from stillmotion.api.app import create_app
from stillmotion.config import Settings
from stillmotion.errors import InternalError, InvalidParameter
from stillmotion.runtime import Runtime, open_runtime
from stillmotion.tasks import body as body_module
from stillmotion.tasks import service as service_module
from stillmotion.tasks import validation
from stillmotion.tasks.body import MAX_DEPTH, SplicedUri, b64decode_gently, parse_body
from stillmotion.tasks.keys import create_key
from stillmotion.testing.images import data_uri, image_bytes
from tests.conftest import seed_body
from tests.store_fixtures import BACKENDS, database_url

SUBMIT = "/task/bailian/image2video"


@pytest.fixture(params=BACKENDS)
async def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Runtime]:
    async with database_url(request.param, tmp_path) as url:
        settings = Settings(
            data_dir=tmp_path / "data", database_url=url, workers=0, key_cache_seconds=0
        )
        rt = await open_runtime(settings)
        try:
            yield rt
        finally:
            await rt.close()


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(runtime=runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.fixture
async def auth(runtime: Runtime) -> dict[str, str]:
    return {"Authorization": f"Bearer {(await create_key(runtime.store, 'hygiene')).key}"}


def assert_error(resp: httpx.Response, status: int, code: str, message: str = "") -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"request_id", "code", "message"}
    assert body["code"] == code and message in body["message"], body


def input_files(runtime: Runtime) -> list[Path]:
    root = runtime.settings.data_dir / "files" / "inputs"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def submit(client: httpx.AsyncClient, auth: dict[str, str], body: Any) -> str:
    resp = await client.post(SUBMIT, json=body, headers=auth)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["output"]["task_id"])


# -- what a task keeps ----------------------------------------------------------------------


async def test_unknown_keys_are_not_stored(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    body = seed_body(junk="x" * 100_000, seed=7)
    body["input"]["junk"] = {"nested": ["y" * 1000]}
    body["extra"] = "z" * 1000
    task_id = await submit(client, auth, body)
    row = await runtime.store.get_task(task_id)
    assert row is not None
    assert set(row.request) == {
        "model", "prompt", "negative_prompt", "image", "audio_source", "resolution",
        "duration", "audio", "shot_type", "seed", "prompt_extend", "watermark",
        # the normalised request's other media (tasks/bodies.py): empty for a legacy body
        "last_frame", "first_clip", "references", "template", "extra",
    }  # fmt: skip
    assert row.request["extra"] == {} and row.request["references"] == []
    stored = orjson.dumps(row.request)
    assert b"junk" not in stored and b"xxxx" not in stored and b"zzzz" not in stored
    assert len(stored) < 2000
    assert row.request["seed"] == 7


async def test_prompts_are_stored_truncated(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    body = seed_body()
    body["input"]["prompt"] = "猫" * 100_000
    body["input"]["negative_prompt"] = "n" * 100_000
    task_id = await submit(client, auth, body)
    row = await runtime.store.get_task(task_id)
    assert row is not None
    assert row.request["prompt"] == "猫" * 1500  # wan2.6: 1500 characters (contract 3)
    assert row.request["negative_prompt"] == "n" * 500
    listed = (await client.get("/v1/tasks", headers=auth)).json()["data"]
    assert listed[0]["prompt"] == "猫" * 1500 and listed[0]["duration"] == 2


async def test_lists_read_only_the_fields_they_show(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    task_id = await submit(client, auth, seed_body())
    rows, total = await runtime.store.list_tasks((await runtime.store.list_keys())[0].id)
    assert total == 1 and rows[0].id == task_id
    assert set(rows[0].request) == {"prompt", "resolution", "duration", "audio"}
    assert (rows[0].request["resolution"], rows[0].request["audio"]) == ("720P", True)
    native = (await client.get("/api/v1/tasks", headers=auth)).json()
    assert native["tasks"][0]["orig_prompt"] == seed_body()["input"]["prompt"]


# -- bodies that must be refused before anything happens ------------------------------------


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 300, 5000])
async def test_deep_json_is_a_400_and_leaves_no_file(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, depth: int
) -> None:
    body = orjson.dumps(seed_body()).replace(
        b'"resolution"', b'"deep":' + nested(depth) + b',"resolution"'
    )
    resp = await client.post(SUBMIT, content=body, headers=auth)
    assert_error(resp, 400, "InvalidParameter", "levels deep")
    assert input_files(runtime) == []
    assert (await runtime.store.counts())["PENDING"] == 0


def test_depth_bound_is_exact() -> None:
    assert parse_body(nested(MAX_DEPTH)) == parse_body(nested(MAX_DEPTH))
    with pytest.raises(InvalidParameter, match="levels deep"):
        parse_body(nested(MAX_DEPTH + 1))
    wide = orjson.dumps({"a": [[1]] * 100_000})  # many brackets, shallow
    assert len(parse_body(wide)["a"]) == 100_000


async def test_a_failed_insert_leaves_no_input_file(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(**kwargs: Any) -> Any:
        assert len(input_files(runtime)) == 1  # the image was written first
        raise InternalError("The database went away.")

    monkeypatch.setattr(runtime.store, "create_task", broken)
    resp = await client.post(SUBMIT, json=seed_body(), headers=auth)
    assert_error(resp, 500, "InternalError", "went away")
    assert input_files(runtime) == []


async def test_text_with_nul_or_surrogates_is_refused(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    body = seed_body()
    body["input"]["prompt"] = "a\x00b"
    resp = await client.post(SUBMIT, json=body, headers=auth)
    assert_error(resp, 400, "InvalidParameter", "input.prompt")
    raw = orjson.dumps(seed_body()).replace(b'"A cat', b'"\\ud800A cat')
    resp = await client.post(SUBMIT, content=raw, headers=auth)
    assert_error(resp, 400, "InvalidParameter")


# -- query parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/v1/tasks", {"offset": "9223372036854775808"}, "offset"),
        ("/v1/tasks", {"offset": "-1"}, "offset"),
        ("/v1/tasks", {"limit": "101"}, "limit"),
        ("/api/v1/tasks", {"page_no": "4611686018427387904"}, "page_no"),
        ("/api/v1/tasks", {"page_no": "100001"}, "page_no"),
        ("/api/v1/tasks", {"page_size": "9223372036854775808"}, "page_size"),
        ("/api/v1/tasks", {"model_name": "\x00"}, "model_name"),
        ("/api/v1/tasks", {"task_id": "a\x00"}, "task_id"),
        ("/api/v1/tasks", {"region": "\x00"}, "region"),
        ("/api/v1/tasks", {"model_name": "m" * 101}, "model_name"),
        ("/api/v1/tasks", {"start_time": "99999999999999"}, "start_time"),
        ("/api/v1/tasks", {"end_time": "2" * 15}, "end_time"),
    ],
)
async def test_out_of_range_queries_are_400s(
    client: httpx.AsyncClient, auth: dict[str, str], path: str, params: Any, message: str
) -> None:
    resp = await client.get(path, params=params, headers=auth)
    assert_error(resp, 400, "InvalidParameter", message)


async def test_extreme_but_valid_queries_answer(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    await submit(client, auth, seed_body())
    far = await client.get("/v1/tasks", params={"offset": 10_000_000}, headers=auth)
    assert far.status_code == 200 and far.json()["data"] == []
    deep = await client.get("/api/v1/tasks", params={"page_no": 100_000}, headers=auth)
    assert deep.status_code == 200 and deep.json()["total"] == 1
    window = {"start_time": "00010101000000", "end_time": "99991231235959"}
    wide = await client.get("/api/v1/tasks", params=window, headers=auth)
    assert wide.status_code == 200 and wide.json()["total"] == 1


@pytest.mark.parametrize("task_id", ["%00", "a%00b", "%F0%9F%98%80", "x" * 200])
async def test_odd_task_ids_are_unknown_tasks(
    client: httpx.AsyncClient, auth: dict[str, str], task_id: str
) -> None:
    for path in (f"/task/{task_id}", f"/api/v1/tasks/{task_id}"):
        resp = await client.get(path, headers=auth)
        assert resp.status_code == 200, resp.text
        assert resp.json()["output"]["task_status"] == "UNKNOWN"
    resp = await client.post(f"/task/{task_id}/cancel", headers=auth)
    assert_error(resp, 400, "UnsupportedOperation")


async def test_store_treats_invalid_text_as_no_match(runtime: Runtime) -> None:
    store = runtime.store
    assert await store.get_task("\x00") is None
    assert await store.get_task("\ud800") is None
    assert await store.list_tasks("k", model="\x00") == ([], 0)
    assert await store.list_tasks("\x00") == ([], 0)


# -- data URIs ------------------------------------------------------------------------------


def big_bmp_body(**params: Any) -> dict[str, Any]:
    return seed_body(data_uri(480, 320, "BMP"), **params)  # ~460 kB: parsed in a thread


async def test_big_data_uri_is_spliced_and_kept_byte_for_byte(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    task_id = await submit(client, auth, big_bmp_body())
    row = await runtime.store.get_task(task_id)
    assert row is not None and row.request["image"]["mime"] == "image/bmp"
    kept = runtime.storage.local_path(row.request["image"]["storage_key"]).read_bytes()
    assert kept == image_bytes(480, 320, "BMP")
    assert str(input_files(runtime)[0].relative_to(runtime.settings.data_dir / "files")) == (
        f"inputs/{task_id}/image.bmp"
    )


async def test_escaped_slashes_in_a_big_data_uri_still_parse(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    raw = orjson.dumps(big_bmp_body()).replace(b"/", b"\\/")  # what PHP's encoder sends
    resp = await client.post(SUBMIT, content=raw, headers=auth)
    assert resp.status_code == 200, resp.text


async def test_corrupt_base64_in_a_big_body_is_a_400(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    body = big_bmp_body()
    uri = body["input"]["img_url"]
    body["input"]["img_url"] = uri[:300_000] + "=" + uri[300_001:]
    resp = await client.post(SUBMIT, json=body, headers=auth)
    assert_error(resp, 400, "InvalidParameter", "valid base64")
    assert input_files(runtime) == []


def test_gentle_decoding_matches_base64() -> None:
    data = bytes(range(256)) * 3000  # several windows
    text = base64.b64encode(data).decode()
    assert b64decode_gently(text, "x") == data
    assert b64decode_gently("data:a/b;base64," + text, "x", 16) == data
    spliced = parse_body(orjson.dumps({"u": "data:image/png;base64," + text}))["u"]
    assert isinstance(spliced, SplicedUri) and spliced == "data:image/png;base64,"
    assert b64decode_gently(spliced.payload, "x") == data
    for bad in (text[:-1], "A===" + text[4:], text[:8] + "*" + text[9:]):
        with pytest.raises(InvalidParameter, match="valid base64"):
            b64decode_gently(bad, "x")


async def test_decoding_runs_off_the_event_loop(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a big submit's image is probed (held here until released), /healthz answers:
    a probe on the event loop would block them until the release timed out."""
    release = threading.Event()
    threads: list[str] = []
    real_probe, real_parse = validation.probe_image, body_module.parse_chunks

    def held_probe(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        release.wait(10)
        return real_probe(*args, **kwargs)

    def parse(raw: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real_parse(raw)

    monkeypatch.setattr(validation, "probe_image", held_probe)
    monkeypatch.setattr(service_module, "parse_chunks", parse)
    pending = asyncio.ensure_future(client.post(SUBMIT, json=big_bmp_body(), headers=auth))
    for _ in range(2000):  # until parsed, and now in the probe
        if len(threads) >= 2:
            break
        await asyncio.sleep(0.01)
    for _ in range(5):
        assert (await client.get("/healthz")).status_code == 200
    assert not pending.done()
    release.set()
    assert (await pending).status_code == 200
    main = threading.main_thread().name
    assert main not in threads

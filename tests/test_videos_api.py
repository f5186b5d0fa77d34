"""The OpenAI-style videos API (``/v1/videos``): the official ``openai`` SDK against the app,
unchanged but for ``base_url`` (its async client over an ASGI transport), and raw HTTP for
what the SDK does not send (JSON bodies, Range, wrong methods)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from stillmotion.api.app import create_app
from stillmotion.api.videos import tier_for_size
from stillmotion.catalog import get_model
from stillmotion.media.geometry import output_size
from stillmotion.runtime import Runtime
from stillmotion.tasks.keys import create_key
from stillmotion.testing.images import data_uri, image_bytes

PROMPT = "A quiet harbour at dawn, the camera slowly pushes in"
JPEG = image_bytes(480, 320, "JPEG")


@pytest.fixture
async def sdk(runtime: Runtime, api_key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    app = create_app(runtime=runtime)
    base = runtime.settings.base_url
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)
    client = openai.AsyncOpenAI(
        api_key=api_key, base_url=f"{base}/v1", http_client=http, max_retries=0
    )
    try:
        yield client
    finally:
        await client.close()
        await http.aclose()


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert resp.headers["x-request-id"]
    error: dict[str, Any] = body["error"]
    return error


async def _create(client: httpx.AsyncClient, auth: dict[str, str], **fields: Any) -> httpx.Response:
    body = {"model": "wan2.6-i2v-flash", "prompt": PROMPT, "input_reference": data_uri(480, 320)}
    body.update(fields)
    return await client.post("/v1/videos", json=body, headers=auth)


async def test_sdk_round_trip(
    sdk: openai.AsyncOpenAI, runtime: Runtime, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """create_and_poll with an uploaded first frame, then retrieve, list, download (whole
    and a Range), the same task on the native surface, and delete."""
    await runtime.start_worker()
    video = await sdk.videos.create_and_poll(
        model="wan2.6-i2v-flash",
        prompt=PROMPT,
        input_reference=("frame.jpg", JPEG, "image/jpeg"),
        seconds="2",  # type: ignore[arg-type]
        size="1280x720",
        extra_body={"seed": 7, "audio": False, "prompt_extend": False},
        poll_interval_ms=50,
    )
    assert video.status == "completed", video
    assert video.object == "video" and video.model == "wan2.6-i2v-flash"
    assert video.progress == 100 and video.error is None and video.seconds == "2"
    width, height = output_size(480, 320, "720P")
    assert video.size == f"{width}x{height}"  # the first frame's aspect ratio at 720P's area
    assert video.completed_at is not None and video.completed_at >= video.created_at
    assert video.expires_at is not None and video.expires_at > video.completed_at
    assert (await sdk.videos.retrieve(video.id)).id == video.id

    listed = [v.id async for v in sdk.videos.list()]
    assert listed == [video.id]

    mp4 = await sdk.videos.download_content(video.id)
    data = await mp4.aread()
    assert data[4:8] == b"ftyp"
    part = await client.get(
        f"/v1/videos/{video.id}/content", headers={**auth, "Range": "bytes=0-99"}
    )
    assert part.status_code == 206 and part.content == data[:100]
    assert part.headers["content-type"] == "video/mp4"
    assert part.headers["content-range"] == f"bytes 0-99/{len(data)}"

    native = (await client.get(f"/task/{video.id}", headers=auth)).json()["output"]
    assert native["task_status"] == "SUCCEEDED"
    assert native["orig_prompt"] == PROMPT
    task = await runtime.store.get_task(video.id)
    assert task is not None
    assert task.request["seed"] == 7 and task.request["audio"] is False
    assert task.request["resolution"] == "720P" and task.request["duration"] == 2

    assert task.result is not None
    key = task.result["video_key"]
    assert [k for k, _ in await runtime.storage.list_files("videos/")] == [key]
    deleted = await sdk.videos.delete(video.id)
    assert deleted.id == video.id and deleted.deleted and deleted.object == "video.deleted"
    # a finished video's file goes at once; the task (and its ledger) stays, expired
    assert await runtime.storage.list_files("videos/") == []
    assert (await sdk.videos.retrieve(video.id)).status == "completed"
    error = _error(await client.get(f"/v1/videos/{video.id}/content", headers=auth), 410)
    assert error["code"] == "ResultExpired" and "deleted by its owner" in error["message"]
    native = (await client.get(f"/task/{video.id}", headers=auth)).json()["output"]
    assert native["result_expired"] is True and "video_url" not in native


async def test_json_bodies_in_every_body_generation(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    first, last = data_uri(480, 320, "JPEG"), data_uri(480, 320, "PNG", seed=9)
    # legacy: input.img_url
    resp = await _create(client, auth, size="720x1280", seconds=3, negative_prompt="blur")
    assert resp.status_code == 200, resp.text
    video = resp.json()
    assert video["status"] == "queued" and video["progress"] == 0 and video["seconds"] == "3"
    assert video["size"] == "1280x720" and video["completed_at"] is None
    row = await runtime.store.get_task(video["id"])
    assert row is not None and row.request["negative_prompt"] == "blur"
    assert row.request["image"]["storage_key"]  # the data: URI, kept like any other
    # media[]: first and last frame; the OpenAI reference object form
    resp = await _create(
        client,
        auth,
        model="wan2.7-i2v",
        input_reference={"image_url": first},
        extra_body={"last_frame": last},
        size="1920x1080",
    )
    assert resp.status_code == 200, resp.text
    row = await runtime.store.get_task(resp.json()["id"])
    assert row is not None and row.request["last_frame"] and row.request["resolution"] == "1080P"
    # kf2v: the last frame is required
    error = _error(await _create(client, auth, model="wan2.2-kf2v-flash"), 400)
    assert error["param"] == "last_frame" and error["code"] == "InvalidParameter"
    resp = await _create(client, auth, model="wan2.2-kf2v-flash", last_frame=last, size="832x480")
    assert resp.status_code == 200, resp.text
    native = (await client.get(f"/task/{resp.json()['id']}", headers=auth)).json()
    assert native["output"]["task_status"] == "PENDING"
    # a legacy model takes no last frame
    error = _error(await _create(client, auth, last_frame=last), 400)
    assert error["param"] == "last_frame"


@pytest.mark.parametrize(
    ("fields", "param", "code", "status"),
    [
        ({"size": "1920x1080", "model": "wanx2.1-i2v-plus"}, "size", "InvalidParameter", 400),
        ({"size": "832x480"}, "size", "InvalidParameter", 400),  # no 480P tier
        ({"size": "big"}, "size", "InvalidParameter", 400),
        ({"seconds": "4", "model": "wan2.2-i2v-flash"}, "seconds", "InvalidParameter", 400),
        ({"seconds": "3", "duration": 4}, "seconds", "InvalidParameter", 400),
        ({"model": "sora-2"}, "model", "InvalidParameter", 400),
        ({"model": None}, "model", "BadRequest.EmptyModel", 400),
        ({"input_reference": None}, "input_reference", "InvalidParameter", 400),
        ({"input_reference": "ftp://x/y.png"}, "input_reference", "InvalidURL", 400),
        ({"input_reference": {"file_id": "file-1"}}, "input_reference", "InvalidParameter", 400),
        ({"seed": -1}, "seed", "InvalidParameter", 400),
        ({"audio": "yes"}, "audio", "InvalidParameter", 400),
        ({"prompt": 5}, "prompt", "InvalidParameter", 400),
        ({"colour": "red"}, "colour", "InvalidParameter", 400),
        ({"resolution": "480P"}, "resolution", "InvalidParameter", 400),
    ],
)
async def test_create_errors_name_the_field(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    fields: dict[str, Any],
    param: str,
    code: str,
    status: int,
) -> None:
    error = _error(await _create(client, auth, **fields), status)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert error["message"].startswith(param) or "required" in error["message"], error


async def test_sdk_errors(sdk: openai.AsyncOpenAI, client: httpx.AsyncClient) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        await sdk.videos.create(
            model="wan2.6-i2v-flash",
            prompt=PROMPT,
            input_reference=("notes.txt", b"hello, not an image", "text/plain"),
        )
    assert refused.value.status_code == 415
    assert refused.value.code == "BadRequest.UnsupportedFileFormat"
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.videos.create(
            model="wan2.6-i2v-flash",
            prompt=PROMPT,
            input_reference=("f.jpg", JPEG, "image/jpeg"),
            size="1024x1792",
            seconds="20",  # type: ignore[arg-type]
        )
    assert (bad.value.code, bad.value.param) == ("InvalidParameter", "seconds")
    assert bad.value.request_id
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.videos.retrieve("00000000-0000-0000-0000-000000000000")
    assert missing.value.code == "NotFound"
    stranger = openai.AsyncOpenAI(
        api_key="sk-nope", base_url=str(sdk.base_url), http_client=sdk._client, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as denied:
        await stranger.videos.list()
    assert denied.value.code == "InvalidApiKey" and denied.value.type == "authentication_error"


async def test_upload_that_is_not_an_image_is_415(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    files = {"input_reference": ("notes.txt", b"hello", "text/plain")}
    data = {"model": "wan2.6-i2v-flash", "prompt": PROMPT}
    resp = await client.post("/v1/videos", data=data, files=files, headers=auth)
    error = _error(resp, 415)
    assert (error["code"], error["param"]) == (
        "BadRequest.UnsupportedFileFormat",
        "input_reference",
    )


async def test_other_errors_take_the_openai_shape_here_only(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Any
) -> None:
    assert _error(await client.get("/v1/videos"), 401)["code"] == "InvalidApiKey"
    assert _error(await client.put("/v1/videos", headers=auth), 405)["code"] == "MethodNotAllowed"
    assert _error(await client.get("/v1/videos/a/b/c", headers=auth), 404)["code"] == "NotFound"
    error = _error(await client.get("/v1/videos", params={"limit": 0}, headers=auth), 400)
    assert (error["code"], error["param"]) == ("InvalidParameter", "limit")
    error = _error(await client.get("/v1/videos", params={"order": "up"}, headers=auth), 400)
    assert error["param"] == "order"
    resp = await client.post(
        "/v1/videos", content=b"x" * (settings.max_body_bytes + 1), headers=auth
    )
    assert _error(resp, 413)["code"] == "BadRequest.TooLarge"
    assert _error(await client.post("/v1/videos", content=b"{", headers=auth), 400)
    # the other surfaces keep theirs
    resp = await client.get("/task/x/y", headers=auth)
    assert resp.status_code == 404 and set(resp.json()) == {"request_id", "code", "message"}


async def test_content_while_queued_and_variants(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    video = (await _create(client, auth)).json()
    url = f"/v1/videos/{video['id']}/content"
    error = _error(await client.get(url, headers=auth), 404)
    assert error["code"] == "NotFound" and "queued" in error["message"]
    for variant in ("thumbnail", "spritesheet", "poster"):
        error = _error(await client.get(url, params={"variant": variant}, headers=auth), 400)
        assert error["param"] == "variant"


async def test_delete_cancels_a_queued_video(
    sdk: openai.AsyncOpenAI, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    video = (await _create(client, auth)).json()
    deleted = await sdk.videos.delete(video["id"])
    assert deleted.deleted
    native = (await client.get(f"/task/{video['id']}", headers=auth)).json()
    assert native["output"]["task_status"] == "CANCELED"
    again = await sdk.videos.retrieve(video["id"])
    assert again.status == "failed" and again.error is not None
    assert again.error.code == "canceled"
    assert (await sdk.videos.delete(video["id"])).deleted  # a finished one: OK again
    with pytest.raises(openai.NotFoundError):
        await sdk.videos.delete("no-such-video")


async def test_list_pages_with_cursors(
    sdk: openai.AsyncOpenAI, client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    ids = []
    for n in range(5):
        resp = await _create(client, auth, seed=n)
        assert resp.status_code == 200, resp.text
        ids.append(resp.json()["id"])
    other = (await create_key(runtime.store, "other")).key
    resp = await _create(client, {"Authorization": f"Bearer {other}"})
    assert resp.status_code == 200  # another key's: never listed here
    newest = list(reversed(ids))

    page = await sdk.videos.list(limit=2)
    assert [v.id for v in page.data] == newest[:2] and page.has_more
    assert [v.id async for v in sdk.videos.list(limit=2)] == newest  # the SDK follows last_id
    assert [v.id async for v in sdk.videos.list(limit=2, order="asc")] == ids
    page = await sdk.videos.list(after=ids[3], limit=10)
    assert [v.id for v in page.data] == newest[2:] and not page.has_more
    page = await sdk.videos.list(after=ids[1], order="asc", limit=2)
    assert [v.id for v in page.data] == ids[2:4] and page.has_more
    raw = (await client.get("/v1/videos", params={"limit": 100}, headers=auth)).json()
    assert raw["object"] == "list" and raw["first_id"] == newest[0] and raw["last_id"] == ids[0]
    error = _error(await client.get("/v1/videos", params={"after": "nope"}, headers=auth), 400)
    assert error["param"] == "after"


async def test_idempotency_key_over_multipart(sdk: openai.AsyncOpenAI) -> None:
    """A form's boundary is new on each send: the key is matched on the body we submit."""

    async def send(prompt: str) -> str:
        video = await sdk.videos.create(
            model="wan2.6-i2v-flash",
            prompt=prompt,
            input_reference=("f.jpg", JPEG, "image/jpeg"),
            extra_headers={"Idempotency-Key": "videos-1"},
        )
        return video.id

    first = await send(PROMPT)
    assert await send(PROMPT) == first
    with pytest.raises(openai.BadRequestError) as conflict:
        await send("another prompt")
    assert conflict.value.code == "InvalidParameter"


async def test_big_json_bodies_and_their_idempotency_keys(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    """A body over the inline size (its data: URI cut out of the JSON, not copied) works, and
    its Idempotency-Key is matched on the whole body: another image is another request."""
    big = data_uri(1200, 900, "PNG")
    assert len(big) > 256 * 1024  # tasks/body.py INLINE_BYTES
    headers = {**auth, "Idempotency-Key": "big-1"}
    body = {"model": "wan2.6-i2v-flash", "prompt": PROMPT, "input_reference": big}
    first = await client.post("/v1/videos", json=body, headers=headers)
    assert first.status_code == 200, first.text
    again = await client.post("/v1/videos", json=body, headers=headers)
    assert again.json()["id"] == first.json()["id"]
    other = {**body, "input_reference": data_uri(1200, 900, "PNG", seed=3)}
    error = _error(await client.post("/v1/videos", json=other, headers=headers), 400)
    assert "Idempotency-Key" in error["message"]
    row = await runtime.store.get_task(first.json()["id"])
    assert row is not None and row.request["image"]["storage_key"]


async def test_concurrent_creates_keep_their_own_uploads(sdk: openai.AsyncOpenAI) -> None:
    videos = await asyncio.gather(
        *(
            sdk.videos.create(
                model="wan2.6-i2v-flash",
                prompt=f"{PROMPT} {n}",
                input_reference=(f"{n}.png", image_bytes(320, 480, "PNG", seed=n), "image/png"),
                size="720x1280",
            )
            for n in range(3)
        )
    )
    assert len({v.id for v in videos}) == 3
    assert all(v.status == "queued" and v.size == "1280x720" for v in videos)


def test_size_picks_the_nearest_tier() -> None:
    spec = get_model("wan3.0-video")
    assert spec is not None
    assert tier_for_size("832x480", spec) == "480P"
    assert tier_for_size("480x832", spec) == "480P"
    assert tier_for_size("1280x720", spec) == "720P" == tier_for_size("720x1280", spec)
    assert tier_for_size("1920x1080", spec) == "1080P" == tier_for_size("1024x1792", spec)
    for bad in ("100x100", "8000x8000", "0x720", "1280 by 720"):
        with pytest.raises(Exception, match="size"):
            tier_for_size(bad, spec)

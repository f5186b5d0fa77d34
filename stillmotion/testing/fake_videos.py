"""A fake OpenAI-style ``/v1/videos`` server (as vLLM-Omni serves it) over real HTTP.

    with FakeVideosServer() as fake:             # 127.0.0.1, a free port, its own thread
        base = fake.base_url                     # "http://127.0.0.1:PORT/v1"
        fake.state.add_fault(VideoFault("submit", status=429, retry_after=1))
        len(fake.state.submits)                  # every submit that reached it

or ``stillmotion fake-videos --port 8002``. Behaviour, prompt directives and the
``/_control`` endpoint are documented in docs/fake-videos.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import io
import json
import re
import socket
import time
from collections.abc import Callable
from email import policy
from email.parser import BytesParser
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import av
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from stillmotion.testing.fake_videos_state import (
    SUBMIT_ID_HEADER,
    FakeVideo,
    FakeVideosConfig,
    FakeVideosState,
    VideoFault,
)
from stillmotion.testing.loopback import DropResponse, LoopbackServer, serve_foreground

__all__ = [
    "SUBMIT_ID_HEADER",
    "FakeVideo",
    "FakeVideosConfig",
    "FakeVideosServer",
    "FakeVideosState",
    "VideoFault",
    "create_fake_videos_app",
    "error",
    "make_mp4",
    "normalise",
    "serve",
]

MAX_BODY = 64 * 1024 * 1024
SIZE = re.compile(r"^(\d+)x(\d+)$")
SECONDS = re.compile(r"^[1-9]\d*$")
INT_FIELDS = ("num_inference_steps", "seed", "num_frames", "fps", "width", "height")
FLOAT_FIELDS = (
    *("guidance_scale", "guidance_scale_2", "boundary_ratio", "flow_shift", "true_cfg_scale"),
)
STR_FIELDS = ("negative_prompt", "user")
#: the extension objects engine extras may come in: Dynamo's ``nvext``, vLLM-Omni's
#: ``extra_params`` (a JSON string in a form) and ``extra_body`` (a client's name for it)
EXTENSIONS = ("nvext", "extra_params", "extra_body")
BOTH_REFERENCES = "Provide either input_reference or image_reference, not both."


def error(
    status: int,
    message: str,
    *,
    type: str = "",  # noqa: A002 - the field's name
    code: str | int | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error in the OpenAI shape as vLLM answers it: ``type`` the HTTP reason phrase,
    ``code`` the status, unless given."""
    body = {
        "error": {
            "message": message,
            "type": type or HTTPStatus(status).phrase,
            "param": param,
            "code": status if code is None else code,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _fault_response(fault: VideoFault) -> JSONResponse:
    status = fault.status or 500
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = f"{fault.retry_after:g}"
    message = fault.message or f"scripted HTTP {status}"
    return error(status, message, type=fault.type, code=fault.code, headers=headers)


class _Invalid(ValueError):
    """A request the fake refuses with 400 (the message says why)."""


# -- reading a create request -----------------------------------------------------------------


def _parse_multipart(content_type: str, raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(fields, files)`` of a ``multipart/form-data`` body (the stdlib's MIME parser)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=policy.HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        raise _Invalid("the multipart body could not be parsed (no boundary?)")
    fields: dict[str, Any] = {}
    files: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        filename = part.get_filename()
        if filename is None:
            fields[name] = data.decode("utf-8", "replace")
        else:
            files[name] = {
                "filename": filename,
                "content_type": part.get_content_type(),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
    return fields, files


async def _read_create(request: Request) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(kind, body, files)`` of a create request: JSON, multipart or a urlencoded form."""
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise _Invalid(f"the body is larger than {MAX_BODY} bytes")
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        fields, files = _parse_multipart(content_type, raw)
        return kind, fields, files
    if kind == "application/x-www-form-urlencoded":
        return kind, dict(parse_qsl(raw.decode("utf-8", "replace"))), {}
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise _Invalid("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _Invalid("the request body must be a JSON object")
    return "application/json", body, {}


def _object(value: Any, name: str) -> dict[str, Any] | None:
    """A JSON object field, which a form sends JSON-encoded."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _Invalid(f"{name}: not a JSON object") from None
    if not isinstance(value, dict):
        raise _Invalid(f"{name}: not a JSON object")
    return value


def _reference(value: Any, name: str) -> dict[str, Any]:
    """What an image reference is: an http(s) URL, a base64 data URI, or ``{image_url}``."""
    if isinstance(value, dict) or (isinstance(value, str) and value.lstrip().startswith("{")):
        obj = _object(value, name) or {}
        if "file_id" in obj:
            raise _Invalid(f"{name}: file_id references are not implemented")
        value = obj.get("image_url")
    if not isinstance(value, str):
        raise _Invalid(f"{name}: an http(s) URL, a data URI or a file")
    if value.startswith(("http://", "https://")):
        return {"type": "url", "url": value}
    if value.startswith("data:"):
        meta, sep, payload = value[5:].partition(",")
        if not sep or not meta.endswith(";base64"):
            raise _Invalid(f"{name}: a data URI must be base64 (data:<type>;base64,...)")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid(f"{name}: the data URI is not valid base64") from None
        return {"type": "data", "media_type": meta[: -len(";base64")], "bytes": len(data)}
    raise _Invalid(f"{name}: an http(s) URL, a data URI or a file")


def _coerce(name: str, value: Any) -> Any:
    try:
        if name in INT_FIELDS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if name in FLOAT_FIELDS:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
    except (TypeError, ValueError):
        kind = "an integer" if name in INT_FIELDS else "a number"
        raise _Invalid(f"{name}: {kind}, not {value!r}") from None
    return str(value)


def normalise(
    body: dict[str, Any], files: dict[str, Any], config: FakeVideosConfig
) -> dict[str, Any]:
    """The request as the fake reads it: ``model``, ``prompt``, ``seconds`` (a string),
    ``width``/``height``, ``input_reference`` (what it was) and the engine extras present,
    from the top level or (filling gaps) an extension object. Raises :class:`_Invalid`."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _Invalid("prompt: Field required")
    merged = dict(body)
    for ext in EXTENSIONS:
        for key, value in (_object(body.get(ext), ext) or {}).items():
            merged.setdefault(key, value)
    params: dict[str, Any] = {"model": str(body.get("model") or config.model), "prompt": prompt}
    for name in (*INT_FIELDS, *FLOAT_FIELDS, *STR_FIELDS):
        if merged.get(name) not in (None, ""):
            params[name] = _coerce(name, merged[name])
    for name in ("num_frames", "fps", "num_inference_steps"):
        if name in params and params[name] < 1:
            raise _Invalid(f"{name}: at least 1")
    seconds = merged.get("seconds")
    if seconds in (None, ""):
        seconds = config.seconds
    if isinstance(seconds, bool) or not SECONDS.match(str(seconds)):
        raise _Invalid(f"seconds: a whole number of seconds (as a string), not {seconds!r}")
    params["seconds"] = str(seconds)
    params["width"], params["height"] = _size(merged.get("size"), params, config)
    reference = _input_reference(merged, files)
    if reference is not None:
        params["input_reference"] = reference
    return params


def _size(size: Any, params: dict[str, Any], config: FakeVideosConfig) -> tuple[int, int]:
    """``size`` (``WIDTHxHEIGHT``), else ``width`` and ``height``, else the default."""
    if size not in (None, ""):
        match = SIZE.match(str(size))
        if match is None:
            raise _Invalid(f"size: WIDTHxHEIGHT, not {size!r}")
        width, height = int(match[1]), int(match[2])
    elif "width" in params and "height" in params:
        width, height = params["width"], params["height"]
    else:
        width, height = (int(side) for side in config.size.split("x"))
    for side in (width, height):
        if not 2 <= side <= config.max_side or side % 2:
            limit = config.max_side
            raise _Invalid(f"size: even sides from 2 to {limit} (H.264), not {width}x{height}")
    return width, height


def _input_reference(merged: dict[str, Any], files: dict[str, Any]) -> dict[str, Any] | None:
    """A file part ``input_reference``, else the ``input_reference`` field, else vLLM-Omni's
    ``image_reference``; never two of them."""
    image_reference = merged.get("image_reference")
    given = [
        "input_reference" in files,
        merged.get("input_reference") not in (None, ""),
        image_reference not in (None, ""),
    ]
    if sum(given) > 1:
        raise _Invalid(BOTH_REFERENCES)
    if given[0]:
        return {"type": "file", **files["input_reference"]}
    if given[1]:
        return _reference(merged["input_reference"], "input_reference")
    if given[2]:
        return _reference(image_reference, "image_reference")
    return None


# -- the result ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def make_mp4(width: int, height: int, frames: int, fps: int) -> bytes:
    """A real H.264 MP4, ``width`` x ``height``: a gradient that moves, ``frames`` at ``fps``."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        ramp = np.linspace(0, 255, width, dtype=np.float32)
        for i in range(frames):
            row = ((ramp + i * 8) % 256).astype(np.uint8)
            rgb = np.ascontiguousarray(np.broadcast_to(row[None, :, None], (height, width, 3)))
            out.mux(video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(video.encode())
    return buf.getvalue()


# -- the routes ------------------------------------------------------------------------------


class _Api:
    """The fake's route handlers over one :class:`FakeVideosState`."""

    def __init__(self, state: FakeVideosState) -> None:
        self.state = state

    async def gate(self, request: Request, op: str) -> tuple[Response | None, VideoFault | None]:
        """Count, authenticate and apply a scripted fault: ``(answer, fault)``; an answer
        ends the request (a submit fault with ``create`` or ``drop`` is answered later)."""
        answer, fault = await self._gate(request, op)
        with self.state.lock:
            self.state.requests[op] += 1
            status = answer.status_code if answer is not None else 200
            self.state.log.append((self.state.clock(), op, status))
        return answer, fault

    async def _gate(self, request: Request, op: str) -> tuple[Response | None, VideoFault | None]:
        key, accepted = self.state.check_key(request.headers.get("authorization"))
        if not accepted:
            message = "Unauthorized" if key else "Missing bearer token"
            return error(401, message, headers={"WWW-Authenticate": "Bearer"}), None
        request.state.key = key
        fault = self.state.take_fault(op)
        if fault is None:
            return None, None
        await asyncio.sleep(fault.delay)
        if fault.status is not None and not (op == "submit" and fault.create):
            return _fault_response(fault), fault
        return None, fault

    async def create(self, request: Request) -> Any:
        answer, fault = await self.gate(request, "submit")
        if answer is not None:
            return answer
        try:
            kind, body, files = await _read_create(request)
            params = normalise(body, files, self.state.config)
        except _Invalid as exc:
            return error(400, str(exc))
        record = {"content_type": kind, "body": body, "files": files, "params": params}
        submit_id = request.headers.get(SUBMIT_ID_HEADER) or None
        video, _ = self.state.submit(request.state.key, record, params, submit_id)
        if fault is not None and fault.drop:
            return DropResponse(b'{"id": "video_gen_')
        if fault is not None and fault.create and fault.status is not None:
            return _fault_response(fault)
        return video.view(self.state.clock())

    async def retrieve(self, video_id: str, request: Request) -> Any:
        answer, _ = await self.gate(request, "get")
        if answer is not None:
            return answer
        video = self.state.get(video_id)
        if video is None:
            return error(404, "Video not found")
        return video.view(self.state.clock())

    async def list_videos(self, request: Request) -> Any:
        answer, _ = await self.gate(request, "list")
        if answer is not None:
            return answer
        query = request.query_params
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            return error(400, "order: 'asc' or 'desc'", param="order")
        limit: int | None = None
        if query.get("limit") not in (None, ""):
            try:
                limit = int(query["limit"])
            except ValueError:
                limit = -1
            if not 0 <= limit <= 100:
                return error(400, "limit: an integer from 0 to 100", param="limit")
        videos = sorted(self.state.listing(), key=lambda v: (v.created, v.seq))
        if order == "desc":
            videos.reverse()
        after = query.get("after")
        if after:
            index = next((i for i, v in enumerate(videos) if v.id == after), None)
            videos = [] if index is None else videos[index + 1 :]
        has_more = limit is not None and len(videos) > limit
        if limit is not None:
            videos = videos[:limit]
        now = self.state.clock()
        data = [v.view(now) for v in videos]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }

    async def delete(self, video_id: str, request: Request) -> Any:
        answer, _ = await self.gate(request, "delete")
        if answer is not None:
            return answer
        if not self.state.delete(video_id):
            return error(404, "Video not found")
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    async def content(self, video_id: str, request: Request) -> Response:
        answer, _ = await self.gate(request, "content")
        if answer is not None:
            return answer
        video = self.state.get(video_id)
        if video is None:
            return error(404, "Video not found")
        status = video.status_at(self.state.clock())
        if status == "failed":
            return error(422, "Video generation failed. Check job status for error details.")
        if status != "completed":
            return error(404, "Generation is still in-progress")
        data = await asyncio.to_thread(make_mp4, video.width, video.height, video.frames, video.fps)
        disposition = f'attachment; filename="{video.id}.mp4"'
        return Response(data, media_type="video/mp4", headers={"Content-Disposition": disposition})

    async def models(self, request: Request) -> Any:
        _, accepted = self.state.check_key(request.headers.get("authorization"))
        if not accepted:
            return error(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})
        model = self.state.config.model
        item = {"id": model, "object": "model", "created": 0, "owned_by": "vllm", "root": model}
        return {"object": "list", "data": [item]}

    async def health(self) -> Response:
        return Response(status_code=200)

    async def control(self, request: Request) -> Any:
        try:
            return self.state.control(await request.json())
        except (TypeError, ValueError) as exc:
            return error(400, str(exc))

    async def stats(self) -> Any:
        return self.state.stats()


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods in the OpenAI error shape too, as vLLM answers them."""
    assert isinstance(exc, StarletteHTTPException)
    return error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


def create_fake_videos_app(state: FakeVideosState | None = None) -> FastAPI:
    """The fake's ASGI app; ``app.state.fake`` is its :class:`FakeVideosState`."""
    api = _Api(state or FakeVideosState())
    app = FastAPI(title="fake /v1/videos", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.fake = api.state
    app.add_exception_handler(StarletteHTTPException, _http_error)
    routes: list[tuple[str, str, Any]] = [
        ("POST", "/v1/videos", api.create),
        ("GET", "/v1/videos", api.list_videos),
        ("GET", "/v1/videos/{video_id}", api.retrieve),
        ("DELETE", "/v1/videos/{video_id}", api.delete),
        ("GET", "/v1/videos/{video_id}/content", api.content),
        ("GET", "/v1/models", api.models),
        ("GET", "/health", api.health),
        ("POST", "/_control", api.control),
        ("GET", "/_control", api.stats),
    ]
    for method, path, handler in routes:
        app.add_api_route(path, handler, methods=[method])
    return app


class FakeVideosServer(LoopbackServer):
    """The fake on ``host`` (a free port unless given), served by uvicorn in a thread."""

    name = "fake videos server"

    def __init__(
        self,
        config: FakeVideosConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = FakeVideosState(config, clock=clock)
        super().__init__(create_fake_videos_app(self.state), host=host, port=port)

    @property
    def base_url(self) -> str:
        """What an OpenAI client uses as its ``base_url`` (with ``/v1``)."""
        return f"{self.root_url}/v1"


def serve(
    sock: socket.socket, config: FakeVideosConfig, *, ready: Callable[[int], None] | None = None
) -> None:
    """Run the fake in the foreground on the bound ``sock`` (the ``stillmotion fake-videos``
    command); ``ready`` is called with its port once it accepts connections."""
    serve_foreground(create_fake_videos_app(FakeVideosState(config)), sock, ready=ready)

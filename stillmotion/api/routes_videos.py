"""The OpenAI-style videos surface (``/v1/videos``): what the ``openai`` SDK's
``client.videos`` calls once its ``base_url`` points here. The tasks are the same tasks as
every other surface's (one id, the same key's); the mapping is in ``api/videos.py``; errors
take OpenAI's shape on these paths (``api/errors.py``). docs/api.md, "OpenAI-style videos".
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.datastructures import FormData, UploadFile

from stillmotion.api import videos
from stillmotion.api.deps import Caller, get_caller
from stillmotion.api.errors import no_retry_on_error
from stillmotion.api.openapi import ERRORS, SECURED
from stillmotion.api.responses import JSONResponse
from stillmotion.api.routes_bailian import idempotency, read_body
from stillmotion.api.routes_files import serve_object
from stillmotion.domain import TaskStatus
from stillmotion.errors import (
    InvalidParameter,
    NotFound,
    ResultExpired,
    ServiceError,
    UnsupportedOperation,
)
from stillmotion.tasks.retention import expired_message
from stillmotion.tasks.store import TaskRow
from stillmotion.tasks.webhooks import CALLBACK_HEADER

router = APIRouter(prefix="/v1/videos", tags=["videos"])

IDEMPOTENCY_HEADER = "idempotency-key"
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_BRACKETS = "["
RUNNING_REFUSED = (
    "Video {id} is in progress and cannot be deleted until it ends (or cancel it while it is "
    "queued)."
)


# -- the documented shapes (the answers are built as dicts: api/videos.py) ------------------


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="`invalid_request_error`, `authentication_error`, ...")
    param: str | None = Field(description="The request field at fault, when known.")
    code: str = Field(description="Our DashScope error code, e.g. `InvalidParameter`.")


class OpenAIErrorResponse(BaseModel):
    """Every error answer on `/v1/videos` (OpenAI's error shape)."""

    error: OpenAIErrorDetail


class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    id: str
    object: Literal["video"]
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = Field(ge=0, le=100)
    created_at: int
    completed_at: int | None
    expires_at: int | None
    error: VideoError | None
    seconds: str
    size: str = Field(description="`WxH`: the real output size once completed.")
    prompt: str | None
    remixed_from_video_id: None


class VideoList(BaseModel):
    object: Literal["list"]
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"]
    deleted: bool


class VideoCreateBody(BaseModel):
    """`POST /v1/videos` (JSON; as a multipart form `input_reference` may be a file)."""

    prompt: str | None = None
    model: str = Field(description="One of our models (`GET /v1/models`).")
    input_reference: str | dict[str, str] | None = Field(
        None, description='The first frame: an http(s) URL, a data: URI, or {"image_url": ...}.'
    )
    seconds: str | int | None = Field(None, description="The duration; one the model allows.")
    size: str | None = Field(None, description="`WxH`: picks the resolution tier.")
    negative_prompt: str | None = None
    seed: int | None = None
    resolution: str | None = None
    duration: int | None = None
    audio: bool | None = None
    prompt_extend: bool | None = None
    watermark: bool | None = None
    shot_type: str | None = None
    template: str | None = None
    last_frame: str | dict[str, str] | None = Field(None, description="kf2v / media models.")
    audio_url: str | None = None


def _errors(*statuses: int, notes: dict[int, str] | None = None) -> dict[int | str, Any]:
    notes = notes or {}
    return {
        status: {"model": OpenAIErrorResponse, "description": notes.get(status) or ERRORS[status]}
        for status in statuses
    }


def _create_extra() -> dict[str, Any]:
    schema = VideoCreateBody.model_json_schema()  # flat: no $defs to place
    form = {
        "type": "object",
        "required": ["prompt", "model"],
        "properties": {
            **{name: {"type": "string"} for name in sorted(videos.KNOWN)},
            "input_reference": {"type": "string", "format": "binary"},
            "last_frame": {"type": "string", "format": "binary"},
        },
    }
    content = {"application/json": {"schema": schema}, "multipart/form-data": {"schema": form}}
    return {"requestBody": {"content": content, "required": True}, **SECURED}


_THROTTLED = {429: "`Throttling.RateQuota` / `Throttling.AllocationQuota`: a limit of the key."}


# -- create -----------------------------------------------------------------------------


@router.post(
    "",
    response_model=Video,
    summary="Create a video (OpenAI-style; JSON or multipart with an input_reference file)",
    responses=_errors(400, 401, 413, 415, 429, 500, notes=_THROTTLED),
    openapi_extra=_create_extra(),
)
async def create(request: Request) -> Any:
    await no_retry_on_error(request)
    caller = await get_caller(request)
    service = caller.runtime.service
    fields, idem, form = await _read_fields(request, caller)
    submit = videos.build_submit(await videos.encode_uploads(fields, service.off_loop))
    if form and IDEMPOTENCY_HEADER in request.headers:
        # a form's boundary is new on every send: the key is matched on what we submit
        idem = await idempotency(request, [orjson.dumps(submit.body, option=orjson.OPT_SORT_KEYS)])
    try:
        row = await service.submit(
            caller.key, submit.body, idempotency=idem, callback=request.headers.get(CALLBACK_HEADER)
        )
    except ServiceError as exc:
        raise submit.name_field(exc) from None
    return _answer(caller, videos.video_object(row, caller.runtime.renderer))


async def _read_fields(
    request: Request, caller: Caller
) -> tuple[dict[str, Any], tuple[str, str] | None, bool]:
    """``(fields, idempotency, is a form)``: a form's fields (files as ``videos.Upload``), or
    a JSON object's, whose ``Idempotency-Key`` is matched on its bytes as for every submit."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith(FORM_TYPES):
        limit = caller.runtime.settings.max_body_bytes
        form = await request.form(max_part_size=limit)
        try:
            return await _form_fields(form), None, True
        finally:
            await form.close()
    chunks = await read_body(request)
    idem = await idempotency(request, chunks)
    body = await caller.runtime.service.parse(chunks)
    if not isinstance(body, dict):
        raise InvalidParameter("The request body must be a JSON object (or multipart/form-data).")
    return body, idem, False


async def _form_fields(form: FormData) -> dict[str, Any]:
    """A form's fields; ``name[key]`` (how the SDK sends an object) is ``{key: value}``."""
    fields: dict[str, Any] = {}
    for name, value in form.multi_items():
        item: Any
        if isinstance(value, UploadFile):
            item = videos.Upload(await value.read(), value.content_type, value.filename)
        else:
            item = videos.form_value(name, value)
        if _BRACKETS in name and name.endswith("]"):
            outer, _, inner = name[:-1].partition(_BRACKETS)
            nested = fields.setdefault(outer, {})
            if not isinstance(nested, dict):
                raise videos.with_param(
                    InvalidParameter(f"{outer} is given both as a value and as an object."), outer
                )
            nested[inner] = item
        else:
            fields[name] = item
    return fields


# -- retrieve, list, delete --------------------------------------------------------------


@router.get(
    "/{video_id}",
    response_model=Video,
    summary="Retrieve a video (OpenAI-style)",
    responses=_errors(400, 401, 404, 500),
    openapi_extra=SECURED,
)
async def retrieve(video_id: str, request: Request) -> Any:
    caller = await get_caller(request)
    row = await _task(caller, video_id)
    return _answer(caller, videos.video_object(row, caller.runtime.renderer))


@router.get(
    "",
    response_model=VideoList,
    summary="List the caller's videos (OpenAI-style cursor pages)",
    responses=_errors(400, 401, 500),
    openapi_extra=SECURED,
)
async def list_videos(
    request: Request,
    after: Annotated[str | None, Query(max_length=64, description="A video id.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> Any:
    caller = await get_caller(request)
    service, key_id = caller.runtime.service, caller.key.id
    cursor = None
    if after is not None:
        cursor = await service.get(key_id, after)
        if cursor is None:
            raise videos.with_param(
                InvalidParameter(f"after: no video with id {after!r}."), "after"
            )

    async def list_page(**kwargs: Any) -> tuple[list[TaskRow], int]:
        return await service.list(key_id, **kwargs)

    read = videos.newest_first if order == "desc" else videos.oldest_first
    rows = await read(list_page, cursor, limit + 1)
    page = [videos.video_object(r, caller.runtime.renderer) for r in rows[:limit]]
    return _answer(
        caller,
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(rows) > limit,
        },
    )


@router.delete(
    "/{video_id}",
    response_model=VideoDeleted,
    summary="Delete a video (OpenAI-style): cancels a queued one, deletes a finished one's file",
    responses=_errors(
        400, 401, 404, 500, notes={400: "`UnsupportedOperation`: the video is in progress."}
    ),
    openapi_extra=SECURED,
)
async def delete(video_id: str, request: Request) -> Any:
    caller = await get_caller(request)
    row = await _task(caller, video_id)
    if not row.status.terminal:
        try:
            await caller.runtime.service.cancel(caller.key.id, row.id)
        except UnsupportedOperation:
            current = await caller.runtime.service.get(caller.key.id, row.id)
            if current is None or not current.status.terminal:
                raise UnsupportedOperation(RUNNING_REFUSED.format(id=row.id)) from None
    else:  # its video and kept inputs go now; the record and the ledger stay (docs/api.md)
        await caller.runtime.store.retention.expire_task(caller.runtime.storage, row.id)
    return _answer(caller, {"id": row.id, "object": "video.deleted", "deleted": True})


# -- content -----------------------------------------------------------------------------


@router.head("/{video_id}/content", include_in_schema=False)
@router.get(
    "/{video_id}/content",
    summary="Download a video's MP4 (OpenAI-style; Range supported)",
    response_class=Response,
    responses={
        200: {"content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}},
        206: {"description": "The requested `Range` of the MP4."},
        416: {"description": "The requested `Range` is not satisfiable."},
        **_errors(
            400,
            401,
            404,
            410,
            500,
            notes={
                400: "`InvalidParameter`: a `variant` other than `video`.",
                404: "`NotFound`: no such video, or it is not completed.",
            },
        ),
    },
    openapi_extra=SECURED,
)
async def content(
    video_id: str,
    request: Request,
    variant: Annotated[str, Query(max_length=32, description="Only `video`.")] = "video",
) -> Response:
    caller = await get_caller(request)
    if variant != "video":
        reason = (
            "this server makes no thumbnails or spritesheets"
            if variant in ("thumbnail", "spritesheet")
            else "the only variant is video"
        )
        raise videos.with_param(
            InvalidParameter(f"variant: {variant!r} is not available; {reason}."), "variant"
        )
    row = await _task(caller, video_id)
    renderer = caller.runtime.renderer
    if row.status is not TaskStatus.SUCCEEDED or not row.result:
        status = videos.STATUSES.get(row.status, "failed")
        raise NotFound(
            f"Video {row.id} has no content: its status is {status}; download it once it is "
            "completed."
        )
    if renderer.expired(row):
        raise ResultExpired(expired_message(row, renderer.result_ttl_seconds))
    response = await serve_object(caller.runtime.storage, row.result["video_key"], request)
    response.headers["x-request-id"] = caller.request_id
    return response


# -- shared ------------------------------------------------------------------------------


async def _task(caller: Caller, video_id: str) -> TaskRow:
    row = await caller.runtime.service.get(caller.key.id, video_id)
    if row is None:
        raise NotFound(f"No video found with id {video_id[:100]!r}.")
    return row


def _answer(caller: Caller, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, headers={"x-request-id": caller.request_id})

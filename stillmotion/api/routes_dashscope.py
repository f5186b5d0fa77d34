"""The DashScope-native surface under ``/api/v1`` (contract 2.1): what the official
``dashscope`` SDK calls once pointed at this server.

Submit, query and cancel are the reseller routes' handlers behind native paths (one code path,
one body shape); only the ``X-DashScope-Async`` check and the task list are native.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import AfterValidator, BaseModel, Field

from stillmotion.api import routes_bailian
from stillmotion.api.deps import Caller, CallerDep
from stillmotion.api.errors import no_retry_on_error
from stillmotion.api.openapi import SECURED, error_responses, submit_extra
from stillmotion.api.responses import JSONResponse
from stillmotion.api.schemas import CancelResponse, SubmitResponse, TaskResponse
from stillmotion.domain import is_clean_text
from stillmotion.errors import AccessDenied, InvalidParameter
from stillmotion.tasks.store import TaskRow

router = APIRouter(prefix="/api/v1", tags=["dashscope"])

SYNC_REFUSED = "current user api does not support synchronous calls"
NO_UPLOADS = (
    "This server does not take file uploads (oss://): pass img_url/audio_url as an http(s) URL "
    "or a data:{mime};base64,{data} URI, not a local path."
)
DEFAULT_WINDOW_SECONDS = 24 * 3600  # upstream lists the last 24 h unless told otherwise
TIME_FORMAT = "%Y%m%d%H%M%S"

#: The deepest page a list can ask for (``page_no`` up to this): pages past it would only
#: make the database skip more rows.
MAX_PAGE_NO = 100_000

ListedStatus = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED"]


def _clean(value: str | None) -> str | None:
    if value is not None and not is_clean_text(value):
        raise ValueError("must not contain NUL characters or invalid Unicode")
    return value


def _text(max_length: int, description: str | None = None) -> Any:
    return Field(None, max_length=max_length, description=description)


CleanText = Annotated[str | None, AfterValidator(_clean)]


class TaskListQuery(BaseModel):
    """``GET /api/v1/tasks`` filters (contract 2.4); unknown parameters are ignored. Text
    with NUL characters or invalid Unicode, or longer than its bound, is a 400."""

    task_id: CleanText = _text(64)
    start_time: CleanText = _text(14, "YYYYMMDDhhmmss in the server's time zone.")
    end_time: CleanText = _text(14, "YYYYMMDDhhmmss, inclusive.")
    model_name: CleanText = _text(100)
    status: ListedStatus | None = None
    api_key_id: CleanText = _text(64, "Only the caller's own key id matches.")
    region: CleanText = _text(64, "Accepted and ignored.")
    page_no: int = Field(1, ge=1, le=MAX_PAGE_NO)
    page_size: int = Field(10, ge=1, le=100)


class TaskListItem(BaseModel):
    task_id: str
    status: str
    model_name: str
    api_key_id: str
    gmt_create: int = Field(description="Epoch milliseconds.")
    start_time: int | None = Field(None, description="Epoch ms the task started running.")
    end_time: int | None = Field(None, description="Epoch ms the task ended.")


class TaskListResponse(BaseModel):
    request_id: str
    data: list[TaskListItem]
    page_no: int
    page_size: int
    total: int
    total_page: int


_SUBMIT_ERRORS = error_responses(
    400, 401, 403, 413, 415, 500, notes={403: "`AccessDenied`: no `X-DashScope-Async: enable`."}
)
AsyncHeader = Annotated[
    str | None, Header(description="Must be `enable`: every task is asynchronous.")
]


@router.post(
    "/services/aigc/video-generation/video-synthesis",
    response_model=SubmitResponse,
    summary="Submit an image-to-video task (DashScope-native; img_url or media[] bodies)",
    dependencies=[Depends(no_retry_on_error)],
    responses=_SUBMIT_ERRORS,
    openapi_extra=submit_extra(),
)
async def submit(request: Request, caller: CallerDep, x_dashscope_async: AsyncHeader = None) -> Any:
    if (x_dashscope_async or "").strip().lower() != "enable":
        raise AccessDenied(SYNC_REFUSED)
    return await routes_bailian.submit_task(request, caller, "video-generation")


@router.post(
    "/services/aigc/image2video/video-synthesis",
    response_model=SubmitResponse,
    summary="Submit a first-and-last-frame task (DashScope-native; kf2v models)",
    dependencies=[Depends(no_retry_on_error)],
    responses=_SUBMIT_ERRORS,
    openapi_extra=submit_extra(),
)
async def submit_kf2v(
    request: Request, caller: CallerDep, x_dashscope_async: AsyncHeader = None
) -> Any:
    if (x_dashscope_async or "").strip().lower() != "enable":
        raise AccessDenied(SYNC_REFUSED)
    return await routes_bailian.submit_task(request, caller, "image2video")


@router.get(
    "/tasks/{task_id}",
    response_model=TaskResponse,
    response_model_exclude_none=True,
    summary="Query a task (DashScope-native)",
    responses=error_responses(400, 401, 404, 500),
    openapi_extra=SECURED,
)
@router.get("/tasks/{task_id}/", include_in_schema=False)
async def query(task_id: str, caller: CallerDep) -> Any:
    return await routes_bailian.query_task(task_id, caller)


@router.post(
    "/tasks/{task_id}/cancel",
    summary="Cancel a PENDING task (DashScope-native)",
    response_model=CancelResponse,
    responses=error_responses(
        400, 401, 404, 413, 500, notes={400: "`UnsupportedOperation`: the task is not PENDING."}
    ),
    openapi_extra=SECURED,
)
async def cancel(task_id: str, caller: CallerDep) -> Any:
    return await routes_bailian.cancel_task(task_id, caller)


@router.api_route("/uploads", methods=["GET", "POST"], include_in_schema=False)
async def uploads() -> Any:
    """The SDK asks here for an OSS upload policy when given a local file: say why not."""
    raise InvalidParameter(NO_UPLOADS)


@router.get(
    "/tasks",
    response_model=TaskListResponse,
    summary="List the caller's tasks",
    responses=error_responses(400, 401, 500),
    openapi_extra=SECURED,
)
@router.get("/tasks/", include_in_schema=False)
async def list_tasks(q: Annotated[TaskListQuery, Query()], caller: CallerDep) -> Any:
    rows, total = await _page(caller, q)
    return JSONResponse(
        {
            "request_id": caller.request_id,
            "data": [list_item(row) for row in rows],
            # the same page as task bodies' `output`, the key the 2.x SDK's jobs.list() reads
            "tasks": [caller.runtime.renderer.output(row) for row in rows],
            "page_no": q.page_no,
            "page_size": q.page_size,
            "total": total,
            "total_page": math.ceil(total / q.page_size),
        }
    )


def list_item(row: TaskRow) -> dict[str, Any]:
    """One task as upstream lists it (contract 2.4), with the fields this server knows."""
    return {
        "task_id": row.id,
        "status": row.status.value,
        "model_name": row.model,
        "api_key_id": row.key_id,
        "gmt_create": _epoch_ms(row.created_at),
        "start_time": _epoch_ms(row.scheduled_at),
        "end_time": _epoch_ms(row.ended_at),
    }


async def _page(caller: Caller, q: TaskListQuery) -> tuple[list[TaskRow], int]:
    runtime, key = caller.runtime, caller.key
    if q.api_key_id not in (None, key.id):
        return [], 0
    start, end = _window(q, runtime.settings.time_zone)
    offset = (q.page_no - 1) * q.page_size
    if q.task_id is not None:
        row = await runtime.service.get(key.id, q.task_id)
        hits = [row] if row is not None and _matches(row, q, start, end) else []
        return hits[offset : offset + q.page_size], len(hits)
    return await runtime.service.list(
        key.id, limit=q.page_size, offset=offset, status=q.status, model=q.model_name,
        start=start, end=end,
    )  # fmt: skip


def _matches(row: TaskRow, q: TaskListQuery, start: float | None, end: float | None) -> bool:
    return (
        (q.status is None or row.status.value == q.status)
        and (q.model_name is None or row.model == q.model_name)
        and (start is None or row.created_at >= start)
        and (end is None or row.created_at <= end)
    )


def _window(q: TaskListQuery, time_zone: str) -> tuple[float | None, float | None]:
    """``(start, end)`` epoch bounds on creation time; the last 24 h when neither is given."""
    zone = ZoneInfo(time_zone)
    start = parse_list_time(q.start_time, "start_time", zone)
    end = parse_list_time(q.end_time, "end_time", zone)
    if end is not None:
        end += 0.999999  # the whole named second
    if start is None and end is None:
        start = time.time() - DEFAULT_WINDOW_SECONDS
    if start is not None and end is not None and start > end:
        raise InvalidParameter("start_time must not be later than end_time.")
    return start, end


def parse_list_time(value: str | None, name: str, zone: ZoneInfo) -> float | None:
    """``YYYYMMDDhhmmss`` in ``zone`` to epoch seconds."""
    if value is None or value == "":
        return None
    try:
        if len(value) != 14 or not value.isdigit():
            raise ValueError
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=zone).timestamp()
    except ValueError:
        raise InvalidParameter(
            f"{name}: {value!r} is not a time; expected YYYYMMDDhhmmss, e.g. 20260101093000."
        ) from None


def _epoch_ms(epoch: float | None) -> int | None:
    return None if epoch is None else int(round(epoch * 1000))

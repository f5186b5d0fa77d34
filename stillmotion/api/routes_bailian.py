"""The reseller-style surface: ``/task/bailian/image2video`` and ``/task/{task_id}``."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request

from stillmotion.api.deps import Caller, get_caller
from stillmotion.api.errors import no_retry_on_error
from stillmotion.api.responses import JSONResponse
from stillmotion.api.schemas import ErrorResponse, SubmitBody, SubmitResponse, TaskResponse
from stillmotion.errors import InvalidParameter

router = APIRouter(tags=["bailian"])


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise InvalidParameter("The request body is empty; send a JSON object.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidParameter(f"The request body is not valid JSON: {exc}") from None


@router.post(
    "/task/bailian/image2video",
    response_model=SubmitResponse,
    summary="Submit a first-frame image-to-video task",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": SubmitBody.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    )
                }
            },
            "required": True,
        }
    },
)
async def submit(request: Request) -> Any:
    # The caller is resolved (and the no-retry mark set) in the body, not with Depends():
    # these routes are the hot path, and dependency solving is a visible share of their cost.
    await no_retry_on_error(request)
    return await submit_task(request, await get_caller(request))


async def submit_task(request: Request, caller: Caller) -> JSONResponse:
    """Both submit paths (reseller and DashScope-native) end here."""
    body = await read_json(request)
    row = await caller.runtime.service.submit(caller.key.id, body)
    output = {"task_id": row.id, "task_status": row.status.value}
    return JSONResponse({"request_id": caller.request_id, "output": output})


@router.get(
    "/task/{task_id}",
    response_model=TaskResponse,
    response_model_exclude_none=True,
    summary="Query a task",
)
async def query(task_id: str, request: Request) -> Any:
    return await query_task(task_id, await get_caller(request))


async def query_task(task_id: str, caller: Caller) -> JSONResponse:
    renderer, rid = caller.runtime.renderer, caller.request_id
    row = await caller.runtime.service.get(caller.key.id, task_id)
    if row is None:
        return JSONResponse(renderer.unknown(task_id, rid))
    return JSONResponse(renderer.body(row, rid))


@router.post(
    "/task/{task_id}/cancel",
    summary="Cancel a PENDING task",
    responses={400: {"model": ErrorResponse}},
)
async def cancel(task_id: str, request: Request) -> Any:
    return await cancel_task(task_id, await get_caller(request))


async def cancel_task(task_id: str, caller: Caller) -> JSONResponse:
    await caller.runtime.service.cancel(caller.key.id, task_id)
    return JSONResponse({"request_id": caller.request_id})

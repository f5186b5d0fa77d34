"""The reseller-style surface: ``/task/bailian/image2video`` and ``/task/{task_id}``."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from fastapi import APIRouter, Request

from stillmotion.api.deps import Caller, get_caller
from stillmotion.api.errors import no_retry_on_error
from stillmotion.api.openapi import SECURED, error_responses, submit_extra
from stillmotion.api.responses import JSONResponse
from stillmotion.api.schemas import CancelResponse, SubmitResponse, TaskResponse
from stillmotion.errors import InvalidParameter
from stillmotion.tasks.webhooks import CALLBACK_HEADER

router = APIRouter(tags=["bailian"])
HASH_INLINE_BYTES = 256 * 1024


async def read_body(request: Request) -> list[bytes]:
    """The body's chunks (400 ``InvalidParameter`` when it is empty)."""
    chunks = [chunk async for chunk in request.stream() if chunk]
    if not chunks:
        raise InvalidParameter("The request body is empty; send a JSON object.")
    return chunks


async def idempotency(request: Request, chunks: list[bytes]) -> tuple[str, str] | None:
    """``(Idempotency-Key, SHA-256 of the body's bytes)``, when the header is sent; a big
    body is hashed in a thread."""
    value = request.headers.get("idempotency-key")
    if value is None:
        return None
    if sum(map(len, chunks)) <= HASH_INLINE_BYTES:
        return value, body_hash(chunks)
    return value, await asyncio.to_thread(body_hash, chunks)


def body_hash(chunks: list[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


@router.post(
    "/task/bailian/image2video",
    response_model=SubmitResponse,
    summary="Submit a first-frame image-to-video task",
    responses=error_responses(400, 401, 413, 415, 500),
    openapi_extra=submit_extra(),
)
async def submit(request: Request) -> Any:
    # The caller is resolved (and the no-retry mark set) in the body, not with Depends():
    # these routes are the hot path, and dependency solving is a visible share of their cost.
    await no_retry_on_error(request)
    return await submit_task(request, await get_caller(request))


async def submit_task(
    request: Request, caller: Caller, endpoint: str | None = None
) -> JSONResponse:
    """Both submit paths (reseller and DashScope-native) end here. The body's JSON is parsed
    by ``service.parse``: a big body's join and parse happen in a thread, not on the loop."""
    service = caller.runtime.service
    chunks = await read_body(request)
    idem = await idempotency(request, chunks)
    callback = request.headers.get(CALLBACK_HEADER)
    body = await service.parse(chunks)
    row = await service.submit(
        caller.key, body, idempotency=idem, callback=callback, endpoint=endpoint
    )
    output = {"task_id": row.id, "task_status": row.status.value}
    return JSONResponse({"request_id": caller.request_id, "output": output})


@router.get(
    "/task/{task_id}",
    response_model=TaskResponse,
    response_model_exclude_none=True,
    summary="Query a task",
    responses=error_responses(400, 401, 404, 500),
    openapi_extra=SECURED,
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
    response_model=CancelResponse,
    responses=error_responses(
        400, 401, 404, 413, 500, notes={400: "`UnsupportedOperation`: the task is not PENDING."}
    ),
    openapi_extra=SECURED,
)
async def cancel(task_id: str, request: Request) -> Any:
    return await cancel_task(task_id, await get_caller(request))


async def cancel_task(task_id: str, caller: Caller) -> JSONResponse:
    await caller.runtime.service.cancel(caller.key.id, task_id)
    return JSONResponse({"request_id": caller.request_id})

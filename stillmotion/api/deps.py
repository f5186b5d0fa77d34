"""FastAPI dependencies: the runtime from app.state, the caller's key, the request id."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from stillmotion.api.errors import request_id
from stillmotion.runtime import Runtime
from stillmotion.tasks.store import ApiKeyRow


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_key(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> ApiKeyRow:
    runtime = get_runtime(request)
    return await runtime.keys.verify(authorization)


def get_request_id(request: Request) -> str:
    return request_id(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
KeyDep = Annotated[ApiKeyRow, Depends(get_key)]
RequestIdDep = Annotated[str, Depends(get_request_id)]

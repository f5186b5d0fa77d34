"""FastAPI dependencies: one per request, giving the runtime, the caller's key and the
request id (a single dependency keeps the per-request overhead small)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from stillmotion.api.errors import request_id
from stillmotion.runtime import Runtime
from stillmotion.tasks.store import ApiKeyRow


async def runtime_dep(request: Request) -> Runtime:
    """``async`` on purpose: FastAPI runs plain ``def`` dependencies in a thread pool."""
    return get_runtime(request)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@dataclass(frozen=True)
class Caller:
    runtime: Runtime
    key: ApiKeyRow
    request_id: str


async def get_caller(request: Request) -> Caller:
    """Authenticate ``Authorization: Bearer <key>`` (401 ``InvalidApiKey`` otherwise)."""
    runtime = get_runtime(request)
    key = await runtime.keys.verify(request.headers.get("authorization"))
    request.scope.setdefault("state", {})["key_id"] = key.id  # the access log's (not the key)
    return Caller(runtime, key, request_id(request))


async def get_key(request: Request) -> ApiKeyRow:
    key = await get_runtime(request).keys.verify(request.headers.get("authorization"))
    request.scope.setdefault("state", {})["key_id"] = key.id
    return key


RuntimeDep = Annotated[Runtime, Depends(runtime_dep)]
CallerDep = Annotated[Caller, Depends(get_caller)]
KeyDep = Annotated[ApiKeyRow, Depends(get_key)]

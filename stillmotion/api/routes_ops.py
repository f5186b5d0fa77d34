"""Operations: ``GET /metrics`` (Prometheus) and ``GET /readyz`` (docs/operations.md).

``/metrics`` reads the cluster-wide task figures from the database (one grouped query, cached
``tasks/stats.py:DEFAULT_TTL`` seconds per app) and adds this process's metrics. ``/readyz``
answers 503 once the app is draining (``api/app.py:begin_draining``, on SIGTERM) or while the
database or the object store does not answer.
"""

from __future__ import annotations

import hmac
import inspect
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from stillmotion.api.deps import RuntimeDep
from stillmotion.api.errors import error_response, request_id
from stillmotion.api.openapi import error_responses
from stillmotion.api.responses import JSONResponse
from stillmotion.api.schemas import ReadyResponse
from stillmotion.metrics import CONTENT_TYPE, exposition
from stillmotion.runtime import Runtime
from stillmotion.tasks.stats import CountsCache, ping

router = APIRouter(tags=["system"])

METRICS_401 = "the metrics token is missing or wrong"


def is_draining(request: Request) -> bool:
    return bool(getattr(request.app.state, "draining", False))


def _counts_cache(request: Request, runtime: Runtime) -> CountsCache:
    cache: CountsCache | None = getattr(request.app.state, "metrics_counts", None)
    if cache is None or cache.store is not runtime.store:
        cache = request.app.state.metrics_counts = CountsCache(runtime.store)
    return cache


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="The Prometheus text format (`text/plain; version=0.0.4`): the cluster's "
    "tasks by model, engine and status, queue depth, the oldest PENDING task's age and running "
    "tasks (from the database, cached 1.5 s), and this process's histograms, relay and "
    "webhook counters and process metrics (docs/operations.md). With "
    "`STILLMOTION_METRICS_TOKEN` set, `Authorization: Bearer <token>` is required (401 "
    "`InvalidApiKey` otherwise).",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}},
        **error_responses(500),
    },
)
async def metrics(request: Request, runtime: RuntimeDep) -> Response:
    token = runtime.settings.metrics_token
    if token is not None and token.get_secret_value():
        sent = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            return error_response(request_id(request), "InvalidApiKey", METRICS_401, 401)
    counts = await _counts_cache(request, runtime).get()
    return Response(exposition(counts), media_type=CONTENT_TYPE)


async def _storage_ready(runtime: Runtime) -> str:
    """``ok`` when the storage has no ``ready()`` check or it passes; else why not."""
    check = getattr(runtime.storage, "ready", None)
    if check is None:
        return "ok"
    try:
        answer = check()
        if inspect.isawaitable(answer):
            answer = await answer
    except Exception as exc:
        return f"error: {str(exc)[:200]}"
    return "ok" if answer is None or answer is True else f"error: {answer!s:.200}"


@router.get(
    "/readyz",
    summary="Readiness: database and storage answer, not draining",
    description="200 `{status: ready}` when this process should get traffic; 503 with "
    "`status` `draining` once it received SIGTERM (it finishes what is in flight), or "
    "`error` when the database or the storage does not answer. `GET /healthz` is liveness.",
    responses={
        200: {"model": ReadyResponse},
        503: {"model": ReadyResponse, "description": "Draining, or a dependency is down."},
        **error_responses(500),
    },
)
async def readyz(request: Request, runtime: RuntimeDep) -> Any:
    if is_draining(request):
        return JSONResponse({"status": "draining"}, status_code=503)
    try:
        await ping(runtime.store)
        database = "ok"
    except Exception as exc:  # the database is down: say so, do not 500
        database = f"error: {str(exc)[:200]}"
    storage = await _storage_ready(runtime)
    ok = database == "ok" and storage == "ok"
    body = {"status": "ready" if ok else "error", "database": database, "storage": storage}
    return JSONResponse(body, status_code=200 if ok else 503)

"""Operations: health and the model catalog."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from stillmotion import __version__, catalog
from stillmotion.api.deps import RuntimeDep
from stillmotion.api.openapi import error_responses
from stillmotion.api.responses import JSONResponse
from stillmotion.api.schemas import HealthError, HealthResponse, ModelList

router = APIRouter(tags=["system"])


@router.get(
    "/healthz",
    summary="Liveness and readiness",
    responses={
        200: {"model": HealthResponse},
        503: {"model": HealthError, "description": "The database does not answer."},
        **error_responses(500),
    },
)
async def healthz(runtime: RuntimeDep) -> Any:
    try:
        counts = await runtime.store.counts()
    except Exception as exc:  # the database is down: say so, do not 500
        return JSONResponse({"status": "error", "database": str(exc)[:200]}, status_code=503)
    worker = runtime.worker
    return {
        "status": "ok",
        "version": __version__,
        "database": runtime.store.dialect,
        "worker": worker.describe() if worker is not None else None,
        "tasks": counts,
        "routes": {m: runtime.service.engine_for(m) for m in catalog.model_names()},
    }


@router.get(
    "/v1/models",
    summary="The model catalog, with per-second prices",
    description="No key needed: without one the prices are the list prices (times "
    "`STILLMOTION_PRICE_MULTIPLIER`); with `Authorization: Bearer <key>` they are the key's "
    "account's (its price group applied), and an unknown or revoked key is 401 "
    "`InvalidApiKey` as on every route.",
    responses={200: {"model": ModelList}, **error_responses(500)},
)
async def models(request: Request, runtime: RuntimeDep) -> Any:
    group = None
    authorization = request.headers.get("authorization")
    if authorization:  # optional: an absent (or empty) header is the list price
        group = (await runtime.keys.verify(authorization)).price_group
    prices = runtime.service.prices
    data = []
    for spec in catalog.MODELS.values():
        item = spec.to_json()
        item["engine"] = runtime.service.engine_for(spec.name)
        item["price"] = {
            "currency": prices.currency,
            "price_group": group,
            "per_second": prices.table(spec, group),
        }
        data.append(item)
    return {"object": "list", "data": data}

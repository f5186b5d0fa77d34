"""The web playground: its static files at ``/`` and the caller's tasks at ``GET /v1/tasks``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from stillmotion.api.deps import KeyDep, RuntimeDep
from stillmotion.api.openapi import SECURED, error_responses
from stillmotion.api.routes_account import money_or_none, seconds_text
from stillmotion.api.schemas import TaskSummaryList
from stillmotion.errors import NotFound
from stillmotion.money import format_micros
from stillmotion.tasks.render import TaskRenderer
from stillmotion.tasks.store import TaskRow

router = APIRouter(tags=["web"])

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
#: the page talks to its own origin only; videos may come from STILLMOTION_PUBLIC_URL's host
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; media-src * data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_COPIED = ("video_url", "progress", "code", "message")


def _asset(name: str) -> FileResponse:
    media = ASSETS.get(name)
    path = WEB_DIR / name
    if media is None or not path.is_file():
        raise NotFound(f"No such file: /web/{name}")
    headers = {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
    }
    return FileResponse(path, media_type=media, headers=headers)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The playground page."""
    return _asset("index.html")


@router.get("/web/{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    """The playground's script and style sheet."""
    return _asset(name)


def task_summary(renderer: TaskRenderer, row: TaskRow) -> dict[str, Any]:
    """One entry of the task list, built from the same renderer as ``GET /task/{id}``."""
    out = renderer.output(row)
    item: dict[str, Any] = {
        "task_id": row.id,
        "task_status": row.status.value,
        "model": row.model,
        "submit_time": out["submit_time"],
        "end_time": out.get("end_time"),
        "prompt": out.get("orig_prompt", ""),
        "resolution": row.request.get("resolution"),
        "duration": row.request.get("duration"),
    }
    item.update({k: out[k] for k in _COPIED if k in out})
    item["quote"] = format_micros(row.quote)
    item["cost"] = money_or_none(row.cost)
    item["billed_seconds"] = None if row.billed_ms is None else seconds_text(row.billed_ms)
    return item


@router.get(
    "/v1/tasks",
    summary="The caller's tasks, newest first",
    responses={200: {"model": TaskSummaryList}, **error_responses(400, 401, 500)},
    openapi_extra=SECURED,
)
async def list_tasks(
    runtime: RuntimeDep,
    key: KeyDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size (1-100).")] = 20,
    offset: Annotated[
        int, Query(ge=0, le=10_000_000, description="Tasks to skip (0-10000000).")
    ] = 0,
) -> Any:
    rows, total = await runtime.service.list(key.id, limit=limit, offset=offset)
    return {"data": [task_summary(runtime.renderer, row) for row in rows], "total": total}

"""Signed, expiring, Range-capable downloads of stored results.

Local storage answers with the file itself (``FileResponse``: sendfile, ranges); an object
store's objects are streamed from the store by any API process, one range at a time.
"""

from __future__ import annotations

import re
from email.utils import formatdate

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from stillmotion.api.deps import RuntimeDep
from stillmotion.api.openapi import error_responses
from stillmotion.errors import AccessDenied, ResultExpired
from stillmotion.storage.base import Storage
from stillmotion.storage.local import LocalStorage
from stillmotion.tasks.retention import expired_message, video_from_key

router = APIRouter(tags=["files"])

_RANGE = re.compile(r"bytes=\s*(\d*)\s*-\s*(\d*)\s*")
CACHE_CONTROL = "private, max-age=3600"


@router.head("/files/{key:path}", include_in_schema=False)
@router.get(
    "/files/{key:path}",
    summary="Download a result (signed URL; Range supported)",
    response_class=FileResponse,
    responses={
        200: {"content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}},
        206: {"description": "The requested `Range` of the file."},
        416: {"description": "The requested `Range` is not satisfiable."},
        **error_responses(
            400,
            403,
            404,
            410,
            500,
            notes={
                403: "`AccessDenied`: the signature is invalid or has expired.",
                410: "`ResultExpired`: the task's result was deleted after "
                "`STILLMOTION_RESULT_TTL_HOURS` (or is past it).",
            },
        ),
    },
)
async def download(
    key: str,
    request: Request,
    runtime: RuntimeDep,
    Expires: int = 0,
    Signature: str = "",  # noqa: N803
) -> Response:
    storage = runtime.storage
    if not Signature or not storage.verify(key, Expires, Signature):
        raise AccessDenied("The signature of this URL is invalid or it has expired.")
    task_id = video_from_key(key)
    if task_id is not None:  # a result past its TTL is gone, swept yet or not
        row = await runtime.store.get_task(task_id)
        if row is not None and runtime.renderer.expired(row):
            raise ResultExpired(expired_message(row, runtime.renderer.result_ttl_seconds))
    return await serve_object(storage, key, request)


async def serve_object(storage: Storage, key: str, request: Request) -> Response:
    """A stored object as the answer, with ``Range`` (and ``HEAD``): the one download path of
    ``/files/{key}`` and ``GET /v1/videos/{id}/content``. Local storage answers with the file
    itself; an object store's object is streamed one range at a time."""
    mp4 = key.endswith(".mp4")
    if isinstance(storage, LocalStorage):
        return FileResponse(
            storage.local_path(key),
            media_type="video/mp4" if mp4 else None,
            headers={"Cache-Control": CACHE_CONTROL, "Accept-Ranges": "bytes"},
        )
    return await _stream(storage, key, request, "video/mp4" if mp4 else "application/octet-stream")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """``(start, end)`` (inclusive) of a single ``bytes=`` range; ``None``: serve it all (no
    header, another unit, several ranges, or bad syntax, which HTTP lets a server ignore);
    ``False``: not satisfiable (416)."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        tail = int(last)
        if tail == 0 or size == 0:
            return False
        return max(0, size - tail), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid: ignored
    if start >= size:
        return False
    return start, min(int(last) if last else size - 1, size - 1)


async def _stream(storage: Storage, key: str, request: Request, media_type: str) -> Response:
    info = await storage.stat(key)
    headers = {
        "Cache-Control": CACHE_CONTROL,
        "Accept-Ranges": "bytes",
        "Last-Modified": formatdate(info.modified, usegmt=True),
    }
    if info.etag:
        headers["ETag"] = info.etag
    wanted = parse_range(request.headers.get("range"), info.size)
    if request.headers.get("if-range") and request.headers["if-range"] not in (
        info.etag,
        headers["Last-Modified"],
    ):
        wanted = None  # changed since the client's copy: the whole file
    if wanted is False:
        headers["Content-Range"] = f"bytes */{info.size}"
        return Response(status_code=416, headers=headers)
    status = 200
    start, end = 0, info.size - 1
    if isinstance(wanted, tuple):
        start, end = wanted
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    headers["Content-Length"] = str(end - start + 1)
    if request.method == "HEAD" or info.size == 0:
        return Response(status_code=status, headers=headers, media_type=media_type)
    chunks = await storage.open_range(key, start, end)
    close = getattr(chunks, "aclose", None)
    return StreamingResponse(
        chunks,
        status_code=status,
        headers=headers,
        media_type=media_type,
        background=BackgroundTask(close) if close is not None else None,  # also on a disconnect
    )

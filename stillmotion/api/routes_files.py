"""Signed, expiring, Range-capable downloads of stored results."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from stillmotion.api.deps import RuntimeDep
from stillmotion.api.openapi import error_responses
from stillmotion.errors import AccessDenied

router = APIRouter(tags=["files"])


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
            500,
            notes={403: "`AccessDenied`: the signature is invalid or has expired."},
        ),
    },
)
async def download(
    key: str,
    runtime: RuntimeDep,
    Expires: int = 0,
    Signature: str = "",  # noqa: N803
) -> FileResponse:
    if not Signature or not runtime.storage.verify(key, Expires, Signature):
        raise AccessDenied("The signature of this URL is invalid or it has expired.")
    path = runtime.storage.local_path(key)
    media_type = "video/mp4" if key.endswith(".mp4") else None
    return FileResponse(
        path,
        media_type=media_type,
        headers={"Cache-Control": "private, max-age=3600", "Accept-Ranges": "bytes"},
    )

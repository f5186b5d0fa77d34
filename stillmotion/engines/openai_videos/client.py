"""HTTP calls to an OpenAI-style ``/v1/videos`` server (vLLM-Omni, SGLang Diffusion, a
Dynamo frontend), on the relay's client (``relay/http.py``).

``base`` is the server's base URL with ``/v1``. Create is ``POST {base}/videos`` (a
multipart form, as vLLM-Omni takes it, or JSON), status ``GET {base}/videos/{id}``, the
list ``GET {base}/videos`` (cursor paging: ``after``, ``limit``, ``order``), the file
``GET {base}/videos/{id}/content`` and cancel ``DELETE {base}/videos/{id}``. Status words
map onto ours: ``queued`` -> PENDING, ``in_progress`` -> RUNNING, ``completed`` ->
SUCCEEDED, ``failed`` -> FAILED (``error.code``, ``error.message``), ``cancelled`` ->
CANCELED; a video the server does not know (404) is UNKNOWN; ``progress`` (0-100) is passed
through.
"""

from __future__ import annotations

import json
from typing import Any

from stillmotion.engines.relay.follow import (
    CANCELED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    UNKNOWN,
    Status,
)
from stillmotion.engines.relay.http import SUBMIT_ID_HEADER, Failure, JsonClient, UpstreamError

STATES = {
    "queued": PENDING,
    "pending": PENDING,
    "in_progress": RUNNING,
    "running": RUNNING,
    "processing": RUNNING,
    "completed": SUCCEEDED,
    "succeeded": SUCCEEDED,
    "failed": FAILED,
    "cancelled": CANCELED,
    "canceled": CANCELED,
}
DEFAULT_FAIL_CODE = "InternalError.Algo"


def status_of(video: dict[str, Any]) -> Status:
    """A video object as a :class:`Status`."""
    word = str(video.get("status") or "").lower()
    state = STATES.get(word, word.upper() or "RUNNING")
    error = video.get("error") if isinstance(video.get("error"), dict) else {}
    progress = video.get("progress")
    fraction = None
    if isinstance(progress, int | float) and not isinstance(progress, bool):
        fraction = min(1.0, max(0.0, float(progress) / 100))
    code = error.get("code") if error else None
    return Status(
        state,
        video,
        code=str(code) if code not in (None, "") else (DEFAULT_FAIL_CODE if error else None),
        message=str(error.get("message") or "") or None if error else None,
        progress=fraction,
    )


def form_fields(body: dict[str, Any]) -> dict[str, tuple[None, str]]:
    """``body`` as multipart form fields: strings as they are, anything else JSON-encoded
    (vLLM-Omni reads ``image_reference`` and ``extra_params`` as JSON strings)."""
    out: dict[str, tuple[None, str]] = {}
    for name, value in body.items():
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        out[name] = (None, text)
    return out


class VideosClient(JsonClient):
    """Create, retrieve, list and delete videos on one channel's base URL with one key."""

    async def submit(
        self, base: str, key: str, body: dict[str, Any], submit_id: str, *, form: bool = True
    ) -> str:
        """Create the video; its id. Raises :class:`UpstreamError`."""
        headers = {SUBMIT_ID_HEADER: submit_id}
        payload: dict[str, Any] = {"files": form_fields(body)} if form else {"json": body}
        answer = await self._call(
            "POST", f"{base}/videos", key, may_apply=True, headers=headers, **payload
        )
        video_id = answer.get("id")
        if not video_id:
            raise UpstreamError(Failure.UNKNOWN, "InternalError", "the create answer has no id")
        return str(video_id)

    async def get(self, base: str, key: str, video_id: str) -> dict[str, Any]:
        return await self._call("GET", f"{base}/videos/{video_id}", key)

    async def status(self, base: str, key: str, video_id: str) -> Status:
        try:
            video = await self.get(base, key, video_id)
        except UpstreamError as exc:
            if exc.status == 404:  # expired, deleted elsewhere, or another server's
                return Status(UNKNOWN, {}, code=exc.code, message=exc.message)
            raise
        return status_of(video)

    async def cancel(self, base: str, key: str, video_id: str) -> bool:
        """True when the server deleted (so stopped) it; False when it refused (a server
        without ``DELETE``, or a video it no longer has)."""
        try:
            await self._call("DELETE", f"{base}/videos/{video_id}", key)
        except UpstreamError as exc:
            if exc.failure is Failure.REJECTED:
                return False
            raise
        return True

    async def list(
        self, base: str, key: str, *, after: str | None = None, limit: int = 100
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"order": "desc", "limit": limit}
        if after:
            params["after"] = after
        return await self._call("GET", f"{base}/videos", key, params=params)

    def content_url(self, base: str, video_id: str) -> str:
        return f"{base}/videos/{video_id}/content"

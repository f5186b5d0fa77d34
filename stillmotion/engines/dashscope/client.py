"""HTTP calls to a DashScope upstream, each failure sorted into what the relay should do.

The shared machinery (failure classes, ``Retry-After``, the pooled client, metrics) is
``relay/http.py``; this module holds DashScope's paths and bodies.
"""

from __future__ import annotations

from typing import Any

from stillmotion.engines.relay.follow import Status
from stillmotion.engines.relay.http import (
    SUBMIT_ID_HEADER,
    USER_AGENT,
    Failure,
    JsonClient,
    UpstreamError,
    classify,
    make_http_client,
    retry_after,
)

__all__ = [
    "KF2V_PATH",
    "SUBMIT_ID_HEADER",
    "SUBMIT_PATH",
    "USER_AGENT",
    "Failure",
    "UpstreamClient",
    "UpstreamError",
    "classify",
    "make_http_client",
    "retry_after",
    "status_of",
]

SUBMIT_PATH = "/services/aigc/video-generation/video-synthesis"
KF2V_PATH = "/services/aigc/image2video/video-synthesis"  # first-and-last-frame models


def status_of(body: dict[str, Any]) -> Status:
    """A task body (``output.task_status``, upper-cased: ``succeeded`` & co) as a
    :class:`Status`."""
    out = body["output"]
    state = str(out["task_status"]).upper()
    out["task_status"] = state
    return Status(state, body, code=out.get("code"), message=out.get("message"))


class UpstreamClient(JsonClient):
    """Submit, get, cancel and list against one channel's base URL with one key."""

    async def submit(
        self, base: str, key: str, body: dict[str, Any], submit_id: str, path: str = SUBMIT_PATH
    ) -> str:
        """Create the upstream task on ``path`` (kf2v models: :data:`KF2V_PATH`); its id.
        Raises :class:`UpstreamError`."""
        headers = {"X-DashScope-Async": "enable", SUBMIT_ID_HEADER: submit_id}
        answer = await self._call(
            "POST", base + path, key, may_apply=True, json=body, headers=headers
        )
        task_id = (answer.get("output") or {}).get("task_id")
        if not task_id:
            raise UpstreamError(
                Failure.UNKNOWN, "InternalError", "the submit answer has no task_id"
            )
        return str(task_id)

    async def get(self, base: str, key: str, task_id: str) -> dict[str, Any]:
        body = await self._call("GET", f"{base}/tasks/{task_id}", key)
        if not isinstance(body.get("output"), dict) or "task_status" not in body["output"]:
            raise UpstreamError(Failure.UNAVAILABLE, "InternalError", "no output.task_status")
        return body

    async def status(self, base: str, key: str, task_id: str) -> Status:
        return status_of(await self.get(base, key, task_id))

    async def cancel(self, base: str, key: str, task_id: str) -> bool:
        """True when upstream canceled it; False when it refused (not PENDING)."""
        try:
            await self._call("POST", f"{base}/tasks/{task_id}/cancel", key)
        except UpstreamError as exc:
            if exc.failure is Failure.REJECTED:
                return False
            raise
        return True

    async def list(self, base: str, key: str, params: dict[str, Any]) -> dict[str, Any]:
        return await self._call("GET", f"{base}/tasks", key, params=params)

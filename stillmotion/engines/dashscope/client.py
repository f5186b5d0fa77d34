"""HTTP calls to a DashScope upstream, each failure sorted into what the relay should do.

One shared ``httpx.AsyncClient`` (a connection pool) serves every channel and task. Keys go
in the ``Authorization`` header only; no message built here contains a key or a URL query.
"""

from __future__ import annotations

import email.utils
import enum
import time
from typing import Any

import httpx

from stillmotion.metrics import record_relay_call

SUBMIT_PATH = "/services/aigc/video-generation/video-synthesis"
KF2V_PATH = "/services/aigc/image2video/video-synthesis"  # first-and-last-frame models
#: Our per-submit marker: the fake honours it (a repeat returns the same task); DashScope
#: ignores it. The relay never sends a submit twice either way.
SUBMIT_ID_HEADER = "X-Stillmotion-Submit-Id"
USER_AGENT = "stillmotion-relay/1"


class Failure(enum.Enum):
    AUTH = "auth"  # 401/403: this key cannot be used
    THROTTLED = "throttled"  # 429: nothing was created; wait (Retry-After)
    REJECTED = "rejected"  # other 4xx: the request itself is refused; nothing was created
    UNAVAILABLE = "unavailable"  # 5xx, connect errors: nothing was created (as the SDK reads it)
    UNKNOWN = "unknown"  # the request may have been applied (dropped reply, read timeout)


class UpstreamError(Exception):
    def __init__(
        self,
        failure: Failure,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"{code}: {message}")
        self.failure = failure
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after


def make_http_client(timeout: float, max_connections: int = 256) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, pool=None),
        limits=limits,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
    )


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``, in seconds."""
    ms = response.headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _error_body(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("code"):
        return str(body["code"]), str(body.get("message") or "")
    return f"HTTP{response.status_code}", f"the upstream answered HTTP {response.status_code}"


def classify(response: httpx.Response, *, may_apply: bool) -> UpstreamError:
    """A non-2xx answer as an :class:`UpstreamError`. ``may_apply``: the call creates
    something, so a 5xx with ``x-should-retry: false`` means "it may exist"."""
    status = response.status_code
    code, message = _error_body(response)
    after = retry_after(response)
    if status in (401, 403):
        kind = Failure.AUTH
    elif status == 429:
        kind = Failure.THROTTLED
    elif status == 408 or status >= 500:
        no_retry = response.headers.get("x-should-retry", "").lower() == "false"
        kind = Failure.UNKNOWN if may_apply and no_retry else Failure.UNAVAILABLE
    else:
        kind = Failure.REJECTED
    return UpstreamError(kind, code, message, status=status, retry_after=after)


def _transport_error(exc: httpx.HTTPError, *, may_apply: bool) -> UpstreamError:
    """Connect failures never reached the server; anything later might have."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return UpstreamError(Failure.UNAVAILABLE, "RequestTimeOut", "could not connect upstream")
    kind = Failure.UNKNOWN if may_apply else Failure.UNAVAILABLE
    what = "timed out" if isinstance(exc, httpx.TimeoutException) else "the connection failed"
    return UpstreamError(kind, "RequestTimeOut", f"the upstream call {what} ({type(exc).__name__})")


class UpstreamClient:
    """Submit, get, cancel and list against one channel's base URL with one key."""

    def __init__(self, http: httpx.AsyncClient, channels: dict[str, str] | None = None):
        self.http = http
        self.channels = channels or {}  # base URL -> channel name (the metrics' label)

    def _channel(self, url: str) -> str:
        for base, name in self.channels.items():
            if url.startswith(base + "/"):
                return name
        return httpx.URL(url).host  # a base no channel has: its host, never a query or key

    async def _call(
        self, method: str, url: str, key: str, *, may_apply: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
        try:
            try:
                response = await self.http.request(method, url, headers=headers, **kwargs)
            except httpx.HTTPError:
                record_relay_call(self._channel(url), "error")
                raise
            record_relay_call(self._channel(url), response.status_code)
            if not response.is_success:
                raise classify(response, may_apply=may_apply)
            body = response.json()
        except httpx.HTTPError as exc:
            raise _transport_error(exc, may_apply=may_apply) from None
        except ValueError:
            raise UpstreamError(
                Failure.UNKNOWN if may_apply else Failure.UNAVAILABLE,
                "InternalError",
                "the upstream answered with a body that is not JSON",
            ) from None
        if not isinstance(body, dict):
            raise UpstreamError(Failure.UNAVAILABLE, "InternalError", "unexpected upstream body")
        return body

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

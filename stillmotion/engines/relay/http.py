"""HTTP calls to an upstream, each failure sorted into what the relay should do.

One shared ``httpx.AsyncClient`` (a connection pool) serves every channel and task of an
engine. Keys go in the ``Authorization`` header only (none is sent for a channel without
keys); no message built here contains a key or a URL query. Each family's client
(:class:`JsonClient` subclass) holds only its paths and bodies.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import time
from typing import Any

import httpx

from stillmotion.metrics import record_relay_call

#: Our per-submit marker: the fakes honour it (a repeat returns the same task), a real
#: upstream may ignore it. The relay never sends a submit twice either way.
SUBMIT_ID_HEADER = "X-Stillmotion-Submit-Id"
USER_AGENT = "stillmotion-relay/1"
#: API calls of one engine in flight at once; more wait on a semaphore (O(1)) rather than in
#: httpcore's pool queue, whose request assignment costs O(waiting x connections) per call: a
#: cycle of 1000 polls took 5.7 s of CPU with all 1000 handed to the pool at once, 1.1 s
#: through this gate (bench/relay_bench.py); 32 calls of 200 ms RTT still make 160/s.
MAX_CALLS = 32


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
    """``(code, message)`` of an error answer: DashScope's ``{code, message}``, OpenAI's
    ``{error: {code, type, message}}`` or FastAPI's ``{detail}``; else the HTTP status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("code"):
        return str(body["code"]), str(body.get("message") or "")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # vLLM puts the HTTP status in ``code``: named by it then
        code = error.get("code")
        if not (isinstance(code, str) and code and not code.isdigit()):
            code = f"HTTP{response.status_code}"
        return code, str(error.get("message") or "")
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return f"HTTP{response.status_code}", str(body["detail"])
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


def transport_error(exc: httpx.HTTPError, *, may_apply: bool) -> UpstreamError:
    """Connect failures never reached the server; anything later might have."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return UpstreamError(Failure.UNAVAILABLE, "RequestTimeOut", "could not connect upstream")
    kind = Failure.UNKNOWN if may_apply else Failure.UNAVAILABLE
    what = "timed out" if isinstance(exc, httpx.TimeoutException) else "the connection failed"
    return UpstreamError(kind, "RequestTimeOut", f"the upstream call {what} ({type(exc).__name__})")


class JsonClient:
    """JSON calls against one channel's base URL with one key; families add their paths."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        channels: dict[str, str] | None = None,
        gate: asyncio.Semaphore | None = None,  # shared by the engine's calls (MAX_CALLS)
    ):
        self.http = http
        self.channels = channels or {}  # base URL -> channel name (the metrics' label)
        self.gate = gate or asyncio.Semaphore(MAX_CALLS)

    def _channel(self, url: str) -> str:
        for base, name in self.channels.items():
            if url.startswith(base + "/"):
                return name
        return httpx.URL(url).host  # a base no channel has: its host, never a query or key

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def request(
        self, method: str, url: str, key: str, *, may_apply: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One call; a 2xx response, else :class:`UpstreamError` (metrics recorded)."""
        headers = {**self.auth(key), **kwargs.pop("headers", {})}
        try:
            try:
                async with self.gate:
                    response = await self.http.request(method, url, headers=headers, **kwargs)
            except httpx.HTTPError:
                record_relay_call(self._channel(url), "error")
                raise
            record_relay_call(self._channel(url), response.status_code)
        except httpx.HTTPError as exc:
            raise transport_error(exc, may_apply=may_apply) from None
        if not response.is_success:
            raise classify(response, may_apply=may_apply)
        return response

    async def _call(
        self, method: str, url: str, key: str, *, may_apply: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        response = await self.request(method, url, key, may_apply=may_apply, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise UpstreamError(
                Failure.UNKNOWN if may_apply else Failure.UNAVAILABLE,
                "InternalError",
                "the upstream answered with a body that is not JSON",
            ) from None
        if not isinstance(body, dict):
            raise UpstreamError(Failure.UNAVAILABLE, "InternalError", "unexpected upstream body")
        return body

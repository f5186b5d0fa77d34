"""The sans-I/O core that ``Client`` and ``AsyncClient`` share.

Every operation is a generator that yields *steps* (an HTTP call to make, a pause, a
download) and gets back the step's result; the sync and async clients only carry the steps
out. Request building, response parsing, error mapping and the polling policy live here,
once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from stillmotion.client._errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    InvalidInputError,
    InvalidParameterError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    StillmotionError,
    TaskFailed,
    UnsupportedOperationError,
    WaitTimeout,
)
from stillmotion.client._media import MediaInput, as_data_uri
from stillmotion.client._task import Task

T = TypeVar("T")
ApiStyle = Literal["auto", "reseller", "dashscope"]
ProgressCallback = Callable[[Task], object]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
NATIVE_SUBMIT = "services/aigc/video-generation/video-synthesis"
#: consecutive failed polls (connection errors, 5xx) ``wait`` rides out before giving up
MAX_POLL_FAILURES = 3


@dataclass(frozen=True)
class Call:
    """One HTTP request to the API (the driver adds the base URL)."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    json: dict[str, Any] | None = None


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Download:
    url: str
    path: Path


Step = Call | Sleep | Download
Flow = Generator[Step, Any, T]


class SubmitOptions(TypedDict, total=False):
    """The optional fields of a submit (contract 1.2); ``None`` means "server default"."""

    prompt: str | None
    negative_prompt: str | None
    resolution: str | None
    duration: int | None
    audio: bool | None
    audio_url: MediaInput | None
    seed: int | None
    shot_type: str | None
    prompt_extend: bool | None
    watermark: bool | None


_INPUT_FIELDS = ("prompt", "negative_prompt")
_PARAMETER_FIELDS = (
    "resolution",
    "duration",
    "audio",
    "seed",
    "shot_type",
    "prompt_extend",
    "watermark",
)


def submit_body(model: str, image: MediaInput, options: SubmitOptions) -> dict[str, Any]:
    """The JSON body ``{model, input, parameters}``; unset options are left out."""
    unknown = set(options) - set(SubmitOptions.__annotations__)
    if unknown:
        raise TypeError(f"unexpected option(s): {', '.join(sorted(unknown))}")
    raw: dict[str, Any] = dict(options)
    inp: dict[str, Any] = {"img_url": as_data_uri(image)}
    inp.update({k: raw[k] for k in _INPUT_FIELDS if raw.get(k) is not None})
    if raw.get("audio_url") is not None:
        inp["audio_url"] = as_data_uri(raw["audio_url"], audio=True)
    params = {k: raw[k] for k in _PARAMETER_FIELDS if raw.get(k) is not None}
    return {"model": model, "input": inp, "parameters": params}


def _error_class(code: str, status: int) -> type[APIError]:
    if code == "InvalidApiKey" or status == 401:
        return AuthenticationError
    if code == "UnsupportedOperation":
        return UnsupportedOperationError
    if code.startswith("Throttling") or status == 429:
        return RateLimitError
    if status == 403:
        return PermissionDeniedError
    if status == 404:
        return NotFoundError
    if status >= 500:
        return ServerError
    if 400 <= status < 500:
        return InvalidParameterError
    return APIError


def error_from(resp: httpx.Response) -> APIError:
    """The typed exception for an error answer (``{request_id, code, message}`` or not)."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body:
        code, message = str(body["code"]), str(body.get("message") or "")
        rid = body.get("request_id")
    else:
        code, message, rid = f"HTTP{resp.status_code}", resp.text.strip()[:300], None
    cls = _error_class(code, resp.status_code)
    return cls(code, message, str(rid) if rid else None, resp.status_code)


def parse(resp: httpx.Response) -> dict[str, Any]:
    """The JSON body of a 2xx answer; any other answer raises its typed error."""
    if not resp.is_success:
        raise error_from(resp)
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise APIError(
            "InvalidResponse", f"not a JSON object: {resp.text[:200]!r}", None, resp.status_code
        )
    return body


def poll_delays(first: float, longest: float, factor: float = 1.5) -> Iterator[float]:
    """``first``, then growing by ``factor`` up to ``longest``: 1, 1.5, 2.25, 3.4, 5, 5..."""
    delay = first
    while True:
        yield delay
        delay = min(longest, delay * factor)


def is_native(base_url: str) -> bool:
    """A base URL ending in ``/api/v1`` talks DashScope's own paths."""
    return urlsplit(base_url).path.rstrip("/").endswith("/api/v1")


class Protocol:
    """Paths, headers and the operations as step generators."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        api_style: ApiStyle = "auto",
        poll_interval: float = 1.0,
        max_poll_interval: float = 5.0,
    ) -> None:
        if poll_interval <= 0 or max_poll_interval < poll_interval:
            raise ValueError("need 0 < poll_interval <= max_poll_interval")
        self.base_url = base_url.rstrip("/")
        self.native = is_native(base_url) if api_style == "auto" else api_style == "dashscope"
        self.api_key = api_key
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _task_path(self, task_id: str) -> str:
        if not task_id:
            raise InvalidInputError("task_id is empty")
        prefix = "/tasks/" if self.native else "/task/"
        return prefix + quote(task_id, safe="")

    # -- single calls ----------------------------------------------------------------

    def submit(self, model: str, image: MediaInput, options: SubmitOptions) -> Flow[Task]:
        body = submit_body(model, image, options)
        headers = self._headers()
        path = "/task/bailian/image2video"
        if self.native:
            path = "/" + NATIVE_SUBMIT
            headers["X-DashScope-Async"] = "enable"
        resp = yield Call("POST", path, headers, body)
        return Task.from_body(parse(resp))

    def get(self, task_id: str) -> Flow[Task]:
        resp = yield Call("GET", self._task_path(task_id), self._headers())
        return Task.from_body(parse(resp))

    def cancel(self, task_id: str) -> Flow[None]:
        resp = yield Call("POST", self._task_path(task_id) + "/cancel", self._headers())
        parse(resp)

    def download(self, task: Task | str, path: str | Path) -> Flow[Path]:
        """Save the video of ``task`` (a Task or a video URL) to ``path``."""
        url = task if isinstance(task, str) else task.video_url
        if not url:
            status = task.status if isinstance(task, Task) else "?"
            raise InvalidInputError(f"the task has no video_url (status {status})")
        target = Path(path)
        yield Download(url, target)
        return target

    # -- polling ---------------------------------------------------------------------

    def wait(
        self, task_id: str, timeout: float = 900.0, on_progress: ProgressCallback | None = None
    ) -> Flow[Task]:
        """Poll until the task ends; SUCCEEDED returns it, anything else raises TaskFailed.
        Rides out up to ``MAX_POLL_FAILURES`` consecutive connection errors or 5xx answers."""
        deadline = time.monotonic() + timeout
        delays = poll_delays(self.poll_interval, self.max_poll_interval)
        last, failures = Task(task_id=task_id, status="UNKNOWN"), 0
        while True:
            try:
                last = yield from self.get(task_id)
                failures = 0
            except (APIConnectionError, ServerError):
                failures += 1
                if failures >= MAX_POLL_FAILURES:
                    raise
            else:
                if on_progress is not None:
                    on_progress(last)
                if last.done:
                    return _settle(last)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(last, timeout)
            yield Sleep(min(next(delays), remaining))


def _settle(task: Task) -> Task:
    if task.succeeded:
        return task
    raise TaskFailed(task)


def transport_error(exc: httpx.TransportError, url: str) -> StillmotionError:
    return APIConnectionError(f"cannot reach {url}: {type(exc).__name__}: {exc}".rstrip(": "))

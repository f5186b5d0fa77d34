"""``Client`` and ``AsyncClient``: thin drivers that carry out the core's steps with httpx."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Unpack

import httpx

from stillmotion.client._core import (
    DEFAULT_BASE_URL,
    ApiStyle,
    Call,
    Download,
    Flow,
    ProgressCallback,
    Protocol,
    Sleep,
    Step,
    SubmitOptions,
    T,
    error_from,
    transport_error,
)
from stillmotion.client._media import MediaInput
from stillmotion.client._task import Task

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
USER_AGENT = "stillmotion-client/0.1"


@contextlib.contextmanager
def _partial(path: Path) -> Iterator[IO[bytes]]:
    """A file that appears at ``path`` only once it is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        with tmp.open("wb") as fh:
            yield fh
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


class _BaseClient:
    """What both clients share: settings, the protocol, building requests."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        *,
        api_style: ApiStyle,
        poll_interval: float,
        max_poll_interval: float,
    ) -> None:
        base_url = base_url or os.environ.get("STILLMOTION_URL") or DEFAULT_BASE_URL
        if api_key is None:
            api_key = os.environ.get("STILLMOTION_API_KEY")
        self._proto = Protocol(
            base_url,
            api_key,
            api_style=api_style,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
        )

    @property
    def base_url(self) -> str:
        return self._proto.base_url

    @property
    def native(self) -> bool:
        """True when talking DashScope's own ``/api/v1`` paths."""
        return self._proto.native

    def _build(self, http: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
        return http.build_request(
            call.method, self._proto.base_url + call.path, headers=call.headers, json=call.json
        )

    def _where(self, step: Step) -> str:
        return step.url if isinstance(step, Download) else self._proto.base_url


class Client(_BaseClient):
    """Blocking client. ``base_url``/``api_key`` default to ``STILLMOTION_URL`` and
    ``STILLMOTION_API_KEY``; a base URL ending in ``/api/v1`` speaks DashScope's paths."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        api_style: ApiStyle = "auto",
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        poll_interval: float = 1.0,
        max_poll_interval: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            api_style=api_style,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
        )
        self._http = httpx.Client(
            timeout=timeout, transport=transport, headers={"User-Agent": USER_AGENT}
        )

    def submit(self, model: str, image: MediaInput, **options: Unpack[SubmitOptions]) -> Task:
        """Submit a task; ``image`` is a path, bytes, or an http(s)/data: URL."""
        return self._run(self._proto.submit(model, image, options))

    def get(self, task_id: str) -> Task:
        return self._run(self._proto.get(task_id))

    def wait(
        self, task_id: str, timeout: float = 900.0, on_progress: ProgressCallback | None = None
    ) -> Task:
        """Poll until the task ends: SUCCEEDED returns it; FAILED, CANCELED and UNKNOWN raise
        TaskFailed; ``timeout`` seconds without an end raise WaitTimeout."""
        return self._run(self._proto.wait(task_id, timeout, on_progress))

    def cancel(self, task_id: str) -> None:
        self._run(self._proto.cancel(task_id))

    def download(self, task: Task | str, path: str | Path) -> Path:
        """Save the video of ``task`` (or a ``video_url``) to ``path``; returns the path."""
        return self._run(self._proto.download(task, path))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, flow: Flow[T]) -> T:
        resume: Callable[[Any], Step] = flow.send
        value: Any = None
        while True:
            try:
                step = resume(value)
            except StopIteration as stop:
                result: T = stop.value
                return result
            try:
                value, resume = self._do(step), flow.send
            except httpx.TransportError as exc:
                value, resume = transport_error(exc, self._where(step)), flow.throw

    def _do(self, step: Step) -> httpx.Response | None:
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        if isinstance(step, Download):
            self._download(step)
            return None
        return self._http.send(self._build(self._http, step))

    def _download(self, step: Download) -> None:
        with self._http.stream("GET", step.url, follow_redirects=True) as resp:
            if not resp.is_success:
                resp.read()
                raise error_from(resp)
            with _partial(step.path) as fh:
                for chunk in resp.iter_bytes():
                    fh.write(chunk)


class AsyncClient(_BaseClient):
    """The asyncio twin of :class:`Client`, with the same methods as coroutines."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        api_style: ApiStyle = "auto",
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        poll_interval: float = 1.0,
        max_poll_interval: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            api_style=api_style,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
        )
        self._http = httpx.AsyncClient(
            timeout=timeout, transport=transport, headers={"User-Agent": USER_AGENT}
        )

    async def submit(self, model: str, image: MediaInput, **options: Unpack[SubmitOptions]) -> Task:
        return await self._run(self._proto.submit(model, image, options))

    async def get(self, task_id: str) -> Task:
        return await self._run(self._proto.get(task_id))

    async def wait(
        self, task_id: str, timeout: float = 900.0, on_progress: ProgressCallback | None = None
    ) -> Task:
        return await self._run(self._proto.wait(task_id, timeout, on_progress))

    async def cancel(self, task_id: str) -> None:
        await self._run(self._proto.cancel(task_id))

    async def download(self, task: Task | str, path: str | Path) -> Path:
        return await self._run(self._proto.download(task, path))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _run(self, flow: Flow[T]) -> T:
        resume: Callable[[Any], Step] = flow.send
        value: Any = None
        while True:
            try:
                step = resume(value)
            except StopIteration as stop:
                result: T = stop.value
                return result
            try:
                value, resume = await self._do(step), flow.send
            except httpx.TransportError as exc:
                value, resume = transport_error(exc, self._where(step)), flow.throw

    async def _do(self, step: Step) -> httpx.Response | None:
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        if isinstance(step, Download):
            await self._download(step)
            return None
        return await self._http.send(self._build(self._http, step))

    async def _download(self, step: Download) -> None:
        async with self._http.stream("GET", step.url, follow_redirects=True) as resp:
            if not resp.is_success:
                await resp.aread()
                raise error_from(resp)
            with _partial(step.path) as fh:
                async for chunk in resp.aiter_bytes():
                    fh.write(chunk)

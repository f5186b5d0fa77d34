"""What every relay engine does, whatever its upstream: :class:`RelayEngine`.

Per task: admission (a channel with room and a submit token, else ``EngineDeferred``), a
"submitting" marker saved on our task row, one submit, the upstream id saved the moment it
is known, then polls on a per-task schedule (``follow.py``) until the upstream task ends,
and the result collected. A task is never submitted twice: a task claimed again resumes
polling its saved upstream id, or, when only the marker was saved, is reconciled through
the family's lookup (:meth:`RelayEngine._find_submitted`) or failed with
``InternalError.SubmitUnknown``.

A family subclasses it and supplies only its wire mapping: the client (paths, status words),
the submit body, the one submit call, the lookup of a lost submit and the result.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from stillmotion.domain import CANCELABLE, MediaRef
from stillmotion.engines.base import CancelSignal, EngineJob, EngineResult, ProgressFn
from stillmotion.engines.relay.channels import Admission, Channel, ChannelConfig, key_fingerprint
from stillmotion.engines.relay.follow import (
    Relay,
    RelayTimings,
    Status,
    Upstream,
    UpstreamTask,
    save_state,
)
from stillmotion.engines.relay.http import MAX_CALLS, Failure, UpstreamError, make_http_client
from stillmotion.engines.relay.reconcile import Ambiguous
from stillmotion.engines.relay_limits import RelayLimits
from stillmotion.errors import (
    EngineCanceled,
    EngineDeferred,
    NotFound,
    PermanentEngineError,
    RetryableEngineError,
)

log = logging.getLogger("stillmotion.engines.relay")

SUBMIT_UNKNOWN = "InternalError.SubmitUnknown"
UNREACHABLE = "InternalError.Upstream"

StoredReader = Callable[[str], Awaitable[bytes]]


def stored_reader(root: Path) -> StoredReader:
    """Stored inputs read straight from a local files root (no runtime storage handed in)."""

    async def read(key: str) -> bytes:
        if not key or key.startswith("/") or ".." in key.split("/") or "\\" in key:
            raise PermanentEngineError("a stored input has an invalid key")
        return await asyncio.to_thread((root / key).read_bytes)

    return read


class RelayEngine(abc.ABC):
    """The relay protocol over a family's client; see the module docstring."""

    name = "relay"
    label = "upstream"  # the upstream in messages ("no usable DashScope key ...")
    media_kinds: frozenset[str] | None = None
    templates: frozenset[str] | None = None
    needs_media = False
    keys_required = True  # False: channels may have no keys (a fleet behind a private network)

    def __init__(
        self,
        configs: list[ChannelConfig],
        *,
        timings: RelayTimings,
        request_timeout: float = 30.0,
        allow_private: bool = False,
        read_input: StoredReader | None = None,
        max_connections: int = 256,
        limits: RelayLimits | None = None,  # shared by every worker (default: this process's)
    ) -> None:
        channels = [Channel(c, limits=limits) for c in configs]
        self.admission = Admission(channels, label=self.label, keys_required=self.keys_required)
        self._channel_names = {c.base_url: c.name for c in reversed(configs)}  # first wins
        self.max_concurrency = sum(c.max_in_flight for c in configs)
        self.timings = timings
        self.request_timeout = request_timeout
        self.allow_private = allow_private
        self.max_connections = max_connections
        self._read_input = read_input
        self._secrets = sorted({k for c in configs for k in c.api_keys}, key=len, reverse=True)
        self._http: httpx.AsyncClient | None = None
        self.gate = asyncio.Semaphore(MAX_CALLS)  # API calls in flight (relay/http.py)
        self._upstream_ids: dict[str, str] = {}  # our task id -> upstream id, in this process
        self._refused: UpstreamError | None = None  # the last 401/403 of a submit

    # -- what a family supplies ---------------------------------------------------------

    @abc.abstractmethod
    def _make_client(self, http: httpx.AsyncClient) -> Upstream: ...

    @abc.abstractmethod
    async def _upstream_body(self, job: EngineJob, channel: Channel) -> dict[str, Any]:
        """The submit body (its ``model``, else ours, is recorded in the marker)."""
        ...

    @abc.abstractmethod
    async def _send(self, channel: Channel, key: str, body: dict[str, Any], submit_id: str) -> str:
        """The one submit call; the upstream id (a seam for tests that crash around it)."""
        ...

    @abc.abstractmethod
    async def _find_submitted(
        self, job: EngineJob, channel: Channel, key: str, marker: dict[str, Any]
    ) -> str | None:
        """The upstream id of the submit ``marker`` records, or None; :class:`Ambiguous`
        when several match, :class:`UpstreamError` when the upstream cannot be asked."""
        ...

    @abc.abstractmethod
    async def _collect(
        self, job: EngineJob, task: UpstreamTask, status: Status, progress: ProgressFn
    ) -> EngineResult: ...

    # -- plumbing ----------------------------------------------------------------------

    def _task(
        self, channel: Channel, key: str, upstream_id: str, state: dict[str, Any], at: float
    ) -> UpstreamTask:
        relay = Relay(self._client, self.timings, self.scrub, self._take_out)
        return UpstreamTask(relay, channel, key, upstream_id, state, at)

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = make_http_client(self.request_timeout, self.max_connections)
        return self._http

    def _client(self) -> Any:
        return self._make_client(self.http)

    def scrub(self, text: str) -> str:
        """``text`` with every configured key blanked out (upstream messages may echo one)."""
        for key in self._secrets:
            text = text.replace(key, "***")
        return text

    def _upstream_error(self, exc: UpstreamError) -> PermanentEngineError:
        return PermanentEngineError(self.scrub(exc.message) or exc.code, code=exc.code)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- the task ----------------------------------------------------------------------

    async def generate(
        self, job: EngineJob, progress: ProgressFn, cancel: CancelSignal
    ) -> EngineResult:
        try:
            task = await self._start(job, progress, cancel)
            status = await task.follow(job, progress, cancel)
            return await self._collect(job, task, status, progress)
        finally:
            await self.admission.release(job.task_id)
            self._upstream_ids.pop(job.task_id, None)

    async def _start(
        self, job: EngineJob, progress: ProgressFn, cancel: CancelSignal
    ) -> UpstreamTask:
        state = dict(job.state)
        if state.get("upstream_id"):
            channel = await self.admission.attach(job.task_id, state.get("channel"))
            keyless = self.admission.keyless(channel)
            key = "" if keyless else channel.keys.by_fingerprint(state.get("key"))
            if key is None:
                raise PermanentEngineError(
                    f"no usable {self.label} key for this task's channel", code="InvalidApiKey"
                )
            self._upstream_ids[job.task_id] = state["upstream_id"]
            log.info("task %s: resuming upstream task %s", job.task_id, state["upstream_id"])
            return self._task(channel, key, state["upstream_id"], state, float(state["at"]))
        if state.get("submitting"):
            return await self._recover(job, state, progress)
        if cancel.is_set:
            raise EngineCanceled("canceled before the upstream submit")
        return await self._submit(job, progress)

    def _keys_of(self, channel: Channel) -> str | None:
        """The next key of ``channel`` (a channel without keys sends none: ``""``)."""
        return "" if self.admission.keyless(channel) else channel.keys.pick()

    async def _submit(self, job: EngineJob, progress: ProgressFn) -> UpstreamTask:
        if not self.admission.usable():
            raise self._no_keys()
        channel = await self.admission.admit(job.task_id)
        body = await self._upstream_body(job, channel)
        while (key := self._keys_of(channel)) is not None:
            marker: dict[str, Any] = {
                "submitting": channel.name,
                "key": key_fingerprint(key),
                "submit_id": uuid.uuid4().hex,
                "at": time.time(),
                "model": body.get("model") or job.request.model,
            }
            await save_state(job, marker)
            try:
                upstream_id = await self._send(channel, key, body, marker["submit_id"])
            except UpstreamError as exc:
                if exc.failure is not Failure.AUTH or not key:
                    return await self._submit_failed(job, channel, key, marker, exc, progress)
                self._take_out(channel, key, exc)
                await save_state(job, {})
                continue
            return await self._submitted(job, channel, key, marker, upstream_id, progress)
        await self.admission.release(job.task_id)
        if self.admission.usable():  # another channel still has keys: go there
            raise EngineDeferred("the channel's keys were refused", delay=0.05)
        raise self._no_keys()

    def _take_out(self, channel: Channel, key: str, exc: UpstreamError) -> None:
        if not key:
            return  # a channel without keys: nothing to rotate
        channel.keys.take_out(key)
        self._refused = exc
        log.warning(
            "channel %s: key %s answered %s; out of rotation",
            channel.name,
            key_fingerprint(key),
            exc.code,
        )

    def _no_keys(self) -> PermanentEngineError:
        if self._refused is not None:
            return self._upstream_error(self._refused)
        return PermanentEngineError(
            f"no {self.label} API key is configured", code="ModelUnavailable"
        )

    async def _submit_failed(
        self,
        job: EngineJob,
        channel: Channel,
        key: str,
        marker: dict[str, Any],
        exc: UpstreamError,
        progress: ProgressFn,
    ) -> UpstreamTask:
        if exc.failure is Failure.UNKNOWN:
            log.warning("task %s: submit outcome unknown (%s); reconciling", job.task_id, exc.code)
            return await self._reconcile(job, channel, key, marker, progress)
        await save_state(job, {})  # nothing was created upstream: no marker to reconcile
        if exc.failure is Failure.THROTTLED:
            wait = exc.retry_after if exc.retry_after is not None else 1.0
            await channel.block(wait)
            raise EngineDeferred("the upstream throttled the submit", delay=max(wait, 0.05))
        if exc.failure is Failure.UNAVAILABLE:
            code = exc.code if exc.status else UNREACHABLE
            raise RetryableEngineError(
                f"the upstream is unavailable: {self.scrub(exc.message)}", code=code
            )
        raise self._upstream_error(exc)

    async def _submitted(
        self,
        job: EngineJob,
        channel: Channel,
        key: str,
        marker: dict[str, Any],
        upstream_id: str,
        progress: ProgressFn,
    ) -> UpstreamTask:
        state = {k: v for k, v in marker.items() if k != "submitting"}
        # "cancelable": the upstream task is still PENDING, so a client's cancel can stop it
        # cleanly (tasks/service.py reads this flag; base.CANCELABLE)
        state.update(channel=channel.name, upstream_id=upstream_id, **{CANCELABLE: True})
        self._upstream_ids[job.task_id] = upstream_id
        await self._store_upstream_id(job, state)
        await progress(0.1)
        log.info("task %s: upstream task %s on channel %s", job.task_id, upstream_id, channel.name)
        return self._task(channel, key, upstream_id, state, float(marker["at"]))

    async def _store_upstream_id(self, job: EngineJob, state: dict[str, Any]) -> None:
        """Save the upstream id (a seam for tests that crash before it is stored)."""
        await save_state(job, state)

    async def _recover(
        self, job: EngineJob, marker: dict[str, Any], progress: ProgressFn
    ) -> UpstreamTask:
        """Claimed again after dying mid-submit: find the upstream task, never resubmit."""
        channel = await self.admission.attach(job.task_id, marker.get("submitting"))
        keyless = self.admission.keyless(channel)
        key = "" if keyless else channel.keys.by_fingerprint(marker.get("key"))
        if key is None:
            raise PermanentEngineError(
                "a submit was interrupted and no key is left to look it up", code=SUBMIT_UNKNOWN
            )
        log.warning("task %s: an interrupted submit; reconciling", job.task_id)
        return await self._reconcile(job, channel, key, marker, progress)

    async def _reconcile(
        self,
        job: EngineJob,
        channel: Channel,
        key: str,
        marker: dict[str, Any],
        progress: ProgressFn,
    ) -> UpstreamTask:
        try:
            found = await self._find_submitted(job, channel, key, marker)
        except Ambiguous as exc:
            raise PermanentEngineError(
                f"the answer to the upstream submit was lost and {exc}; it is not submitted again",
                code=SUBMIT_UNKNOWN,
            ) from None
        except UpstreamError as exc:  # the marker stays: the next attempt looks again
            raise RetryableEngineError(
                f"the upstream task list could not be read ({exc.code})", code=SUBMIT_UNKNOWN
            ) from None
        if found is None:
            raise PermanentEngineError(
                "the answer to the upstream submit was lost and no matching upstream task "
                "was found; it is not submitted again",
                code=SUBMIT_UNKNOWN,
            )
        return await self._submitted(job, channel, key, marker, found, progress)

    def taken(self) -> set[str]:
        """Upstream ids other tasks of ours hold in this process (never adopted twice)."""
        return set(self._upstream_ids.values())

    # -- inputs ------------------------------------------------------------------------

    async def stored_bytes(self, ref: MediaRef) -> bytes:
        """The bytes of an input the client sent as a ``data:`` URI, from our storage."""
        if not ref.storage_key or self._read_input is None:
            raise PermanentEngineError("a stored input cannot be read by the relay")
        try:
            return await self._read_input(ref.storage_key)
        except NotFound:
            raise PermanentEngineError("a stored input is missing") from None

    async def _media(self, ref: MediaRef) -> str:
        """A URL as sent, or the data: URI the client sent, rebuilt from our storage."""
        if ref.url:
            return ref.url
        if not ref.mime:
            raise PermanentEngineError("a stored input cannot be read by the relay")
        data = await self.stored_bytes(ref)
        return data_uri(ref.mime, data)


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

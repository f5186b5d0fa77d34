"""The ``dashscope`` engine: relay a task to a real DashScope (Bailian) upstream.

Per task: admission (a channel with room and a submit token, else ``EngineDeferred``), a
"submitting" marker saved on our task row, one submit, the upstream id saved the moment it
is known, then polls on a per-task schedule (short first, longer later; backoff with
``Retry-After`` on failures) until the upstream task ends, and the MP4 copied into our
storage. A task is never submitted twice: a task claimed again resumes polling its saved
upstream id, or, when only the marker was saved, is reconciled through the upstream task
list (:mod:`reconcile`) or failed with ``InternalError.SubmitUnknown``. The submit body is
the one the upstream model takes (:mod:`bodies`: legacy, media[] or kf2v, translated when a
model map crosses generations). docs/relay.md describes configuration, channels and faults.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from stillmotion.domain import CANCELABLE, UPSTREAM_USAGE, MediaRef
from stillmotion.engines.base import CancelSignal, EngineJob, EngineResult, ProgressFn
from stillmotion.engines.dashscope import bodies
from stillmotion.engines.dashscope.channels import (
    Admission,
    Channel,
    ChannelConfig,
    key_fingerprint,
    parse_channels,
    parse_model_map,
    split_keys,
)
from stillmotion.engines.dashscope.client import (
    Failure,
    UpstreamClient,
    UpstreamError,
    make_http_client,
)
from stillmotion.engines.dashscope.poll import Relay, RelayTimings, UpstreamTask, save_state
from stillmotion.engines.dashscope.reconcile import Ambiguous, find_submitted
from stillmotion.engines.dashscope.result import download_result, probe_video
from stillmotion.engines.relay_limits import RelayLimits
from stillmotion.errors import (
    EngineCanceled,
    EngineDeferred,
    ModelUnavailable,
    NotFound,
    PermanentEngineError,
    RetryableEngineError,
)

log = logging.getLogger("stillmotion.engines.dashscope")

DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"
SUBMIT_UNKNOWN = "InternalError.SubmitUnknown"
UNREACHABLE = "InternalError.Upstream"


def _stored_reader(root: Path) -> Callable[[str], Awaitable[bytes]]:
    async def read(key: str) -> bytes:
        if not key or key.startswith("/") or ".." in key.split("/") or "\\" in key:
            raise PermanentEngineError("a stored input has an invalid key")
        return await asyncio.to_thread((root / key).read_bytes)

    return read


class DashScopeEngine:
    """Relay tasks to DashScope channels; see the module docstring and docs/relay.md."""

    name = "dashscope"
    media_kinds = None  # every media kind and template the catalog allows: passed on
    templates = None
    needs_media = False

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_keys: str | list[str] = "",
        max_in_flight: int = 100,
        submit_rate: float = 2.0,
        query_rate: float = 20.0,
        channels: Any = None,
        model_map: str | dict[str, str] = "",
        task_deadline: float = 3600.0,
        poll_first: float = 3.0,
        poll_max: float = 15.0,
        max_poll_failures: int = 20,
        download_timeout: float = 300.0,
        request_timeout: float = 30.0,
        allow_private: bool = False,
        files_root: Path | None = None,
        read_input: Callable[[str], Awaitable[bytes]] | None = None,  # the runtime's storage
        max_connections: int = 256,
        limits: RelayLimits | None = None,  # shared by every worker (default: this process's)
    ) -> None:
        try:
            default = ChannelConfig(
                name="default",
                base_url=base_url.rstrip("/"),
                api_keys=split_keys(api_keys),
                max_in_flight=max(1, max_in_flight),
                submit_rate=submit_rate,
                query_rate=query_rate,
                model_map=parse_model_map(model_map),
            )
            configs = parse_channels(channels, default)
        except (TypeError, ValueError) as exc:  # the runtime reports it as a setting error
            raise ModelUnavailable(f"dashscope engine: {exc}") from None
        self.admission = Admission([Channel(c, limits=limits) for c in configs])
        self._channel_names = {c.base_url: c.name for c in reversed(configs)}  # first wins
        self.max_concurrency = sum(c.max_in_flight for c in configs)
        self.timings = RelayTimings(
            poll_first=poll_first,
            poll_max=max(poll_max, poll_first),
            max_poll_failures=max(1, max_poll_failures),
            task_deadline=task_deadline,
            download_timeout=download_timeout,
        )
        self.request_timeout = request_timeout
        self.allow_private = allow_private
        self.max_connections = max_connections
        self._read_input = read_input or (_stored_reader(files_root) if files_root else None)
        self._secrets = sorted({k for c in configs for k in c.api_keys}, key=len, reverse=True)
        self._http: httpx.AsyncClient | None = None
        self._upstream_ids: dict[str, str] = {}  # our task id -> upstream id, in this process
        self._refused: UpstreamError | None = None  # the last 401/403 of a submit

    # -- plumbing ----------------------------------------------------------------------

    def _task(
        self, channel: Channel, key: str, upstream_id: str, state: dict[str, Any], at: float
    ) -> UpstreamTask:
        relay = Relay(self._client, self.timings, self.scrub, self._take_out)
        return UpstreamTask(relay, channel, key, upstream_id, state, at)

    def _client(self) -> UpstreamClient:
        if self._http is None:
            self._http = make_http_client(self.request_timeout, self.max_connections)
        return UpstreamClient(self._http, self._channel_names)

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
            body = await task.follow(job, progress, cancel)
            usage = body.get("usage")
            if isinstance(usage, dict) and usage:  # delivered upstream: billable from here on
                await save_state(job, {**task.state, UPSTREAM_USAGE: dict(usage)})
            return await self._collect(job, body, progress, self._target(job, task))
        finally:
            await self.admission.release(job.task_id)
            self._upstream_ids.pop(job.task_id, None)

    async def _start(
        self, job: EngineJob, progress: ProgressFn, cancel: CancelSignal
    ) -> UpstreamTask:
        state = dict(job.state)
        if state.get("upstream_id"):
            channel = await self.admission.attach(job.task_id, state.get("channel"))
            key = channel.keys.by_fingerprint(state.get("key"))
            if key is None:
                raise PermanentEngineError(
                    "no usable DashScope key for this task's channel", code="InvalidApiKey"
                )
            self._upstream_ids[job.task_id] = state["upstream_id"]
            log.info("task %s: resuming upstream task %s", job.task_id, state["upstream_id"])
            return self._task(channel, key, state["upstream_id"], state, float(state["at"]))
        if state.get("submitting"):
            return await self._recover(job, state, progress)
        if cancel.is_set:
            raise EngineCanceled("canceled before the upstream submit")
        return await self._submit(job, progress)

    async def _submit(self, job: EngineJob, progress: ProgressFn) -> UpstreamTask:
        if not self.admission.usable():
            raise self._no_keys()
        channel = await self.admission.admit(job.task_id)
        body = await self._upstream_body(job, channel)
        while (key := channel.keys.pick()) is not None:
            marker = {
                "submitting": channel.name,
                "key": key_fingerprint(key),
                "submit_id": uuid.uuid4().hex,
                "at": time.time(),
                "model": body["model"],
            }
            await save_state(job, marker)
            try:
                upstream_id = await self._send(channel, key, body, marker["submit_id"])
            except UpstreamError as exc:
                if exc.failure is not Failure.AUTH:
                    return await self._submit_failed(job, channel, key, marker, exc, progress)
                self._take_out(channel, key, exc)
                await save_state(job, {})
                continue
            return await self._submitted(job, channel, key, marker, upstream_id, progress)
        await self.admission.release(job.task_id)
        if self.admission.usable():  # another channel still has keys: go there
            raise EngineDeferred("the channel's keys were refused", delay=0.05)
        raise self._no_keys()

    async def _send(self, channel: Channel, key: str, body: dict[str, Any], submit_id: str) -> str:
        """The one submit call (a seam for tests that crash around it)."""
        log.info("submitting to channel %s with key %s", channel.name, key_fingerprint(key))
        path = bodies.submit_path(body)
        return await self._client().submit(channel.config.base_url, key, body, submit_id, path)

    def _take_out(self, channel: Channel, key: str, exc: UpstreamError) -> None:
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
        return PermanentEngineError("no DashScope API key is configured", code="ModelUnavailable")

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
        key = channel.keys.by_fingerprint(marker.get("key"))
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
            found = await find_submitted(
                self._client(),
                channel.config.base_url,
                key,
                model=str(marker.get("model") or job.request.model),
                prompt=job.request.prompt,
                at=float(marker["at"]),
                taken=set(self._upstream_ids.values()),
                throttle=channel.take_query,
            )
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

    async def _upstream_body(self, job: EngineJob, channel: Channel) -> dict[str, Any]:
        """The body the upstream model takes (``bodies.py``: the model map may cross body
        generations); ``InvalidParameter.Untranslatable`` before anything is submitted."""
        target = bodies.target(job.spec, channel.config.upstream_model(job.request.model))
        if target.model != job.request.model and target.body != job.spec.body:
            log.info(
                "task %s: %s (%s body) goes up as %s (%s body)",
                job.task_id,
                job.request.model,
                job.spec.body,
                target.model,
                target.body,
            )
        return await bodies.build_body(job.request, target, self._media)

    def _target(self, job: EngineJob, task: UpstreamTask) -> bodies.Target:
        """The model the task went up as: the one its submit marker recorded."""
        model = task.state.get("model") or task.channel.config.upstream_model(job.request.model)
        return bodies.target(job.spec, str(model))

    async def _media(self, ref: MediaRef) -> str:
        """A URL as sent, or the data: URI the client sent, rebuilt from our storage."""
        if ref.url:
            return ref.url
        if not ref.storage_key or not ref.mime or self._read_input is None:
            raise PermanentEngineError("a stored input cannot be read by the relay")
        try:
            data = await self._read_input(ref.storage_key)
        except NotFound:
            raise PermanentEngineError("a stored input is missing") from None
        return f"data:{ref.mime};base64,{base64.b64encode(data).decode('ascii')}"

    # -- the result --------------------------------------------------------------------

    async def _collect(
        self, job: EngineJob, body: dict[str, Any], progress: ProgressFn, target: bodies.Target
    ) -> EngineResult:
        out = body["output"]
        url = out.get("video_url")
        if not url:
            raise PermanentEngineError("the upstream task succeeded without a video_url")
        await progress(0.95)
        dest = await download_result(
            str(url),
            job.work_dir / "upstream.mp4",
            allow_private=self.allow_private,
            timeout=self.timings.download_timeout,
            client=self._http,
        )
        info = await asyncio.to_thread(probe_video, dest)
        extra = {k: out[k] for k in ("orig_prompt", "actual_prompt") if out.get(k)}
        usage = body.get("usage")
        settled = None
        if isinstance(usage, dict) and usage:  # in the client model's shape (bodies.py)
            size = (info.width, info.height)
            settled = bodies.settle_usage(usage, job.request, target, size)
        return EngineResult(
            video_path=dest,
            width=info.width,
            height=info.height,
            fps=info.fps,
            num_frames=info.num_frames,
            has_audio=info.has_audio,
            usage=settled,
            extra_output=extra,
        )

"""The ``dashscope`` engine: relay a task to a real DashScope (Bailian) upstream.

The relay protocol (admission, the submit marker, one submit, the upstream id saved at
once, polling, never submitting twice) is :class:`~stillmotion.engines.relay.engine.RelayEngine`;
this engine holds DashScope's wire mapping: its client (:mod:`client`), the submit body the
upstream model takes (:mod:`bodies`: legacy, media[] or kf2v, translated when a model map
crosses generations), the lookup of a lost submit through the upstream task list
(:mod:`reconcile`), and the result (the ``video_url`` copied into our storage, ``usage`` in
the client model's shape). docs/relay.md describes configuration, channels and faults.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from stillmotion.domain import UPSTREAM_USAGE
from stillmotion.engines.base import EngineJob, EngineResult, ProgressFn
from stillmotion.engines.dashscope import bodies
from stillmotion.engines.dashscope.client import UpstreamClient
from stillmotion.engines.dashscope.reconcile import find_submitted
from stillmotion.engines.relay.channels import (
    Channel,
    channel_configs,
    key_fingerprint,
    parse_model_map,
)
from stillmotion.engines.relay.engine import (
    SUBMIT_UNKNOWN,
    UNREACHABLE,
    RelayEngine,
    stored_reader,
)
from stillmotion.engines.relay.follow import RelayTimings, Status, UpstreamTask, save_state
from stillmotion.engines.relay.result import download_result, probe_video
from stillmotion.engines.relay_limits import RelayLimits
from stillmotion.errors import ModelUnavailable, PermanentEngineError

__all__ = ["DEFAULT_BASE_URL", "SUBMIT_UNKNOWN", "UNREACHABLE", "DashScopeEngine"]

log = logging.getLogger("stillmotion.engines.dashscope")

DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"
ALLOW_SETTING = "STILLMOTION_DASHSCOPE_ALLOW_PRIVATE"


class DashScopeEngine(RelayEngine):
    """Relay tasks to DashScope channels; see the module docstring and docs/relay.md."""

    name = "dashscope"
    label = "DashScope"
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
            configs = channel_configs(
                "dashscope",
                base_url=base_url,
                api_keys=api_keys,
                max_in_flight=max_in_flight,
                submit_rate=submit_rate,
                query_rate=query_rate,
                model_map=parse_model_map(model_map),
                channels=channels,
            )
        except (TypeError, ValueError) as exc:  # the runtime reports it as a setting error
            raise ModelUnavailable(f"dashscope engine: {exc}") from None
        super().__init__(
            configs,
            timings=RelayTimings.of(
                poll_first=poll_first,
                poll_max=poll_max,
                max_poll_failures=max_poll_failures,
                task_deadline=task_deadline,
                download_timeout=download_timeout,
            ),
            request_timeout=request_timeout,
            allow_private=allow_private,
            read_input=read_input or (stored_reader(files_root) if files_root else None),
            max_connections=max_connections,
            limits=limits,
        )

    # -- the wire mapping --------------------------------------------------------------

    def _make_client(self, http: httpx.AsyncClient) -> UpstreamClient:
        return UpstreamClient(http, self._channel_names, self.gate)

    def _client(self) -> UpstreamClient:
        return self._make_client(self.http)

    async def _send(self, channel: Channel, key: str, body: dict[str, Any], submit_id: str) -> str:
        """The one submit call (a seam for tests that crash around it)."""
        log.info("submitting to channel %s with key %s", channel.name, key_fingerprint(key))
        path = bodies.submit_path(body)
        return await self._client().submit(channel.config.base_url, key, body, submit_id, path)

    async def _find_submitted(
        self, job: EngineJob, channel: Channel, key: str, marker: dict[str, Any]
    ) -> str | None:
        return await find_submitted(
            self._client(),
            channel.config.base_url,
            key,
            model=str(marker.get("model") or job.request.model),
            prompt=job.request.prompt,
            at=float(marker["at"]),
            taken=self.taken(),
            throttle=channel.take_query,
        )

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

    # -- the result --------------------------------------------------------------------

    async def _collect(
        self, job: EngineJob, task: UpstreamTask, status: Status, progress: ProgressFn
    ) -> EngineResult:
        body = status.body
        usage = body.get("usage")
        if isinstance(usage, dict) and usage:  # delivered upstream: billable from here on
            await save_state(job, {**task.state, UPSTREAM_USAGE: dict(usage)})
        target = self._target(job, task)
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
            allow_setting=ALLOW_SETTING,
        )
        info = await asyncio.to_thread(probe_video, dest)
        extra = {k: out[k] for k in ("orig_prompt", "actual_prompt") if out.get(k)}
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

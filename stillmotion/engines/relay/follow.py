"""Following one upstream task: per-task poll schedule, backoff, cancel and deadline.

Every relayed task polls on its own schedule (``poll_first``, then 1.5x longer each time up
to ``poll_max``, with jitter so a thousand tasks do not poll in step), through its channel's
query rate limit and the shared connection pool. A failed poll backs off exponentially (at
least ``Retry-After``; a 429 also pauses the whole channel's queries); ``max_poll_failures``
failures in a row fail the task. No task waits for another: a cycle over N tasks is N
independent requests in flight at once.

A family's client answers a poll with a :class:`Status` (its status words mapped onto
ours); everything else here is the same for every upstream.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from stillmotion.domain import CANCELABLE
from stillmotion.engines.base import CancelSignal, EngineJob, ProgressFn
from stillmotion.engines.relay.channels import Channel
from stillmotion.engines.relay.http import Failure, UpstreamError
from stillmotion.errors import EngineCanceled, LeaseLost, PermanentEngineError

log = logging.getLogger("stillmotion.engines.relay")

TIMEOUT = "InternalError.Timeout"
POLL_FAILED = "InternalError.PollFailed"
UPSTREAM_CANCELED = "InternalError.UpstreamCanceled"
UPSTREAM_UNKNOWN = "InternalError.UpstreamUnknown"
MAX_BACKOFF = 300.0

#: Our status words; a client maps the upstream's onto them (anything else keeps polling).
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED, UNKNOWN = (
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELED",
    "UNKNOWN",
)


@dataclass(frozen=True)
class Status:
    """One poll's answer: our status word, the upstream's body, an error, its progress."""

    state: str
    body: dict[str, Any]
    code: str | None = None  # FAILED: the upstream's error code and message
    message: str | None = None
    progress: float | None = None  # the upstream's own fraction done, in [0, 1]


class Upstream(Protocol):
    """What following a task needs of a family's client."""

    async def status(self, base: str, key: str, task_id: str) -> Status: ...

    async def cancel(self, base: str, key: str, task_id: str) -> bool: ...


@dataclass(frozen=True)
class RelayTimings:
    poll_first: float = 3.0  # first poll this long after the submit
    poll_max: float = 15.0  # intervals grow by ``poll_growth`` up to this
    poll_growth: float = 1.5
    max_poll_failures: int = 20  # consecutive failed polls that fail the task
    task_deadline: float = 3600.0  # an upstream task older than this fails (timeout)
    unknown_grace: float = 60.0  # UNKNOWN this soon after the submit may be lag: poll again
    download_timeout: float = 300.0

    @classmethod
    def of(
        cls,
        *,
        poll_first: float,
        poll_max: float,
        max_poll_failures: int,
        task_deadline: float,
        download_timeout: float,
    ) -> RelayTimings:
        """From an engine's settings: ``poll_max`` at least ``poll_first``, at least one
        failure allowed."""
        return cls(
            poll_first=poll_first,
            poll_max=max(poll_max, poll_first),
            max_poll_failures=max(1, max_poll_failures),
            task_deadline=task_deadline,
            download_timeout=download_timeout,
        )


@dataclass(frozen=True)
class Relay:
    """What every followed task shares with the engine."""

    client: Callable[[], Upstream]
    timings: RelayTimings
    scrub: Callable[[str], str]  # blanks keys out of upstream text
    refused: Callable[[Channel, str, UpstreamError], None]  # a key answered 401/403


async def save_state(job: EngineJob, state: dict[str, Any]) -> None:
    """Persist engine state on the task; ``LeaseLost`` when this claim is no longer ours."""
    if not await job.save_state(state):
        raise LeaseLost("lost the claim on the task")


async def wait_or_cancel(cancel: CancelSignal, delay: float) -> bool:
    """Sleep ``delay`` seconds; True as soon as ``cancel`` is set."""
    if cancel.is_set:
        return True
    try:
        async with asyncio.timeout(delay):
            await cancel.wait()
    except TimeoutError:
        return False
    return True


class UpstreamTask:
    """One of our tasks in flight upstream: ``state`` is what is saved on our task row."""

    def __init__(
        self,
        relay: Relay,
        channel: Channel,
        key: str,
        upstream_id: str,
        state: dict[str, Any],
        at: float,
    ) -> None:
        self.relay = relay
        self.channel = channel
        self.key = key
        self.upstream_id = upstream_id
        self.state = state
        self.at = at  # wall-clock time of the submit marker
        self.failures = 0
        self._running_since: float | None = None

    @property
    def base(self) -> str:
        return self.channel.config.base_url

    async def follow(self, job: EngineJob, progress: ProgressFn, cancel: CancelSignal) -> Status:
        """Poll until the upstream task ends; its SUCCEEDED status (anything else raises)."""
        t = self.relay.timings
        delay, polls = t.poll_first, 0
        while True:
            if await wait_or_cancel(cancel, delay):
                await self._canceled(job)
            if time.time() - self.at > t.task_deadline:
                await self._timed_out()
            try:
                await self.channel.take_query()
                status = await self.relay.client().status(self.base, self.key, self.upstream_id)
            except UpstreamError as exc:
                delay = await self._failed(exc)
                continue
            if status.state == SUCCEEDED:
                return status
            if status.state == UNKNOWN and time.time() - self.at < t.unknown_grace:
                delay = await self._failed(None)  # a task this fresh may not be visible yet
                continue
            self._check_ended(status)
            self.failures = 0
            if status.state != PENDING and self.state.get(CANCELABLE):
                self.state[CANCELABLE] = False  # started upstream: it will run to its end
                await save_state(job, self.state)
            await progress(self._fraction(status))
            polls += 1
            delay = min(t.poll_max, t.poll_first * t.poll_growth**polls) * random.uniform(0.9, 1.1)

    async def _failed(self, exc: UpstreamError | None) -> float:
        """Count a failed poll (``None``: an early UNKNOWN); the next delay, or raise."""
        if exc is not None and exc.failure is Failure.AUTH:
            self.relay.refused(self.channel, self.key, exc)
            raise PermanentEngineError(self.relay.scrub(exc.message) or exc.code, code=exc.code)
        self.failures += 1
        if self.failures >= self.relay.timings.max_poll_failures:
            if exc is None:
                raise PermanentEngineError(
                    "the upstream does not know the task (UNKNOWN)", code=UPSTREAM_UNKNOWN
                )
            raise PermanentEngineError(
                f"{self.failures} polls of the upstream task failed in a row (last: {exc.code})",
                code=POLL_FAILED,
            )
        after = exc.retry_after if exc is not None and exc.retry_after is not None else 0.0
        if exc is not None and exc.failure is Failure.THROTTLED and after:
            await self.channel.pause_queries(after)
        first = self.relay.timings.poll_first
        backoff = min(MAX_BACKOFF, first * 2 ** (self.failures - 1))
        return max(after, backoff * random.uniform(1.0, 1.25))

    def _check_ended(self, status: Status) -> None:
        if status.state == FAILED:
            code = str(status.code or "InternalError.Algo")
            message = self.relay.scrub(str(status.message or code))
            raise PermanentEngineError(message, code=code)
        if status.state == CANCELED:
            raise PermanentEngineError(
                "the upstream task was canceled outside this service", code=UPSTREAM_CANCELED
            )
        if status.state == UNKNOWN:
            raise PermanentEngineError(
                "the upstream task expired or does not exist (UNKNOWN)", code=UPSTREAM_UNKNOWN
            )

    def _fraction(self, status: Status) -> float:
        """0.1 while queued upstream; while it runs, the upstream's own progress mapped onto
        0.1-0.9, or (an upstream that reports none) from 0.5 towards 0.9."""
        if status.state != RUNNING:
            return 0.1
        if status.progress is not None:
            return 0.1 + 0.8 * min(1.0, max(0.0, status.progress))
        now = time.monotonic()
        self._running_since = self._running_since or now
        return 0.5 + 0.4 * (1 - math.exp(-(now - self._running_since) / 120))

    async def cancel_upstream(self) -> bool:
        """Best effort: True when upstream canceled it (it was PENDING)."""
        try:
            await self.channel.take_query()
            return await self.relay.client().cancel(self.base, self.key, self.upstream_id)
        except UpstreamError as exc:
            log.warning("canceling upstream task %s failed: %s", self.upstream_id, exc.code)
            return False

    async def _canceled(self, job: EngineJob) -> None:
        await save_state(job, self.state)  # LeaseLost when the signal meant a lost claim
        if await self.cancel_upstream():
            raise EngineCanceled("canceled; the upstream task was canceled too")
        raise EngineCanceled("canceled; the upstream task had started and runs to its end")

    async def _timed_out(self) -> None:
        await self.cancel_upstream()
        deadline = self.relay.timings.task_deadline
        raise PermanentEngineError(
            f"the upstream task did not finish within {deadline:g} s", code=TIMEOUT
        )

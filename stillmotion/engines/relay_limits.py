"""A relay channel's limits: its cap on upstream tasks in flight, its submit and query rates
(token buckets) and its submit block after a 429, behind one interface.

:class:`LocalLimits` keeps them in this process (one worker process, or SQLite's single
box). The runtime hands the relay a shared implementation instead when several worker
processes must respect one upstream account together (``tasks/relay_limits.py``: the same
arithmetic on rows of the database, each change in one transaction). Both take the same
arguments and answer the same way, so admission and polling do not know which they use.

Every method names its channel by :class:`Limit` (name, cap, rates), so an implementation
needs no configuration of its own and a changed setting applies at the next call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Limit:
    """What limits one channel: the name its state is kept under, its cap and rates."""

    name: str
    max_in_flight: int
    submit_rate: float
    query_rate: float


@dataclass(frozen=True)
class ChannelState:
    """A snapshot for admission's ordering and deferral estimate."""

    in_flight: int
    blocked_for: float  # seconds until submits may go again (0: not blocked)
    submit_wait: float  # seconds until the next submit token


class RelayLimits(Protocol):
    async def admit(self, limit: Limit, task_id: str, max_wait: float) -> float | None:
        """A slot under the cap and a submit token due within ``max_wait`` seconds, both
        taken: the wait for the token; or None (nothing taken: full, blocked or too far)."""
        ...

    async def attach(self, limit: Limit, task_id: str) -> None:
        """Count a task already in flight upstream (a resumed one), whatever the cap."""
        ...

    async def release(self, task_id: str) -> None:
        """The task's slot, on whichever channel, is free again (idempotent)."""
        ...

    async def take_query(self, limit: Limit) -> float:
        """Reserve a query token (going into debt if need be): the wait before using it."""
        ...

    async def pause_queries(self, limit: Limit, seconds: float) -> None:
        """No query tokens for ``seconds`` (a 429 on a poll)."""
        ...

    async def block(self, limit: Limit, seconds: float) -> None:
        """No submits for ``seconds`` (a 429 on a submit)."""
        ...

    async def states(self, limits: Iterable[Limit]) -> dict[str, ChannelState]: ...


def refill(tokens: float | None, at: float | None, now: float, rate: float) -> float:
    """A bucket's tokens at ``now`` (``None``: never used, so full; bursts up to the rate)."""
    burst = max(1.0, rate)
    if tokens is None or at is None:
        return burst
    return min(burst, tokens + max(0.0, now - at) * max(rate, 1e-6))


def reserve(tokens: float, rate: float, max_wait: float) -> tuple[float, float] | None:
    """Take one token due within ``max_wait``: ``(tokens left, wait)``, or None."""
    rate = max(rate, 1e-6)
    if tokens - 1 < -rate * max_wait:
        return None
    tokens -= 1
    return tokens, max(0.0, -tokens / rate)


def wait_for_token(tokens: float, rate: float) -> float:
    return max(0.0, (1 - tokens) / max(rate, 1e-6))


class TokenBucket:
    """``rate`` tokens a second, bursts up to ``max(1, rate)``; reservations may go into debt."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic):
        self.rate = max(rate, 1e-6)
        self.tokens: float | None = None
        self.clock = clock
        self._at = clock()

    def _refill(self) -> float:
        now = self.clock()
        tokens = refill(self.tokens, self._at, now, self.rate)
        self.tokens, self._at = tokens, now
        return tokens

    def reserve(self, max_wait: float) -> float | None:
        """Take a token due within ``max_wait`` seconds: the wait, or None (nothing taken)."""
        taken = reserve(self._refill(), self.rate, max_wait)
        if taken is None:
            return None
        self.tokens, wait = taken
        return wait

    def wait_time(self) -> float:
        return wait_for_token(self._refill(), self.rate)

    def pause(self, seconds: float) -> None:
        """No tokens for ``seconds`` (the upstream said Retry-After)."""
        self.tokens = min(self._refill(), -self.rate * seconds)

    async def take(self) -> None:
        """Wait for a token (a FIFO-ish queue: each caller reserves its slot)."""
        wait = self.reserve(float("inf"))
        if wait:
            await asyncio.sleep(wait)


class _Local:
    def __init__(self, limit: Limit, clock: Callable[[], float]) -> None:
        self.submits = TokenBucket(limit.submit_rate, clock)
        self.queries = TokenBucket(limit.query_rate, clock)
        self.in_flight: set[str] = set()
        self.blocked_until = 0.0


class LocalLimits:
    """:class:`RelayLimits` in this process's memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._channels: dict[str, _Local] = {}

    def _get(self, limit: Limit) -> _Local:
        state = self._channels.get(limit.name)
        if state is None:
            state = self._channels[limit.name] = _Local(limit, self.clock)
        return state

    async def admit(self, limit: Limit, task_id: str, max_wait: float) -> float | None:
        state = self._get(limit)
        others = state.in_flight - {task_id}
        if len(others) >= limit.max_in_flight or state.blocked_until > self.clock():
            return None
        wait = state.submits.reserve(max_wait)
        if wait is not None:
            state.in_flight.add(task_id)
        return wait

    async def attach(self, limit: Limit, task_id: str) -> None:
        self._get(limit).in_flight.add(task_id)

    async def release(self, task_id: str) -> None:
        for state in self._channels.values():
            state.in_flight.discard(task_id)

    async def take_query(self, limit: Limit) -> float:
        return self._get(limit).queries.reserve(float("inf")) or 0.0

    async def pause_queries(self, limit: Limit, seconds: float) -> None:
        self._get(limit).queries.pause(seconds)

    async def block(self, limit: Limit, seconds: float) -> None:
        state = self._get(limit)
        state.blocked_until = max(state.blocked_until, self.clock() + seconds)

    async def states(self, limits: Iterable[Limit]) -> dict[str, ChannelState]:
        now = self.clock()
        out = {}
        for limit in limits:
            state = self._get(limit)
            out[limit.name] = ChannelState(
                len(state.in_flight),
                max(0.0, state.blocked_until - now),
                state.submits.wait_time(),
            )
        return out

"""Channels (an upstream account: base URL, keys, caps), key rotation and admission.

A *channel* is one upstream account (a cloud region, a GPU fleet's endpoint). Each has API
keys used in turn (a key that answers 401/403 leaves the rotation for a while), a cap on
tasks in flight, a submit rate and a query rate (token buckets): its limits, kept in this
process or shared by every worker process (``relay_limits.py``). :class:`Admission` picks
the channel for a new task or tells the caller how long to wait (``EngineDeferred``); it
never queues in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stillmotion.engines.relay_limits import (
    ChannelState,
    Limit,
    LocalLimits,
    RelayLimits,
    TokenBucket,
)
from stillmotion.errors import EngineDeferred

__all__ = [
    "Admission",
    "Channel",
    "ChannelConfig",
    "KeyRing",
    "TokenBucket",
    "key_fingerprint",
    "channel_configs",
    "parse_channels",
    "parse_model_map",
    "split_keys",
]

KEY_COOLDOWN = 600.0  # seconds a key that answered 401/403 stays out of the rotation
MAX_SHORT_WAIT = 0.5  # a submit token this close is waited for instead of deferring
MAX_DEFER = 30.0


def key_fingerprint(key: str) -> str:
    """A stable, non-reversible name for a key: what state and logs record, never the key."""
    return "k-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def parse_model_map(value: str | dict[str, str] | None) -> dict[str, str]:
    """``"wan2.6-i2v=wan2.6-i2v-us,..."`` (or a mapping) to ``{our model: upstream model}``."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for part in (value or "").split(","):
        if not part.strip():
            continue
        ours, sep, theirs = part.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise ValueError(f"model map entry {part.strip()!r} is not OUR_MODEL=UPSTREAM_MODEL")
        out[ours.strip()] = theirs.strip()
    return out


def split_keys(value: str | Iterable[str] | None) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return tuple(dict.fromkeys(k.strip() for k in items if k and k.strip()))


@dataclass(frozen=True)
class ChannelConfig:
    """One channel's settings. ``model_map`` maps our model names to what the family sends
    up (a model name, or an entry with a ``model`` field and whatever else it sends)."""

    name: str
    base_url: str
    api_keys: tuple[str, ...] = field(repr=False)
    max_in_flight: int = 100
    submit_rate: float = 2.0
    query_rate: float = 20.0
    model_map: Mapping[str, Any] = field(default_factory=dict)
    family: str = "relay"  # the engine's name: its limits are kept apart from other relays'

    def upstream_model(self, model: str) -> str:
        """The upstream's name for ``model`` (an entry's ``model`` field, or the entry)."""
        entry = self.model_map.get(model)
        name = getattr(entry, "model", entry)
        return str(name) if name else model

    @property
    def limits_name(self) -> str:
        """The name its shared limits are kept under (one per channel name, every process)."""
        return f"{self.family}/{self.name}"


ModelMapParser = Callable[[Any], Mapping[str, Any]]

CHANNEL_FIELDS = frozenset(
    {"name", "base_url", "api_keys", "max_in_flight", "submit_rate", "query_rate", "model_map"}
)


def parse_channels(
    raw: Any,
    default: ChannelConfig,
    *,
    setting: str = "channels",
    parse_map: ModelMapParser | None = None,
) -> list[ChannelConfig]:
    """The channel list from settings: a JSON string, a list of tables, or empty (then the
    single ``default`` channel). Missing fields inherit from ``default``; names are unique.
    ``setting`` names the list in errors; ``parse_map`` reads a channel's ``model_map``
    (default: :func:`parse_model_map`), applied over the default's."""
    if isinstance(raw, str):
        raw = json.loads(raw) if raw.strip() else []
    if not raw:
        return [default]
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ValueError(f"{setting} must be a list of objects")
    read_map = parse_map or parse_model_map
    channels = [_channel(item, default, i, setting, read_map) for i, item in enumerate(raw)]
    names = [c.name for c in channels]
    if len(set(names)) != len(names):
        raise ValueError(f"{setting}: channel names must be unique")
    return channels


def _channel(
    item: dict[str, Any],
    default: ChannelConfig,
    index: int,
    setting: str,
    read_map: ModelMapParser,
) -> ChannelConfig:
    unknown = set(item) - CHANNEL_FIELDS
    if unknown:
        raise ValueError(f"{setting}[{index}]: unknown field(s) {sorted(unknown)}")
    model_map = dict(default.model_map)
    model_map.update(read_map(item.get("model_map")))
    return ChannelConfig(
        name=str(item.get("name") or f"channel{index + 1}"),
        base_url=str(item.get("base_url") or default.base_url).rstrip("/"),
        api_keys=split_keys(item["api_keys"]) if "api_keys" in item else default.api_keys,
        max_in_flight=max(1, int(item.get("max_in_flight", default.max_in_flight))),
        submit_rate=float(item.get("submit_rate", default.submit_rate)),
        query_rate=float(item.get("query_rate", default.query_rate)),
        model_map=model_map,
        family=default.family,
    )


def channel_configs(
    family: str,
    *,
    base_url: str,
    api_keys: str | Iterable[str],
    max_in_flight: int,
    submit_rate: float,
    query_rate: float,
    model_map: Mapping[str, Any],
    channels: Any,
    parse_map: ModelMapParser | None = None,
) -> list[ChannelConfig]:
    """An engine's channels from its settings: the single ``default`` channel made of them,
    or the ``<family>_channels`` list inheriting from it. Raises ``ValueError``."""
    default = ChannelConfig(
        name="default",
        base_url=base_url.rstrip("/"),
        api_keys=split_keys(api_keys),
        max_in_flight=max(1, max_in_flight),
        submit_rate=submit_rate,
        query_rate=query_rate,
        model_map=model_map,
        family=family,
    )
    setting = f"{family.replace('-', '_')}_channels"
    return parse_channels(channels, default, setting=setting, parse_map=parse_map)


class KeyRing:
    """Round-robin over a channel's keys, skipping keys out of rotation."""

    def __init__(self, keys: tuple[str, ...], clock: Callable[[], float] = time.monotonic):
        self._keys = keys
        self._by_fp = {key_fingerprint(k): k for k in keys}
        self._off: dict[str, float] = {}  # key -> back in rotation at
        self._next = 0
        self.clock = clock

    def active(self) -> list[str]:
        now = self.clock()
        return [k for k in self._keys if self._off.get(k, 0.0) <= now]

    def pick(self) -> str | None:
        active = self.active()
        if not active:
            return None
        key = active[self._next % len(active)]
        self._next += 1
        return key

    def by_fingerprint(self, fingerprint: str | None) -> str | None:
        """The key that made a task (polls must use it), else any active key."""
        key = self._by_fp.get(fingerprint or "")
        return key if key is not None else self.pick()

    def take_out(self, key: str, seconds: float = KEY_COOLDOWN) -> None:
        self._off[key] = self.clock() + seconds

    def __contains__(self, key: str) -> bool:
        return key in self._by_fp.values()


class Channel:
    """One upstream account: its keys (rotated here) and its limits (``relay_limits.py``:
    this process's, or shared by every worker process)."""

    def __init__(
        self,
        config: ChannelConfig,
        clock: Callable[[], float] = time.monotonic,
        limits: RelayLimits | None = None,
    ):
        self.config = config
        self.name = config.name
        self.keys = KeyRing(config.api_keys, clock)
        self.limits: RelayLimits = limits or LocalLimits(clock)
        self.limit = Limit(
            config.limits_name, config.max_in_flight, config.submit_rate, config.query_rate
        )

    async def take_query(self) -> None:
        """Wait for a query token of this channel."""
        wait = await self.limits.take_query(self.limit)
        if wait:
            await asyncio.sleep(wait)

    async def pause_queries(self, seconds: float) -> None:
        await self.limits.pause_queries(self.limit, seconds)

    async def block(self, seconds: float) -> None:
        await self.limits.block(self.limit, seconds)


class Admission:
    """Which channel a new task goes to, or how long it must wait."""

    def __init__(
        self,
        channels: list[Channel],
        clock: Callable[[], float] = time.monotonic,
        label: str = "upstream",  # who the channels belong to, in messages
        keys_required: bool = True,  # False: a channel without keys sends no Authorization
    ):
        self.channels = channels
        self.label = label
        self.keys_required = keys_required
        self._by_name = {c.name: c for c in channels}
        self._waiting: dict[str, float] = {}  # task id -> last deferral (a backlog estimate)
        self.clock = clock

    def channel(self, name: str | None) -> Channel | None:
        return self._by_name.get(name or "")

    async def attach(self, task_id: str, name: str | None) -> Channel:
        """A task already in flight upstream (resumed): count it, whatever the cap."""
        channel = self.channel(name) or self.channels[0]
        await channel.limits.attach(channel.limit, task_id)
        return channel

    async def release(self, task_id: str) -> None:
        self._waiting.pop(task_id, None)
        for limits in {id(c.limits): c.limits for c in self.channels}.values():
            await limits.release(task_id)

    def keyless(self, channel: Channel) -> bool:
        """A channel that sends no key (its upstream takes none)."""
        return not self.keys_required and not channel.config.api_keys

    def usable(self) -> list[Channel]:
        return [c for c in self.channels if self.keyless(c) or c.keys.active()]

    async def _states(self, channels: list[Channel]) -> dict[str, ChannelState]:
        out: dict[str, ChannelState] = {}
        for limits in {id(c.limits): c.limits for c in channels}.values():
            out.update(await limits.states(c.limit for c in channels if c.limits is limits))
        return out

    async def admit(self, task_id: str) -> Channel:
        """Reserve a slot and a submit token, or raise ``EngineDeferred``."""
        usable = self.usable()
        states = await self._states(usable)

        def free(c: Channel) -> float:
            cap = c.config.max_in_flight
            return (cap - states[c.limit.name].in_flight) / cap

        open_ = [c for c in usable if free(c) > 0 and states[c.limit.name].blocked_for <= 0]
        open_.sort(key=free, reverse=True)
        for channel in open_:
            wait = await channel.limits.admit(channel.limit, task_id, MAX_SHORT_WAIT)
            if wait is None:
                continue
            self._waiting.pop(task_id, None)
            if wait:
                await asyncio.sleep(wait)
            return channel
        delay = await self._delay(task_id)
        raise EngineDeferred(f"every {self.label} channel is at its cap or rate", delay)

    async def _delay(self, task_id: str) -> float:
        now = self.clock()
        self._waiting[task_id] = now
        for tid, at in list(self._waiting.items()):
            if now - at > 2 * MAX_DEFER:
                del self._waiting[tid]
        usable = self.usable() or self.channels
        states = await self._states(usable)
        blocked = min(states[c.limit.name].blocked_for for c in usable)
        rate = sum(c.config.submit_rate for c in usable)
        backlog = len(self._waiting) / max(rate, 1e-6)  # when this task's turn may come
        if all(states[c.limit.name].in_flight >= c.config.max_in_flight for c in usable):
            backlog = max(backlog, 1.0)
        delay = max(blocked, backlog, min(states[c.limit.name].submit_wait for c in usable))
        return min(MAX_DEFER, delay * random.uniform(0.9, 1.2) + 0.05)

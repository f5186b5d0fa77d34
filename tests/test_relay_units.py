"""The relay's building blocks: channel settings, key rotation, rate buckets, Retry-After."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from stillmotion.engines.dashscope.channels import (
    Admission,
    Channel,
    ChannelConfig,
    KeyRing,
    TokenBucket,
    key_fingerprint,
    parse_channels,
    parse_model_map,
)
from stillmotion.engines.dashscope.client import Failure, classify, retry_after
from stillmotion.engines.dashscope.engine import DashScopeEngine
from stillmotion.errors import EngineDeferred, ModelUnavailable

DEFAULT = ChannelConfig("default", "https://d.example/api/v1", ("sk-a",), 10, 2.0, 20.0, {})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_channels_inherit_and_validate() -> None:
    raw = '[{"name": "us", "api_keys": "sk-u1, sk-u2", "model_map": "wan2.6-i2v=wan2.6-i2v-us"}]'
    (us,) = parse_channels(raw, DEFAULT)
    assert us.api_keys == ("sk-u1", "sk-u2") and us.base_url == DEFAULT.base_url
    assert us.max_in_flight == 10 and us.upstream_model("wan2.6-i2v") == "wan2.6-i2v-us"
    assert parse_channels("", DEFAULT) == [DEFAULT]
    with pytest.raises(ValueError, match="unknown field"):
        parse_channels([{"name": "x", "keys": "sk"}], DEFAULT)
    with pytest.raises(ValueError, match="unique"):
        parse_channels([{"name": "x"}, {"name": "x"}], DEFAULT)
    with pytest.raises(ValueError, match="OUR_MODEL=UPSTREAM_MODEL"):
        parse_model_map("wan2.6-i2v")
    assert "sk-u1" not in repr(us)
    with pytest.raises(ModelUnavailable):
        DashScopeEngine(api_keys="sk-a", model_map="nonsense")


def test_key_ring_rotates_and_takes_keys_out() -> None:
    clock = Clock()
    ring = KeyRing(("sk-1", "sk-2", "sk-3"), clock)
    assert [ring.pick() for _ in range(4)] == ["sk-1", "sk-2", "sk-3", "sk-1"]
    ring.take_out("sk-2", 60)
    assert {ring.pick() for _ in range(4)} == {"sk-1", "sk-3"}
    assert ring.by_fingerprint(key_fingerprint("sk-2")) == "sk-2"  # its own tasks still poll
    clock.now += 61
    assert "sk-2" in {ring.pick() for _ in range(3)}
    assert key_fingerprint("sk-1").startswith("k-") and "sk-1" not in key_fingerprint("sk-1")


def test_token_bucket_reserves_and_pauses() -> None:
    clock = Clock()
    bucket = TokenBucket(2.0, clock=clock)
    assert bucket.reserve(0) == 0 and bucket.reserve(0) == 0
    assert bucket.reserve(0.1) is None  # the next token is 0.5 s away
    assert bucket.reserve(0.5) == pytest.approx(0.5)
    clock.now += 2
    bucket.pause(3)
    assert bucket.wait_time() == pytest.approx(3.5)


async def test_admission_defers_with_a_backlog_sized_delay() -> None:
    clock = Clock()
    config = ChannelConfig("c", "https://d", ("sk-a",), max_in_flight=2, submit_rate=1.0)
    admission = Admission([Channel(config, clock)], clock)
    assert (await admission.admit("t1")).name == "c"
    delays = []
    for task in ("t2", "t3", "t4"):
        with pytest.raises(EngineDeferred) as info:
            await admission.admit(task)
        delays.append(info.value.delay)
    assert delays[0] < delays[-1]  # later arrivals wait longer
    await admission.release("t1")
    clock.now += 5
    await admission.admit("t2")
    with pytest.raises(EngineDeferred):  # the rate: the next token is 1 s away
        await admission.admit("t3")
    clock.now += 1
    await admission.admit("t3")
    clock.now += 1
    with pytest.raises(EngineDeferred):  # the cap
        await admission.admit("t4")


def test_retry_after_and_classification() -> None:
    def resp(status: int, **headers: str) -> httpx.Response:
        body = {"code": "Throttling", "message": "slow down", "request_id": "r"}
        return httpx.Response(status, json=body, headers=headers)

    assert retry_after(resp(429, **{"Retry-After": "7"})) == 7
    assert retry_after(resp(429, **{"retry-after-ms": "1500"})) == 1.5
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (retry_after(resp(429, **{"Retry-After": date})) or 0) <= 31
    assert classify(resp(429), may_apply=True).failure is Failure.THROTTLED
    assert classify(resp(401), may_apply=True).failure is Failure.AUTH
    assert classify(resp(400), may_apply=True).failure is Failure.REJECTED
    assert classify(resp(503), may_apply=True).failure is Failure.UNAVAILABLE
    no_retry = resp(500, **{"x-should-retry": "false"})
    assert classify(no_retry, may_apply=True).failure is Failure.UNKNOWN
    assert classify(no_retry, may_apply=False).failure is Failure.UNAVAILABLE
    err = classify(httpx.Response(502, text="<html>bad gateway</html>"), may_apply=False)
    assert (err.code, err.status) == ("HTTP502", 502)

"""The fake DashScope knows the three body generations (legacy img_url, media[], kf2v) and
refuses a body of the wrong one as upstream does, over real HTTP."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import av
import httpx
import pytest

from stillmotion.testing.fake_dashscope import FakeConfig, FakeDashScopeServer
from stillmotion.testing.fake_dashscope_views import WRONG_PATH, model_body

KEY = "sk-fake-bodies"
SUBMIT = "/services/aigc/video-generation/video-synthesis"
KF2V = "/services/aigc/image2video/video-synthesis"
ASYNC = {"Authorization": f"Bearer {KEY}", "X-DashScope-Async": "enable"}
IMG = "https://e.com/first.png"
LAST = "https://e.com/last.png"
AUDIO = "https://e.com/voice.mp3"
CLIP = "https://e.com/clip.mp4"


@pytest.fixture
def fake() -> Iterator[FakeDashScopeServer]:
    config = FakeConfig(keys={KEY: "ok"}, pending_seconds=0.0, running_seconds=0.05)
    with FakeDashScopeServer(config) as server:
        yield server


@pytest.fixture
def http(fake: FakeDashScopeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, timeout=10) as client:
        yield client


def media(*items: tuple[str, str]) -> list[dict[str, str]]:
    return [{"type": kind, "url": url} for kind, url in items]


def post(
    http: httpx.Client, model: str, inp: dict[str, Any], path: str = SUBMIT, **params: Any
) -> httpx.Response:
    body = {"model": model, "input": {"prompt": "a cat", **inp}, "parameters": params}
    return http.post(path, json=body, headers=ASYNC)


def refused(resp: httpx.Response, message: str) -> None:
    assert resp.status_code == 400, resp.text
    got = resp.json()
    assert got["code"] == "InvalidParameter" and got["message"] == message, got
    assert "output" not in got and got["request_id"]


def finished(http: httpx.Client, resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    task_id = resp.json()["output"]["task_id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body: dict[str, Any] = http.get(f"/tasks/{task_id}", headers=ASYNC).json()
        if body["output"]["task_status"] == "SUCCEEDED":
            return body
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} did not finish")


def has_sound(http: httpx.Client, body: dict[str, Any]) -> bool:
    data = httpx.get(body["output"]["video_url"], timeout=10).content
    with av.open(io.BytesIO(data)) as container:
        return bool(container.streams.audio)


def test_a_legacy_body_to_a_media_model_is_refused_as_upstream(
    http: httpx.Client, fake: FakeDashScopeServer
) -> None:
    refused(post(http, "wan2.7-i2v", {"img_url": IMG}), "Field required: input.media")
    refused(
        post(http, "wan3.0-video", {"img_url": IMG, "media": []}), "Field required: input.media"
    )
    refused(
        post(http, "wan2.6-i2v", {"media": media(("first_frame", IMG))}),
        "The parameter img_url is required.",
    )
    assert fake.state.submits == [] and fake.state.tasks == {}


def test_a_media_body(http: httpx.Client, fake: FakeDashScopeServer) -> None:
    items = media(("first_frame", IMG), ("driving_audio", AUDIO))
    body = finished(http, post(http, "wan2.7-i2v", {"media": items}, resolution="720P", duration=2))
    assert body["usage"] == {
        "duration": 2,
        "input_video_duration": 0,
        "output_video_duration": 2,
        "SR": 720,
        "video_count": 1,
    }
    assert has_sound(http, body)  # wan2.7 always has audio
    (record,) = fake.state.submits
    assert record["path"] == "/api/v1" + SUBMIT and record["body"]["input"]["media"] == items


def test_a_first_clip_is_reported_as_input_video(http: httpx.Client) -> None:
    items = media(("first_clip", CLIP))
    body = finished(http, post(http, "wan2.7-i2v", {"media": items}, duration=4))
    usage = body["usage"]
    assert usage["input_video_duration"] == 3 and usage["output_video_duration"] == 4
    assert usage["duration"] == 7


def test_media_items_are_checked_per_model(http: httpx.Client) -> None:
    wan27 = "wan2.7-i2v"
    resp = post(http, wan27, {"media": media(("reference_image", IMG))})
    assert resp.status_code == 400 and "input.media.0.type" in resp.json()["message"]
    refused(
        post(http, wan27, {"media": [{"type": "first_frame"}]}), "Field required: input.media.0.url"
    )
    refused(
        post(http, wan27, {"media": media(("first_frame", IMG), ("first_frame", IMG))}),
        "input.media: at most 1 of type 'first_frame'",
    )
    refused(
        post(http, wan27, {"media": media(("last_frame", LAST))}),
        "input.media: a last_frame needs a first_frame",
    )
    refused(
        post(http, wan27, {"media": ["x"]}), "Input should be a valid dictionary: input.media.0"
    )
    mixed = media(("first_frame", IMG), ("reference_image", IMG))
    refused(
        post(http, "wan3.0-video", {"media": mixed}),
        "input.media: reference media cannot be combined with first_frame or last_frame",
    )
    body = finished(
        http,
        post(
            http,
            "wan3.0-video",
            {"media": media(("reference_image", IMG))},
            audio=False,
            resolution="480P",
        ),
    )
    assert body["usage"]["audio"] is False and body["usage"]["SR"] == 480  # optional audio
    assert not has_sound(http, body)


def test_kf2v_models_take_their_own_path(http: httpx.Client, fake: FakeDashScopeServer) -> None:
    frames = {"first_frame_url": IMG, "last_frame_url": LAST}
    refused(post(http, "wan2.2-kf2v-flash", frames), WRONG_PATH)  # the i2v path
    refused(post(http, "wan2.6-i2v", {"img_url": IMG}, KF2V), WRONG_PATH)
    refused(post(http, "wan2.7-i2v", {"media": media(("first_frame", IMG))}, KF2V), WRONG_PATH)
    refused(
        post(http, "wan2.2-kf2v-flash", {"img_url": IMG}, KF2V),
        "Field required: input.first_frame_url",
    )
    refused(
        post(http, "wanx2.1-kf2v-plus", {"first_frame_url": IMG}, KF2V),
        "Field required: input.last_frame_url",
    )
    assert fake.state.submits == []
    body = finished(http, post(http, "wan2.2-kf2v-flash", frames, KF2V, resolution="480P"))
    assert body["usage"] == {"duration": 5, "SR": 480, "video_count": 1}
    assert not has_sound(http, body)  # kf2v models are silent
    body = finished(http, post(http, "wanx2.1-kf2v-plus", frames, KF2V, resolution="720P"))
    assert body["usage"] == {"video_duration": 5, "video_ratio": "standard", "video_count": 1}
    assert [s["path"] for s in fake.state.submits] == ["/api/v1" + KF2V] * 2


def test_the_generation_of_names_the_catalog_does_not_know() -> None:
    assert model_body("wan2.7-i2v-us") == "media"  # a regional name: its base's
    assert model_body("wan2.6-i2v-flash-us") == "legacy"
    assert model_body("wan9-kf2v-turbo") == "kf2v"  # as the SDK routes it
    assert model_body("wan3.5-video") == "media"
    assert model_body("some-model") == "legacy"

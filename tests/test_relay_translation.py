"""The relay builds the body the upstream model takes when a model map crosses body
generations (legacy img_url, media[], kf2v), refuses what cannot be carried, and settles
usage from what upstream reports: units of ``engines/dashscope/bodies.py``, and end to end
(our API, worker and relay against the fake DashScope, which refuses wrong-generation
bodies as upstream does)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stillmotion import catalog
from stillmotion.config import Settings
from stillmotion.domain import MediaRef, Reference, VideoRequest
from stillmotion.engines.dashscope import bodies
from stillmotion.engines.dashscope.bodies import UNTRANSLATABLE
from stillmotion.errors import PermanentEngineError
from stillmotion.runtime import Runtime
from stillmotion.testing.fake_dashscope import FakeConfig, FakeDashScopeServer
from tests.conftest import poll, seed_body
from tests.relay_helpers import KEY, relay_settings, submit

IMG = "https://e.com/first.png"
LAST = "https://e.com/last.png"
AUDIO = "https://e.com/voice.mp3"
CLIP = "https://e.com/clip.mp4"
#: a parameter outside the contract that wan2.7-i2v is declared (here) to take
EXTRA = [{"name": "wan2.7-i2v", "extra_parameters": ["ratio"]}]


@pytest.fixture(autouse=True)
def _shipped_catalog() -> Iterator[None]:
    yield
    catalog.install()  # the runtime installed EXTRA: hand the next test the shipped one


@pytest.fixture
def fake() -> Iterator[FakeDashScopeServer]:
    config = FakeConfig(keys={KEY: "ok"}, pending_seconds=0.05, running_seconds=0.1)
    with FakeDashScopeServer(config) as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, fake: FakeDashScopeServer) -> Settings:
    return relay_settings(tmp_path, fake, models=EXTRA)


# -- units ---------------------------------------------------------------------------------


def request(model: str, **fields: Any) -> VideoRequest:
    spec = catalog.MODELS[model]
    values: dict[str, Any] = dict(
        model=model,
        prompt="a cat",
        negative_prompt="",
        image=MediaRef(url=IMG),
        audio_source=None,
        resolution="720P",
        duration=5,
        audio=spec.audio != "never",
        shot_type="single",
        seed=7,
        prompt_extend=True,
        watermark=False,
    )
    values.update(fields)
    return VideoRequest(**values)


async def url_of(ref: MediaRef) -> str:
    assert ref.url is not None
    return ref.url


async def build(req: VideoRequest, upstream: str | None = None) -> dict[str, Any]:
    t = bodies.target(catalog.MODELS[req.model], upstream or req.model)
    return await bodies.build_body(req, t, url_of)


async def refusal(req: VideoRequest, upstream: str) -> str:
    with pytest.raises(PermanentEngineError) as caught:
        await build(req, upstream)
    assert caught.value.code == UNTRANSLATABLE
    return caught.value.message


async def test_legacy_to_media_and_back() -> None:
    legacy = request("wan2.6-i2v", audio_source=MediaRef(url=AUDIO), negative_prompt="blur")
    up = await build(legacy, "wan2.7-i2v")
    assert up["model"] == "wan2.7-i2v" and bodies.submit_path(up) == bodies.SUBMIT_PATH
    assert up["input"] == {
        "prompt": "a cat",
        "negative_prompt": "blur",
        "media": [{"type": "first_frame", "url": IMG}, {"type": "driving_audio", "url": AUDIO}],
    }
    assert "shot_type" not in up["parameters"]  # wan2.7 has none: dropped
    media = request("wan2.7-i2v", audio_source=MediaRef(url=AUDIO), extra={"ratio": "16:9"})
    down = await build(media, "wan2.6-i2v")
    assert down["input"] == {"prompt": "a cat", "img_url": IMG, "audio_url": AUDIO}
    assert down["parameters"] == {
        "resolution": "720P",
        "duration": 5,
        "prompt_extend": True,
        "watermark": False,
        "seed": 7,
        "shot_type": "single",
    }  # wan2.6-i2v takes no "ratio": dropped
    flash = await build(request("wan2.7-i2v", audio=True), "wan2.6-i2v-flash")
    assert flash["parameters"]["audio"] is True


async def test_a_template_carried_and_refused() -> None:
    req = request("wan2.6-i2v", template="hug")
    assert (await build(req))["input"]["template"] == "hug"
    assert (await build(req, "wanx2.1-i2v-plus"))["input"]["template"] == "hug"
    message = await refusal(req, "wan2.7-i2v")
    assert message == (
        "wan2.6-i2v is relayed as wan2.7-i2v, which takes a media[] body (input.media) and "
        "cannot carry input.template; nothing was submitted."
    )
    ending = request("wan2.6-i2v", template="hug", last_frame=MediaRef(url=LAST))
    assert "input.template" in await refusal(ending, "wanx2.1-kf2v-plus")


async def test_what_a_legacy_model_cannot_carry() -> None:
    for fields, what in [
        ({"last_frame": MediaRef(url=LAST)}, "a last frame"),
        ({"first_clip": MediaRef(url=CLIP)}, "a first clip"),
        ({"image": None, "first_clip": MediaRef(url=CLIP)}, "without a first frame"),
    ]:
        assert what in await refusal(request("wan2.7-i2v", **fields), "wan2.6-i2v")
    refs = (Reference("reference_image", MediaRef(url=IMG)),)
    wan30 = request("wan3.0-video", image=None, references=refs)
    assert "without a first frame" in await refusal(wan30, "wan2.6-i2v")
    assert "reference media" in await refusal(
        request("wan3.0-video", references=refs), "wan2.6-i2v"
    )
    assert "'reference_image'" in await refusal(wan30, "wan2.7-i2v")  # a media model without
    voiced = request("wan2.7-i2v", audio_source=MediaRef(url=AUDIO))
    assert "driving audio" in await refusal(voiced, "wan2.2-i2v-flash")  # a silent model
    assert "'driving_audio'" in await refusal(voiced, "wan3.0-video")
    # what the upstream model's catalog entry does not allow
    assert "parameters.duration 20" in await refusal(
        request("wan3.0-video", duration=20), "wan2.7-i2v"
    )
    assert "parameters.resolution 480P" in await refusal(
        request("wan3.0-video", resolution="480P"), "wan2.7-i2v"
    )


async def test_kf2v_bodies() -> None:
    req = request("wan2.7-i2v", last_frame=MediaRef(url=LAST), duration=5)
    up = await build(req, "wan2.2-kf2v-flash")
    assert bodies.submit_path(up) == bodies.KF2V_PATH
    assert up["input"] == {"prompt": "a cat", "first_frame_url": IMG, "last_frame_url": LAST}
    assert "audio" not in up["parameters"]
    back = await build(request("wan2.2-kf2v-flash", last_frame=MediaRef(url=LAST)), "wan2.7-i2v")
    assert back["input"]["media"] == [
        {"type": "first_frame", "url": IMG},
        {"type": "last_frame", "url": LAST},
    ]
    message = await refusal(request("wan2.6-i2v"), "wan2.2-kf2v-flash")
    assert "without both a first and a last frame" in message


async def test_names_the_catalog_does_not_know_keep_the_client_generation() -> None:
    req = request("wan2.7-i2v", extra={"ratio": "16:9"})
    up = await build(req, "wan2.7-i2v-us")
    assert up["model"] == "wan2.7-i2v-us" and up["input"]["media"][0]["type"] == "first_frame"
    assert up["parameters"]["ratio"] == "16:9"  # every extra parameter passes through
    kf = request("wan2.2-kf2v-flash", last_frame=MediaRef(url=LAST))
    assert bodies.submit_path(await build(kf, "wan2.2-kf2v-flash-us")) == bodies.KF2V_PATH


def test_usage_is_settled_in_the_client_models_shape() -> None:
    wan26 = {"duration": 4, "input_video_duration": 0, "output_video_duration": 4, "SR": 720,
             "video_count": 1}  # fmt: skip
    same = bodies.target(catalog.MODELS["wan2.6-i2v"], "wan2.7-i2v")
    assert bodies.settle_usage(wan26, request("wan2.6-i2v"), same) == wan26  # verbatim
    unknown = bodies.target(catalog.MODELS["wan2.5-i2v-preview"], "wan2.5-i2v-us")
    assert bodies.settle_usage(wan26, request("wan2.5-i2v-preview"), unknown) == wan26
    sr = bodies.target(catalog.MODELS["wan2.5-i2v-preview"], "wan2.6-i2v")
    assert bodies.settle_usage(wan26, request("wan2.5-i2v-preview"), sr) == {
        "duration": 4, "SR": 720, "video_count": 1,
    }  # fmt: skip
    ratio = bodies.target(catalog.MODELS["wanx2.1-i2v-plus"], "wan2.6-i2v")
    assert bodies.settle_usage(wan26, request("wanx2.1-i2v-plus"), ratio, (1104, 816)) == {
        "video_duration": 4, "video_ratio": "1104*816", "video_count": 1,
    }  # fmt: skip
    flash = bodies.target(catalog.MODELS["wan2.6-i2v-flash"], "wan2.2-i2v-flash")
    flash_req = request("wan2.6-i2v-flash", audio=False)
    assert bodies.settle_usage({"duration": 3, "SR": 480, "video_count": 1}, flash_req, flash) == {
        "duration": 3, "input_video_duration": 0, "output_video_duration": 3, "SR": 480,
        "video_count": 1, "audio": False,
    }  # fmt: skip
    old = {"video_duration": 5, "video_ratio": "standard", "video_count": 1}
    back = bodies.target(catalog.MODELS["wan2.6-i2v"], "wanx2.1-i2v-plus")
    settled = bodies.settle_usage(old, request("wan2.6-i2v"), back)
    assert settled["output_video_duration"] == 5 and settled["duration"] == 5


# -- end to end: client -> our API -> worker -> relay -> the fake ---------------------------


async def run(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, body: dict[str, Any],
    model_map: str = "",
) -> dict[str, Any]:  # fmt: skip
    runtime.settings.dashscope_model_map = model_map
    await runtime.start_worker()
    return await poll(client, await submit(client, auth, body), auth, timeout=30)


def media_body(model: str, *items: tuple[str, str], **params: Any) -> dict[str, Any]:
    return {
        "model": model,
        "input": {"prompt": "a cat", "media": [{"type": k, "url": u} for k, u in items]},
        "parameters": {"resolution": "720P", "duration": 2, **params},
    }


async def test_a_legacy_body_goes_up_as_media(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    body = seed_body(shot_type="multi")
    body["model"] = "wan2.6-i2v"
    body["input"]["audio_url"] = AUDIO
    result = await run(client, auth, runtime, body, "wan2.6-i2v=wan2.7-i2v")
    assert result["output"]["task_status"] == "SUCCEEDED", result
    (sent,) = fake.state.submits
    assert sent["path"] == "/api/v1" + bodies.SUBMIT_PATH
    assert sent["body"]["model"] == "wan2.7-i2v"
    assert sent["body"]["input"]["media"] == [
        {"type": "first_frame", "url": body["input"]["img_url"]},  # the data URI, rebuilt
        {"type": "driving_audio", "url": AUDIO},
    ]
    assert "img_url" not in sent["body"]["input"] and "shot_type" not in sent["body"]["parameters"]
    assert result["usage"] == {"duration": 2, "input_video_duration": 0,
                               "output_video_duration": 2, "SR": 720, "video_count": 1}  # fmt: skip


async def test_a_media_body_goes_up_as_legacy_with_its_extra_parameter(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    body = media_body("wan2.7-i2v", ("first_frame", IMG), ("driving_audio", AUDIO), ratio="16:9")
    result = await run(client, auth, runtime, body, "wan2.7-i2v=wan2.6-i2v")
    assert result["output"]["task_status"] == "SUCCEEDED", result
    sent = fake.state.submits[0]["body"]
    assert sent["model"] == "wan2.6-i2v"
    assert sent["input"] == {"prompt": "a cat", "img_url": IMG, "audio_url": AUDIO}
    assert "ratio" not in sent["parameters"]  # wan2.6-i2v does not take it


async def test_a_media_body_with_a_clip_and_an_extra_parameter(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    body = media_body("wan2.7-i2v", ("first_clip", CLIP), ratio="16:9", duration=4)
    result = await run(client, auth, runtime, body)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    sent = fake.state.submits[0]["body"]
    assert sent["input"]["media"] == [{"type": "first_clip", "url": CLIP}]
    assert sent["parameters"]["ratio"] == "16:9"  # declared in the catalog: passed through
    assert result["usage"]["input_video_duration"] == 3 and result["usage"]["duration"] == 7
    row = await runtime.store.get_task(result["output"]["task_id"])
    assert row is not None and row.billed_ms == 4000  # the output seconds


async def test_a_kf2v_model_goes_to_the_kf2v_path(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    await runtime.start_worker()
    native = {
        "model": "wan2.2-kf2v-flash",
        "input": {"prompt": "a cat", "first_frame_url": IMG, "last_frame_url": LAST},
        "parameters": {"resolution": "480P"},
    }
    headers = {**auth, "X-DashScope-Async": "enable"}
    resp = await client.post(
        "/api/v1/services/aigc/image2video/video-synthesis", json=native, headers=headers
    )
    assert resp.status_code == 200, resp.text
    result = await poll(client, resp.json()["output"]["task_id"], auth, timeout=30)
    assert result["output"]["task_status"] == "SUCCEEDED", result
    (sent,) = fake.state.submits
    assert sent["path"] == "/api/v1" + bodies.KF2V_PATH
    assert sent["body"]["input"] == native["input"]
    assert result["usage"] == {"duration": 5, "SR": 480, "video_count": 1}


async def test_untranslatable_requests_fail_before_anything_is_submitted(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    ending = media_body("wan2.7-i2v", ("first_frame", IMG), ("last_frame", LAST))
    both = "wan2.7-i2v=wan2.6-i2v,wan2.6-i2v=wan2.7-i2v"
    result = await run(client, auth, runtime, ending, both)
    assert result["output"]["task_status"] == "FAILED", result
    assert result["output"]["code"] == UNTRANSLATABLE
    assert result["output"]["message"] == (
        "wan2.7-i2v is relayed as wan2.6-i2v, which takes a legacy body (input.img_url) and "
        "cannot carry a last frame; nothing was submitted."
    )
    templated = seed_body()
    templated["model"] = "wan2.6-i2v"
    templated["input"]["template"] = "hug"
    failed = await poll(client, await submit(client, auth, templated), auth, timeout=30)
    assert failed["output"]["code"] == UNTRANSLATABLE and "input.template" in str(failed)
    assert fake.state.submits == [] and fake.state.requests["submit"] == 0
    row = await runtime.store.get_task(failed["output"]["task_id"])
    assert row is not None and row.attempts == 1  # permanent: not retried


async def test_usage_is_settled_from_what_upstream_reports(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    fake.state.config.usage_seconds = 3  # upstream says 3 s of the 5 asked for
    body = seed_body(resolution="1080P", duration=5, audio=False)  # wan2.6-i2v-flash
    result = await run(client, auth, runtime, body, "wan2.6-i2v-flash=wan2.2-i2v-flash")
    assert result["output"]["task_status"] == "SUCCEEDED", result
    sent = fake.state.submits[0]["body"]
    assert sent["model"] == "wan2.2-i2v-flash" and "audio" not in sent["parameters"]
    assert result["usage"] == {"duration": 3, "input_video_duration": 0,
                               "output_video_duration": 3, "SR": 1080, "video_count": 1,
                               "audio": False}  # fmt: skip
    row = await runtime.store.get_task(result["output"]["task_id"])
    assert row is not None and row.billed_ms == 3000
    assert row.engine_state["upstream_usage"] == {"duration": 3, "SR": 1080, "video_count": 1}


async def test_the_ratio_shape_is_billed_from_upstream_usage(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime, fake: FakeDashScopeServer
) -> None:
    fake.state.config.usage_seconds = 3
    body = seed_body(resolution="720P", duration=5)
    body["model"] = "wanx2.1-i2v-plus"
    result = await run(client, auth, runtime, body)
    assert result["usage"] == {"video_duration": 3, "video_ratio": "standard", "video_count": 1}
    row = await runtime.store.get_task(result["output"]["task_id"])
    assert row is not None and row.billed_ms == 3000

"""Both body generations and kf2v, through the reseller path and the DashScope-native paths:
each model's rules from the catalog data, wrong-generation fields refused naming the right
one, and what the task keeps (the normalised request)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from stillmotion import catalog
from stillmotion.domain import MediaRef, Reference, VideoRequest
from stillmotion.engines.registry import check_request
from stillmotion.errors import InvalidParameter
from stillmotion.runtime import Runtime
from stillmotion.tasks.validation import validate_submit
from stillmotion.testing.images import data_uri
from tests.relay_helpers import wav_data_uri

RESELLER = "/task/bailian/image2video"
NATIVE = "/api/v1/services/aigc/video-generation/video-synthesis"
KF2V = "/api/v1/services/aigc/image2video/video-synthesis"
ASYNC = {"X-DashScope-Async": "enable"}
FRAME = "https://example.com/first.png"
LAST = "https://example.com/last.png"


def media_body(model: str, *items: tuple[str, str], **parameters: Any) -> dict[str, Any]:
    media = [{"type": kind, "url": url} for kind, url in items]
    return {"model": model, "input": {"prompt": "a cat", "media": media}, "parameters": parameters}


def kf2v_body(model: str = "wan2.2-kf2v-flash", **inp: Any) -> dict[str, Any]:
    return {
        "model": model,
        "input": {"prompt": "a cat", "first_frame_url": FRAME, "last_frame_url": LAST, **inp},
        "parameters": {"resolution": "480P"},
    }


def refused(body: dict[str, Any], endpoint: str | None = None) -> str:
    with pytest.raises(InvalidParameter) as info:
        validate_submit(body, endpoint)
    return info.value.message


def test_a_media_body_becomes_one_normalised_request() -> None:
    body = media_body(
        "wan2.7-i2v",
        ("first_frame", data_uri(320, 240, "JPEG")),
        ("last_frame", LAST),
        ("driving_audio", "https://example.com/a.mp3"),
        resolution="720P",
        duration=7,
    )
    done = validate_submit(body)
    req = done.request
    assert req.image == MediaRef(storage_key="image.jpg", mime="image/jpeg")
    assert req.last_frame == MediaRef(url=LAST)
    assert req.audio_source == MediaRef(url="https://example.com/a.mp3") and req.audio
    assert (req.resolution, req.duration, req.template) == ("720P", 7, None)
    assert [b.name for b in done.blobs] == ["image.jpg"]
    again = VideoRequest.from_json(req.to_json())  # what the task row keeps
    assert again == req


def test_wan30_references_and_their_rules() -> None:
    refs = [("reference_image", f"https://example.com/{i}.png") for i in range(3)]
    req = validate_submit(media_body("wan3.0-video", *refs, duration=30)).request
    assert req.image is None and req.duration == 30
    assert req.references == tuple(Reference("reference_image", MediaRef(url=u)) for _, u in refs)
    mixed = media_body("wan3.0-video", ("first_frame", FRAME), refs[0])
    assert "cannot be combined with first_frame" in refused(mixed)
    many = media_body("wan3.0-video", *[("reference_image", FRAME)] * 11)
    assert "at most 10 media of type 'reference_image'" in refused(many)
    clip = media_body("wan2.7-i2v", ("first_frame", FRAME), ("first_clip", "https://e.com/c.mp4"))
    assert "cannot be combined with a 'first_frame'" in refused(clip)
    only_last = media_body("wan3.0-video", ("last_frame", LAST))
    assert "needs a media item of type 'first_frame'" in refused(only_last)
    long = media_body("wan3.0-video", ("first_frame", FRAME), duration=31)
    assert "an integer from 2 to 30" in refused(long)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # a legacy field to a media model, and the reverse: the right field is named
        ({"model": "wan2.7-i2v", "input": {"img_url": FRAME}}, "which takes input.media"),
        ({"model": "wan2.7-i2v", "input": {"prompt": "x"}}, "Field required: input.media"),
        (media_body("wan2.6-i2v", ("first_frame", FRAME)), "which takes input.img_url"),
        (media_body("wan2.7-i2v", ("first_frame", FRAME), ("first_frame", FRAME)), "at most 1"),
        (media_body("wan2.7-i2v", ("reference_image", FRAME)),
         "'reference_image' is not supported"),
        (media_body("wan2.7-i2v", ("first_frame", "data:text/plain,x")), "media[0].url"),
        (media_body("wan2.7-i2v", ("first_clip", "data:video/mp4;base64,AA")), "http(s) URL"),
        ({"model": "wan2.7-i2v", "input": {"media": [{"type": "first_frame"}]}}, "media[0].url"),
        ({"model": "wan2.7-i2v", "input": {"media": "x"}}, "must be a list"),
        ({**media_body("wan2.7-i2v", ("first_frame", FRAME)), "input": {
            "media": [{"type": "first_frame", "url": FRAME}], "template": "hug"}},
         "input.template is not supported"),
        ({"model": "wan2.2-kf2v-flash", "input": {"img_url": FRAME}}, "first_frame_url"),
        ({"model": "wan2.2-kf2v-flash", "input": {"first_frame_url": FRAME}},
         "Field required: input.last_frame_url"),
        ({"model": "wan2.6-i2v", "input": {"img_url": FRAME, "first_frame_url": FRAME}},
         "input.first_frame_url is not supported by model wan2.6-i2v"),
        ({"model": "wan2.6-i2v-flash", "input": {"img_url": FRAME, "template": "hug"}},
         "input.template is not supported by model wan2.6-i2v-flash"),
        ({"model": "wan2.6-i2v", "input": {"img_url": FRAME, "template": "nope"}},
         "allowed values: squish, rotation"),
        ({"model": "wan2.2-i2v-flash", "input": {"img_url": FRAME}, "parameters": {"duration": 10}},
         "allowed values: 5 (seconds)"),
        ({"model": "wan2.2-i2v-plus", "input": {"img_url": FRAME},
          "parameters": {"resolution": "720P"}}, "allowed values: 480P, 1080P"),
        ({"model": "wan2.2-i2v-flash", "input": {"img_url": FRAME}, "parameters": {"audio": True}},
         "silent video only"),
    ],
)  # fmt: skip
def test_each_models_rules(body: dict[str, Any], message: str) -> None:
    assert message in refused(body)


def test_templates_prompts_and_extra_parameters_follow_the_catalog() -> None:
    body = {"model": "wanx2.1-i2v-turbo", "input": {"img_url": FRAME, "template": "rotation"},
            "parameters": {"duration": 3, "resolution": "480P", "ratio": "16:9"}}  # fmt: skip
    req = validate_submit(body).request
    assert (req.template, req.duration, req.extra) == ("rotation", 3, {})  # ratio undeclared
    catalog.install([{"name": "wanx2.1-i2v-turbo", "extra_parameters": ["ratio"]}])
    try:
        assert validate_submit(body).request.extra == {"ratio": "16:9"}
    finally:
        catalog.install()
    long = {"model": "wan2.2-i2v-flash", "input": {"img_url": FRAME, "prompt": "x" * 900}}
    assert len(validate_submit(long).request.prompt) == 800  # 2.2 truncates at 800


def test_the_native_paths_serve_their_own_generations() -> None:
    assert validate_submit(kf2v_body(), "image2video").request.last_frame == MediaRef(url=LAST)
    assert validate_submit(kf2v_body(), None).request.image == MediaRef(url=FRAME)  # reseller
    assert KF2V in refused(kf2v_body(), "video-generation")
    legacy = {"model": "wan2.6-i2v", "input": {"img_url": FRAME}}
    assert NATIVE in refused(legacy, "image2video")


def test_engines_refuse_at_submit_what_they_cannot_make() -> None:
    clip = validate_submit(media_body("wan2.7-i2v", ("first_clip", "https://e.com/c.mp4"))).request
    with pytest.raises(
        InvalidParameter, match=r"'first_clip' is not supported .*\(engine motion\)"
    ):
        check_request("motion", clip)
    check_request("dashscope", clip)  # the relay passes it on
    refs = media_body("wan3.0-video", ("reference_image", FRAME))
    with pytest.raises(InvalidParameter, match="reference_image"):
        check_request("wan", validate_submit(refs).request)
    hug = validate_submit({"model": "wan2.6-i2v", "input": {"img_url": FRAME, "template": "hug"}})
    check_request("dashscope", hug.request)
    if "hug" not in _motion_templates():
        with pytest.raises(InvalidParameter, match="supported templates: "):
            check_request("motion", hug.request)


def _motion_templates() -> frozenset[str]:
    from stillmotion.engines.motion import MotionEngine

    return MotionEngine.templates


# -- over HTTP: both paths, what the task keeps ---------------------------------------------


async def test_submits_of_each_generation_over_both_paths(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    frame, last = data_uri(320, 240, "PNG", seed=1), data_uri(320, 240, "PNG", seed=2)
    wav = wav_data_uri(4.0)
    media = media_body("wan2.7-i2v", ("first_frame", frame), ("last_frame", last),
                       ("driving_audio", wav), resolution="720P", duration=2)  # fmt: skip
    kf2v = kf2v_body(first_frame_url=frame, last_frame_url=last)
    for path, body, headers in [
        (RESELLER, media, auth),
        (NATIVE, media, {**auth, **ASYNC}),
        (RESELLER, kf2v, auth),
        (KF2V, kf2v, {**auth, **ASYNC}),
    ]:
        resp = await client.post(path, json=body, headers=headers)
        assert resp.status_code == 200, (path, resp.text)
        row = await runtime.store.get_task(resp.json()["output"]["task_id"])
        assert row is not None and row.model == body["model"]
        kept = VideoRequest.from_json(row.request)
        assert kept.image is not None and kept.image.storage_key  # data URIs kept in storage
        assert kept.last_frame is not None and kept.last_frame.storage_key
        assert kept.image.storage_key.endswith("/image.png")
        assert kept.last_frame.storage_key.endswith("/last_frame.png")
        if body is media:
            assert kept.audio_source is not None and kept.audio_source.storage_key
    wrong = await client.post(KF2V, json=media, headers={**auth, **ASYNC})
    assert wrong.status_code == 400
    assert wrong.json()["code"] == "InvalidParameter" and NATIVE in wrong.json()["message"]
    legacy = await client.post(
        NATIVE, json={"model": "wan2.7-i2v", "input": {"img_url": frame}}, headers={**auth, **ASYNC}
    )
    assert legacy.status_code == 400 and "input.media" in legacy.json()["message"]
    assert set(legacy.json()) == {"request_id", "code", "message"}

"""The submit body the upstream model takes, whatever body the client sent (docs/relay.md,
"Body generations and translation").

A model map may send a model up as one of another body generation (the catalog's ``body``):

- ``legacy`` (Wan 2.1-2.6): ``input.img_url``, ``input.audio_url``, ``input.template`` on
  ``POST {base}/services/aigc/video-generation/video-synthesis``;
- ``media`` (Wan 2.7, 3.0): ``input.media[]`` of ``{"type", "url"}`` on the same path;
- ``kf2v``: ``input.first_frame_url`` and ``input.last_frame_url`` on
  ``POST {base}/services/aigc/image2video/video-synthesis``.

The generation and the capabilities that count are the *upstream* model's catalog entry
(after the channel's model map); an upstream name the catalog does not know (a regional
``-us`` variant, say) keeps the client model's. Every media input of the request reaches the
upstream or the task fails before anything is submitted, with :data:`UNTRANSLATABLE`;
parameters the upstream model lacks (``shot_type``, ``audio``, an extra parameter) are left
out. :func:`settle_usage` puts the upstream's ``usage`` into the client model's shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stillmotion import catalog
from stillmotion.catalog import ModelSpec
from stillmotion.domain import (
    DRIVING_AUDIO,
    FIRST_CLIP,
    FIRST_FRAME,
    LAST_FRAME,
    MediaRef,
    VideoRequest,
)
from stillmotion.engines.dashscope.client import KF2V_PATH, SUBMIT_PATH
from stillmotion.errors import PermanentEngineError

#: the code of a task whose request the upstream model cannot take (nothing was submitted)
UNTRANSLATABLE = "InvalidParameter.Untranslatable"

MediaUrl = Callable[[MediaRef], Awaitable[str]]

_TAKES = {
    "legacy": "a legacy body (input.img_url)",
    "media": "a media[] body (input.media)",
    "kf2v": "a first-and-last-frame body (input.first_frame_url, input.last_frame_url)",
}


@dataclass(frozen=True)
class Target:
    """The model a request goes up as: its name, body generation and capabilities."""

    client: ModelSpec  # the model the client asked for
    model: str  # the upstream model name (after the model map)
    known: ModelSpec | None  # the upstream model's catalog entry, when it has one

    @property
    def caps(self) -> ModelSpec:
        """What the upstream model takes: its entry, else (a name the catalog does not know)
        the client model's."""
        return self.known or self.client

    @property
    def body(self) -> str:
        return self.caps.body


def target(client: ModelSpec, upstream_model: str) -> Target:
    return Target(client, upstream_model, catalog.get_model(upstream_model))


def submit_path(body: Mapping[str, Any]) -> str:
    """The path a built body is submitted to (only a kf2v body has ``first_frame_url``)."""
    inp = body.get("input")
    return KF2V_PATH if isinstance(inp, dict) and "first_frame_url" in inp else SUBMIT_PATH


def _refuse(t: Target, what: str) -> PermanentEngineError:
    who = t.client.name
    if t.model != who:
        who = f"{who} is relayed as {t.model}, which"
    return PermanentEngineError(
        f"{who} takes {_TAKES[t.body]} and cannot carry {what}; nothing was submitted.",
        code=UNTRANSLATABLE,
    )


def check(req: VideoRequest, t: Target) -> None:
    """Raise :data:`UNTRANSLATABLE` when the upstream model cannot take ``req``."""
    caps = t.caps
    if t.known is not None and t.model != t.client.name:
        if req.resolution not in caps.resolutions:
            raise _refuse(
                t, f"parameters.resolution {req.resolution} ({', '.join(caps.resolutions)})"
            )
        if req.duration not in caps.durations:
            raise _refuse(t, f"parameters.duration {req.duration} ({caps.duration_rule()})")
    if t.body == "legacy":
        _check_legacy(req, t)
    elif t.body == "media":
        _check_media(req, t)
    else:
        _check_kf2v(req, t)


def _check_legacy(req: VideoRequest, t: Target) -> None:
    if req.image is None:
        raise _refuse(t, "a request without a first frame")
    for value, what in (
        (req.last_frame, "a last frame"),
        (req.first_clip, "a first clip"),
        (req.references, "reference media"),
    ):
        if value:
            raise _refuse(t, what)
    if req.audio_source is not None and t.caps.audio == "never":
        raise _refuse(t, "driving audio (it makes silent video)")
    if req.template and req.template not in t.caps.templates:
        raise _refuse(t, f"input.template {req.template!r}")


def _media_items(req: VideoRequest) -> list[tuple[str, MediaRef]]:
    items: list[tuple[str, MediaRef]] = []
    for kind, ref in (
        (FIRST_FRAME, req.image),
        (LAST_FRAME, req.last_frame),
        (DRIVING_AUDIO, req.audio_source),
        (FIRST_CLIP, req.first_clip),
    ):
        if ref is not None:
            items.append((kind, ref))
    items.extend((r.kind, r.media) for r in req.references)
    return items


def _check_media(req: VideoRequest, t: Target) -> None:
    if req.template:
        raise _refuse(t, "input.template")
    counts: dict[str, int] = {}
    for kind, _ in _media_items(req):
        counts[kind] = counts.get(kind, 0) + 1
    for kind, count in counts.items():
        most = t.caps.media.get(kind, 0)
        if count > most:
            what = f"media of type {kind!r}" if not most else f"{count} media of type {kind!r}"
            raise _refuse(t, what)


def _check_kf2v(req: VideoRequest, t: Target) -> None:
    if req.image is None or req.last_frame is None:
        raise _refuse(t, "a request without both a first and a last frame")
    for value, what in (
        (req.first_clip, "a first clip"),
        (req.references, "reference media"),
        (req.audio_source, "driving audio"),
        (req.template, "input.template"),
    ):
        if value:
            raise _refuse(t, what)


def _parameters(req: VideoRequest, t: Target) -> dict[str, Any]:
    caps = t.caps
    params: dict[str, Any] = {
        "resolution": req.resolution,
        "duration": req.duration,
        "prompt_extend": req.prompt_extend,
        "watermark": req.watermark,
        "seed": req.seed,
    }
    if caps.shot_types and req.shot_type in caps.shot_types:
        params["shot_type"] = req.shot_type
    if caps.audio == "optional" and t.body != "kf2v":
        params["audio"] = req.audio
    # parameters outside the contract: those the upstream model declares (all of them when
    # the catalog does not know it), never one of ours
    for name, value in req.extra.items():
        if (t.known is None or name in caps.extra_parameters) and name not in params:
            params[name] = value
    return params


async def build_body(req: VideoRequest, t: Target, media_url: MediaUrl) -> dict[str, Any]:
    """The upstream submit body for ``req`` (``check`` first: nothing is read when it
    cannot be carried). ``media_url`` gives the string to send for a stored or remote input."""
    check(req, t)
    inp: dict[str, Any] = {"prompt": req.prompt}
    if req.negative_prompt:
        inp["negative_prompt"] = req.negative_prompt
    if t.body == "media":
        inp["media"] = [
            {"type": kind, "url": await media_url(ref)} for kind, ref in _media_items(req)
        ]
    elif t.body == "kf2v":
        assert req.image is not None and req.last_frame is not None
        inp["first_frame_url"] = await media_url(req.image)
        inp["last_frame_url"] = await media_url(req.last_frame)
    else:
        assert req.image is not None
        inp["img_url"] = await media_url(req.image)
        if req.audio and req.audio_source is not None:
            inp["audio_url"] = await media_url(req.audio_source)
        if req.template:
            inp["template"] = req.template
    return {"model": t.model, "input": inp, "parameters": _parameters(req, t)}


# -- usage -----------------------------------------------------------------------------------


def _seconds(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def settle_usage(
    usage: Mapping[str, Any],
    req: VideoRequest,
    t: Target,
    size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The upstream's ``usage`` as the client's model reports it. Verbatim when both models
    report the same shape (or the catalog does not know the upstream one); otherwise the
    client model's shape (catalog ``usage``) filled with the upstream's figures: the output
    seconds it reports (``output_video_duration``, else ``video_duration``, else
    ``duration``), its ``SR`` and ``video_count``. ``size``: the output's width and height."""
    shape = t.client.usage
    if t.known is None or t.known.usage == shape:
        return dict(usage)
    reported = (_seconds(usage.get(k)) for k in ("output_video_duration", "video_duration"))
    out = next((s for s in reported if s is not None), _seconds(usage.get("duration")))
    output: float = req.duration if out is None else out
    sr = usage.get("SR") if usage.get("SR") is not None else int(req.resolution.rstrip("P"))
    count = usage.get("video_count", 1)
    if shape == "ratio":
        ratio = usage.get("video_ratio")
        if not ratio:
            width, height = size or catalog.TIERS[req.resolution]
            ratio = f"{width}*{height}"
        return {"video_duration": output, "video_ratio": ratio, "video_count": count}
    if shape == "sr":
        return {"duration": output, "SR": sr, "video_count": count}
    given = _seconds(usage.get("input_video_duration"))
    inputs: float = 0 if given is None else given
    settled: dict[str, Any] = {
        "duration": inputs + output,
        "input_video_duration": inputs,
        "output_video_duration": output,
        "SR": sr,
        "video_count": count,
    }
    if t.client.audio == "optional":
        audio = usage.get("audio")
        settled["audio"] = audio if isinstance(audio, bool) else req.audio
    return settled

"""What the fake DashScope answers: which body a model takes, task bodies, list pages, usage
and the result MP4."""

from __future__ import annotations

import asyncio
import functools
import io
import math
import re
import uuid
from fractions import Fraction
from typing import Any

import av
import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from stillmotion import catalog
from stillmotion.catalog import ModelSpec
from stillmotion.testing.fake_dashscope_state import FakeState, FakeTask, key_id

MAX_LIST_WINDOW = 24 * 3600
FPS = 30
URL_SCHEMES = ("http://", "https://", "data:", "oss://")
#: what DashScope answers a model sent to the other service path (contract 2.1)
WRONG_PATH = "url error, please check url!"
_REGION_SUFFIX = re.compile(r"-(us|intl)$")
_FRAMES = ("first_frame", "last_frame")


# -- which body a model takes (the catalog's ``body``: legacy, media or kf2v) -----------------


def model_spec(model: str) -> ModelSpec | None:
    """The catalog entry the fake plays ``model`` by (a regional ``-us`` name: its base's)."""
    return catalog.get_model(model) or catalog.get_model(_REGION_SUFFIX.sub("", model))


def model_body(model: str) -> str:
    """The body generation ``model`` takes: the catalog's, else guessed from the name as the
    SDK routes it (``kf2v`` in the name: kf2v; Wan 2.7 and 3.0: media; else legacy)."""
    spec = model_spec(model)
    if spec is not None:
        return spec.body
    if "kf2v" in model:
        return "kf2v"
    return "media" if model.startswith(("wan2.7", "wan3")) else "legacy"


def _url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(URL_SCHEMES)


def check_body(model: str, inp: dict[str, Any], *, kf2v_path: bool) -> str | None:
    """Why upstream would refuse ``inp`` for ``model`` on this path (a 400
    ``InvalidParameter`` message), or None. A body of another generation is refused as
    DashScope refuses it: a model on the other service path with ``url error``, a legacy
    ``img_url`` to a media model with ``Field required: input.media``."""
    body = model_body(model)
    if (body == "kf2v") != kf2v_path:
        return WRONG_PATH
    if body == "kf2v":
        for name in ("first_frame_url", "last_frame_url"):
            if not _url(inp.get(name)):
                return f"Field required: input.{name}"
        return None
    if body == "media":
        return _check_media(model, inp.get("media"))
    if not _url(inp.get("img_url")):
        return "The parameter img_url is required."
    return None


def _check_media(model: str, items: Any) -> str | None:
    if not isinstance(items, list) or not items:
        return "Field required: input.media"
    spec = model_spec(model)
    allowed = dict(spec.media) if spec is not None and spec.media else None
    counts: dict[str, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            return f"Input should be a valid dictionary: input.media.{i}"
        kind = item.get("type")
        kinds = allowed or dict.fromkeys(catalog.MEDIA_TYPES, 100)
        if kind not in kinds:
            return f"Input should be {', '.join(map(repr, kinds))}: input.media.{i}.type"
        if not _url(item.get("url")):
            return f"Field required: input.media.{i}.url"
        counts[kind] = counts.get(kind, 0) + 1
        if counts[kind] > kinds[kind]:
            return f"input.media: at most {kinds[kind]} of type {kind!r}"
    references = any(k.startswith("reference_") for k in counts)
    if references and any(k in counts for k in _FRAMES):
        return "input.media: reference media cannot be combined with first_frame or last_frame"
    if "last_frame" in counts and "first_frame" not in counts:
        return "input.media: a last_frame needs a first_frame"
    if not references and "first_frame" not in counts and "first_clip" not in counts:
        return "Field required: input.media[type=first_frame]"
    return None


def error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    """A DashScope error answer: ``{request_id, code, message}``, JSON."""
    body = {"request_id": str(uuid.uuid4()), "code": code, "message": message}
    return JSONResponse(body, status_code=status, headers=headers)


def usage_for(
    task: FakeTask, seconds: float | None = None, clip_seconds: float = 3.0
) -> dict[str, Any]:
    """``usage`` in the model's shape (the catalog's ``usage``, contract 2.6); ``seconds``:
    the duration to report instead of the requested one; ``clip_seconds``: what a
    ``media[first_clip]`` counts as input video."""
    params = task.parameters
    duration: float = int(params.get("duration") or 5) if seconds is None else seconds
    tier = int(str(params.get("resolution") or "1080P").upper().rstrip("P") or 1080)
    spec = model_spec(task.model)
    shape = (
        spec.usage if spec is not None else "wan2.6" if task.model.startswith("wan2.6") else "sr"
    )
    if shape == "ratio":
        return {"video_duration": duration, "video_ratio": "standard", "video_count": 1}
    if shape == "sr":
        return {"duration": duration, "SR": tier, "video_count": 1}
    media = (task.body.get("input") or {}).get("media") or []
    clip = any(isinstance(m, dict) and m.get("type") == "first_clip" for m in media)
    inputs = clip_seconds if clip else 0
    usage: dict[str, Any] = {
        "duration": inputs + duration,
        "input_video_duration": inputs,
        "output_video_duration": duration,
        "SR": tier,
        "video_count": 1,
    }
    optional = spec.audio == "optional" if spec is not None else "flash" in task.model
    if optional:
        usage["audio"] = bool(params.get("audio", True))
    return usage


def has_audio(task: FakeTask) -> bool:
    """Whether the task's result has a sound track (the model's ``audio`` and the request's)."""
    spec = model_spec(task.model)
    if spec is not None and spec.audio == "never":
        return False
    if spec is not None and spec.audio == "always":
        return True
    return bool(task.parameters.get("audio", True))


@functools.lru_cache(maxsize=32)
def make_mp4(width: int, height: int, seconds: int, audio: bool) -> bytes:
    """A real H.264 (+ AAC) MP4: a moving gradient, ``seconds`` long at 30 fps."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        video = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=48000) if audio else None
        ramp = np.linspace(0, 255, width, dtype=np.float32)
        for i in range(seconds * FPS):
            row = ((ramp + i * 4) % 256).astype(np.uint8)
            rgb = np.repeat(np.repeat(row[None, :, None], height, 0), 3, 2)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None:
            _mux_tone(out, sound, seconds)
    return buf.getvalue()


def _mux_tone(out: Any, stream: Any, seconds: int) -> None:
    rate, step = 48000, 1024
    for start in range(0, seconds * rate, step):
        t = (np.arange(start, start + step) / rate).astype(np.float32)
        tone = (0.1 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


class Views:
    """Task bodies in the DashScope shape (contract 2.4)."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    def task(self, task: FakeTask, base: str) -> dict[str, Any]:
        now = self.state.clock()
        status = task.status_at(now)
        out: dict[str, Any] = {"task_id": task.task_id, "task_status": status}
        body: dict[str, Any] = {"request_id": str(uuid.uuid4()), "output": out}
        if status == "UNKNOWN":
            return body
        ts = self.state.time_string
        out["submit_time"] = ts(task.created)
        if status != "PENDING" and task.canceled_at is None:
            out["scheduled_time"] = ts(task.scheduled)
        if status in ("SUCCEEDED", "FAILED", "CANCELED"):
            out["end_time"] = ts(task.ended)
        out["orig_prompt"] = task.prompt
        if status == "FAILED" and task.fail:
            out["code"], out["message"] = task.fail
        if status == "SUCCEEDED":
            if task.parameters.get("prompt_extend") and not task.model.startswith("wan2.6"):
                out["actual_prompt"] = f"{task.prompt} (extended by the fake)"
            expires = math.ceil(task.ended + self.state.config.url_ttl)
            sig = self.state.signature(task.task_id, expires)
            out["video_url"] = (
                f"{base}/results/{task.task_id}.mp4?Expires={expires}&Signature={sig}"
            )
            config = self.state.config
            body["usage"] = usage_for(task, config.usage_seconds, config.first_clip_seconds)
        return body

    def list_item(self, task: FakeTask) -> dict[str, Any]:
        now = self.state.clock()
        status = task.status_at(now)
        ended = task.ended if status in ("SUCCEEDED", "FAILED", "CANCELED") else None
        return {
            "api_key_id": key_id(task.key),
            "caller_parent_id": "fake-account",
            "caller_uid": "fake-account",
            "gmt_create": int(task.created * 1000),
            "start_time": int(task.created * 1000),
            "end_time": int(ended * 1000) if ended else None,
            "model_name": task.model,
            "region": "fake",
            "request_id": task.request_id,
            "status": status,
            "task_id": task.task_id,
            "user_api_unique_key": f"apikey:v1:video-generation:{task.model}",
        }


def list_page(state: FakeState, views: Views, query: dict[str, str]) -> Any:
    now = state.clock()
    try:
        start = state.parse_list_time(query["start_time"]) if "start_time" in query else now - 86400
        end = state.parse_list_time(query["end_time"]) if "end_time" in query else now
        page_no = max(1, int(query.get("page_no", 1)))
        page_size = min(100, max(1, int(query.get("page_size", 10))))
    except ValueError:
        return error(400, "InvalidParameter", "start_time/end_time are YYYYMMDDhhmmss")
    if end - start > MAX_LIST_WINDOW or end < start:
        return error(400, "InvalidParameter", "the time window must be at most 24 hours")
    chosen = [
        t
        for t in state.listing()
        if start <= t.created <= end + 1
        and query.get("task_id", t.task_id) == t.task_id
        and query.get("model_name", t.model) == t.model
        and query.get("status", t.status_at(now)) == t.status_at(now)
    ]
    chosen.sort(key=lambda t: t.created, reverse=True)
    page = chosen[(page_no - 1) * page_size : page_no * page_size]
    return {
        "request_id": str(uuid.uuid4()),
        "data": [views.list_item(t) for t in page],
        "page_no": page_no,
        "page_size": page_size,
        "total": len(chosen),
        "total_page": max(1, math.ceil(len(chosen) / page_size)),
    }


async def result_file(state: FakeState, task_id: str, request: Request) -> Response:
    query = request.query_params
    task = state.get(task_id)
    try:
        expires = int(query.get("Expires", "0"))
    except ValueError:
        expires = 0
    valid = (
        task is not None
        and task.status_at(state.clock()) == "SUCCEEDED"
        and query.get("Signature") == state.signature(task_id, expires)
        and expires > state.clock()
    )
    if not valid or task is None:
        return error(403, "AccessDenied", "Request has expired or the signature is wrong.")
    width, height = state.config.video_size
    params = task.parameters
    seconds = int(params.get("duration") or 5)
    data = await asyncio.to_thread(make_mp4, width, height, seconds, has_audio(task))
    return Response(data, media_type="video/mp4")

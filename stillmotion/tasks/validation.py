"""Submit-body validation against the model catalog (contract section 3).

Turns the JSON body of either submit path into a ``VideoRequest`` with every default filled
in (and nothing else: unknown keys are dropped, prompts truncated as upstream does), plus the
decoded bytes of any ``data:`` URIs, which the service keeps in storage. ``check_submit`` does
the cheap part; ``decode_media`` the CPU-bound decoding, which the service runs in a thread.
Errors are ``InvalidParameter`` (400) naming the field and the allowed values.
"""

from __future__ import annotations

import functools
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stillmotion import catalog
from stillmotion.catalog import ModelSpec
from stillmotion.domain import MediaRef, VideoRequest, is_clean_text
from stillmotion.errors import EmptyInput, EmptyModel, InvalidParameter, TooLarge
from stillmotion.ids import random_bytes
from stillmotion.media.fetch import check_url_syntax
from stillmotion.media.probe import probe_audio, probe_image
from stillmotion.tasks.bodies import read_media
from stillmotion.tasks.body import SplicedUri, b64decode_gently

AUDIO_MIMES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/mpeg", "audio/mp3")
_EXT = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/bmp": "bmp",
    "image/webp": "webp",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
}
_HEADER = re.compile(r"data:(?P<mime>[A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+);base64,")
_HEADER_MAX = 128


@dataclass
class Blob:
    """Decoded ``data:`` URI bytes to keep in storage under ``name`` (relative to the task)."""

    name: str
    data: bytes
    mime: str


@dataclass
class Validated:
    request: VideoRequest
    spec: ModelSpec
    blobs: list[Blob] = field(default_factory=list)
    #: ``data:`` URIs still to decode and probe (``decode_media``), by request field:
    #: ``image`` and ``audio_source``.
    pending: dict[str, str] = field(default_factory=dict)


#: the DashScope-native submit paths, by the body generations they serve (contract 2.1)
NATIVE_PATHS = {
    "video-generation": "/api/v1/services/aigc/video-generation/video-synthesis",
    "image2video": "/api/v1/services/aigc/image2video/video-synthesis",
}


def validate_submit(body: Any, endpoint: str | None = None) -> Validated:
    """The whole validation, data URIs decoded (synchronous: tests and tools)."""
    return decode_media(check_submit(body, endpoint))


def _check_endpoint(spec: ModelSpec, endpoint: str | None) -> None:
    """A native path serves its own models only: kf2v models on ``image2video``, the others
    on ``video-generation``; the reseller path (None) serves every model."""
    if endpoint is None:
        return
    wanted = "image2video" if spec.body == "kf2v" else "video-generation"
    if endpoint != wanted:
        raise InvalidParameter(
            f"model {spec.name} is not served on this path; send it to POST {NATIVE_PATHS[wanted]}."
        )


def check_submit(body: Any, endpoint: str | None = None) -> Validated:
    """Everything but decoding ``data:`` URIs, which stay in ``pending``: cheap enough for the
    event loop. The request keeps only the fields the contract defines, normalised.
    ``endpoint``: the native path it came to (``NATIVE_PATHS``), None for the reseller's."""
    if not isinstance(body, dict):
        raise InvalidParameter("The request body must be a JSON object.")
    spec = _model(body.get("model"))
    _check_endpoint(spec, endpoint)
    inp = body.get("input")
    if inp is None:
        raise EmptyInput("Required parameter 'input' missing.")
    if not isinstance(inp, dict):
        raise InvalidParameter("input must be a JSON object.")
    params = body.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidParameter("parameters must be a JSON object.")
    pending: dict[str, str] = {}
    media = read_media(
        inp,
        spec,
        functools.partial(_image, spec=spec, pending=pending),
        functools.partial(_audio_url, pending=pending),
        _remote_url,
    )
    audio = _audio_flag(params.get("audio"), spec)
    request = VideoRequest(
        model=spec.name,
        prompt=_text(inp.get("prompt"), "input.prompt", spec.prompt_max),
        negative_prompt=_text(
            inp.get("negative_prompt"), "input.negative_prompt", spec.negative_prompt_max
        ),
        image=media.image,
        audio_source=media.audio_source if audio else None,
        resolution=_resolution(params.get("resolution"), spec),
        duration=_duration(params.get("duration"), spec),
        audio=audio,
        shot_type=_shot_type(params.get("shot_type"), spec),
        seed=_seed(params.get("seed")),
        prompt_extend=_bool(params.get("prompt_extend"), "parameters.prompt_extend", True),
        watermark=_bool(params.get("watermark"), "parameters.watermark", False),
        last_frame=media.last_frame,
        first_clip=media.first_clip,
        references=tuple(media.references),
        template=media.template,
        extra={k: params[k] for k in spec.extra_parameters if k in params},
    )
    return Validated(request=request, spec=spec, pending=pending)


def decode_media(validated: Validated) -> Validated:
    """Decode and probe the pending ``data:`` URIs (CPU-bound: run it off the event loop).
    A decoded audio track the request does not use is checked but not kept."""
    request, blobs = validated.request, list(validated.blobs)
    for key in ("image", "last_frame"):
        image_uri = validated.pending.get(key)
        if image_uri is not None:
            what = validated.pending.get(f"{key}:field", "input.img_url")
            blob = _image_blob(image_uri, validated.spec, key, what)
            blobs.append(blob)
            ref = MediaRef(storage_key=blob.name, mime=blob.mime)
            if key == "image":
                request = replace(request, image=ref)
            else:
                request = replace(request, last_frame=ref)
    audio_uri = validated.pending.get("audio_source")
    if audio_uri is not None:
        blob = _audio_blob(audio_uri)
        if request.audio_source is not None:
            blobs.append(blob)
            request = replace(request, audio_source=MediaRef(storage_key=blob.name, mime=blob.mime))
    return Validated(request=request, spec=validated.spec, blobs=blobs)


def _model(value: Any) -> ModelSpec:
    if value is None or value == "":
        raise EmptyModel("Required parameter 'model' missing.")
    spec = catalog.get_model(value) if isinstance(value, str) else None
    if spec is None:
        allowed = ", ".join(catalog.model_names())
        shown = value if not isinstance(value, str) else value[:100]
        raise InvalidParameter(f"model: {shown!r} is not supported; allowed values: {allowed}.")
    return spec


def _text(value: Any, name: str, limit: int) -> str:
    if value is None:
        return ""
    if isinstance(value, SplicedUri):
        value = value.text()
    if not isinstance(value, str):
        raise InvalidParameter(f"{name} must be a string.")
    kept = value[:limit]  # upstream truncates silently
    if not is_clean_text(kept):
        raise InvalidParameter(f"{name} must not contain NUL characters or invalid Unicode.")
    return kept


def _image(
    value: Any, what: str, key: str, *, spec: ModelSpec, pending: dict[str, str]
) -> MediaRef:
    """An image field (``what``); a data URI waits in ``pending[key]`` for decode_media."""
    hint = "an http(s) URL or a data:{mime};base64,{data} URI of a JPEG, PNG, BMP or WEBP image"
    if value is None or value == "":
        raise InvalidParameter(f"{what} is required: {hint}.")
    if not isinstance(value, str):
        raise InvalidParameter(f"{what} must be a string: {hint}.")
    if value.startswith("data:"):
        if _decoded_size(value) > spec.image_max_bytes:
            raise TooLarge(f"{what} is larger than {spec.image_max_bytes // 2**20} MB.")
        pending[key] = value
        pending[f"{key}:field"] = what  # for decode_media's errors
        return MediaRef(storage_key=key)  # named and typed by decode_media
    if value.startswith("oss://"):
        raise InvalidParameter(f"{what}: oss:// URLs only work on DashScope; send {hint}.")
    _check_url(value, what)
    return MediaRef(url=value)


def _audio_url(value: Any, what: str, key: str, *, pending: dict[str, str]) -> MediaRef:
    if not isinstance(value, str):
        raise InvalidParameter(f"{what} must be a string: an http(s) URL of a wav or mp3.")
    if value.startswith("data:"):
        if _decoded_size(value) > catalog.AUDIO_MAX_BYTES:
            raise TooLarge(f"{what} is larger than 15 MB.")
        pending[key] = value
        return MediaRef(storage_key="audio")  # named and typed by decode_media
    _check_url(value, what)
    return MediaRef(url=value)


def _remote_url(value: Any, what: str) -> MediaRef:
    """A clip or reference: an http(s) URL (passed on to an upstream as it is)."""
    if not isinstance(value, str) or value.startswith("data:"):
        raise InvalidParameter(f"{what} must be an http(s) URL.")
    _check_url(value, what)
    return MediaRef(url=value)


def _check_url(value: str, what: str) -> None:
    if not is_clean_text(value):
        raise InvalidParameter(f"{what} must not contain NUL characters or invalid Unicode.")
    check_url_syntax(value, what)


def _decoded_size(uri: str) -> int:
    """About how many bytes a data URI decodes to (from its length alone)."""
    payload = len(uri.payload) if isinstance(uri, SplicedUri) else len(uri) - uri.find(",") - 1
    return payload * 3 // 4 - 2


def _decode(uri: str, what: str, allowed: Sequence[str]) -> tuple[str, bytes]:
    """``data:{mime};base64,{data}`` to the (lower-cased) MIME type and the bytes."""
    comma = uri.find(",", 0, _HEADER_MAX)
    match = _HEADER.fullmatch(uri[: comma + 1]) if comma >= 0 else None
    if match is None:
        raise InvalidParameter(
            f"{what} must be an http(s) URL or a data URI of the form "
            f"data:{{MIME_type}};base64,{{data}} with MIME type {', '.join(allowed)}"
        )
    mime = match["mime"].lower()
    if mime not in allowed:
        raise InvalidParameter(
            f"{what} has MIME type {mime!r}; the data URI MIME type must be one of "
            + ", ".join(allowed)
        )
    payload: str | memoryview = uri.payload if isinstance(uri, SplicedUri) else uri
    data = b64decode_gently(payload, what, 0 if isinstance(uri, SplicedUri) else comma + 1)
    if not data:
        raise InvalidParameter(f"{what} data URI is empty")
    return mime, data


def _image_blob(uri: str, spec: ModelSpec, key: str = "image", what: str = "input.img_url") -> Blob:
    _, data = _decode(uri, what, catalog.IMAGE_MIMES)
    if len(data) > spec.image_max_bytes:
        raise TooLarge(f"{what} is larger than {spec.image_max_bytes // 2**20} MB.")
    info = probe_image(data, max_bytes=spec.image_max_bytes)
    return Blob(name=f"{key}.{_EXT.get(info.mime, 'img')}", data=data, mime=info.mime)


def _audio_blob(uri: str) -> Blob:
    mime, data = _decode(uri, "input.audio_url", AUDIO_MIMES)
    if len(data) > catalog.AUDIO_MAX_BYTES:
        raise TooLarge("input.audio_url is larger than 15 MB.")
    ext = _EXT.get(mime, "wav")
    _probe_audio_bytes(data, ext)
    return Blob(name=f"audio.{ext}", data=data, mime=mime)


def _probe_audio_bytes(data: bytes, ext: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"audio.{ext}"
        path.write_bytes(data)
        probe_audio(path)


def _audio_flag(value: Any, spec: ModelSpec) -> bool:
    if value is None:
        return spec.audio != "never"
    if not isinstance(value, bool):
        raise InvalidParameter("parameters.audio must be true or false.")
    if spec.audio == "always" and value is False:
        raise InvalidParameter(
            f"parameters.audio: {spec.name} always makes video with audio; allowed values: true "
            "(only wan2.6-i2v-flash accepts false)."
        )
    if spec.audio == "never" and value is True:
        raise InvalidParameter(f"parameters.audio: {spec.name} makes silent video only.")
    return value


def _resolution(value: Any, spec: ModelSpec) -> str:
    if value is None:
        return spec.default_resolution
    norm = value.upper() if isinstance(value, str) else None
    if norm not in spec.resolutions:
        allowed = ", ".join(spec.resolutions)
        raise InvalidParameter(
            f"parameters.resolution: {value!r} is not supported by {spec.name}; "
            f"allowed values: {allowed}."
        )
    return norm


def _duration(value: Any, spec: ModelSpec) -> int:
    if value is None:
        return spec.default_duration
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if number is None or number not in spec.durations:
        raise InvalidParameter(
            f"parameters.duration: {value!r} is not supported by {spec.name}; "
            f"allowed values: {spec.duration_rule()} (seconds)."
        )
    return number


def _shot_type(value: Any, spec: ModelSpec) -> str:
    if value is None:
        return "single"
    if not spec.shot_types:
        raise InvalidParameter(f"parameters.shot_type is not supported by {spec.name}.")
    if value not in spec.shot_types:
        raise InvalidParameter(
            f"parameters.shot_type: {value!r} is not allowed; allowed values: "
            + ", ".join(spec.shot_types)
            + "."
        )
    return str(value)


def _seed(value: Any) -> int:
    if value is None:
        return int.from_bytes(random_bytes(4)) & catalog.SEED_MAX  # 2**31 values: uniform
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= catalog.SEED_MAX:
        raise InvalidParameter(
            f"parameters.seed: {value!r} is out of range; allowed values: integers from 0 to "
            f"{catalog.SEED_MAX}."
        )
    return value


def _bool(value: Any, name: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidParameter(f"{name} must be true or false.")
    return value

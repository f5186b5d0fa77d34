"""Submit-body validation against the model catalog (contract section 3).

Turns the raw JSON body of either submit path into a ``VideoRequest`` with every default
filled in, plus the decoded bytes of any ``data:`` URIs, which the service keeps in storage.
Errors are ``InvalidParameter`` (400) naming the field and the allowed values.
"""

from __future__ import annotations

import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stillmotion import catalog
from stillmotion.catalog import ModelSpec
from stillmotion.domain import MediaRef, VideoRequest
from stillmotion.errors import EmptyInput, EmptyModel, InvalidParameter, TooLarge
from stillmotion.media.fetch import check_url_syntax
from stillmotion.media.probe import decode_data_uri, probe_audio, probe_image

AUDIO_MIMES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/mpeg", "audio/mp3")
_EXT = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/bmp": "bmp",
    "image/webp": "webp",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
}


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


def validate_submit(body: Any) -> Validated:
    if not isinstance(body, dict):
        raise InvalidParameter("The request body must be a JSON object.")
    spec = _model(body.get("model"))
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
    if inp.get("template") not in (None, ""):
        raise InvalidParameter(f"input.template is not supported by model {spec.name}.")
    blobs: list[Blob] = []
    image = _image(inp.get("img_url"), spec, blobs)
    audio = _audio_flag(params.get("audio"), spec)
    audio_source = _audio_url(inp.get("audio_url"), blobs)
    request = VideoRequest(
        model=spec.name,
        prompt=_text(inp.get("prompt"), "input.prompt", spec.prompt_max),
        negative_prompt=_text(
            inp.get("negative_prompt"), "input.negative_prompt", spec.negative_prompt_max
        ),
        image=image,
        audio_source=audio_source if audio else None,
        resolution=_resolution(params.get("resolution"), spec),
        duration=_duration(params.get("duration"), spec),
        audio=audio,
        shot_type=_shot_type(params.get("shot_type"), spec),
        seed=_seed(params.get("seed")),
        prompt_extend=_bool(params.get("prompt_extend"), "parameters.prompt_extend", True),
        watermark=_bool(params.get("watermark"), "parameters.watermark", False),
        raw=_raw(body, inp, params),
    )
    return Validated(request=request, spec=spec, blobs=blobs)


def _model(value: Any) -> ModelSpec:
    if value is None or value == "":
        raise EmptyModel("Required parameter 'model' missing.")
    spec = catalog.get_model(value) if isinstance(value, str) else None
    if spec is None:
        allowed = ", ".join(catalog.model_names())
        raise InvalidParameter(f"model: {value!r} is not supported; allowed values: {allowed}.")
    return spec


def _text(value: Any, name: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidParameter(f"{name} must be a string.")
    return value[:limit]  # upstream truncates silently


def _image(value: Any, spec: ModelSpec, blobs: list[Blob]) -> MediaRef:
    hint = "an http(s) URL or a data:{mime};base64,{data} URI of a JPEG, PNG, BMP or WEBP image"
    if value is None or value == "":
        raise InvalidParameter(f"input.img_url is required: {hint}.")
    if not isinstance(value, str):
        raise InvalidParameter(f"input.img_url must be a string: {hint}.")
    if value.startswith("data:"):
        mime, data = decode_data_uri(value, "input.img_url", catalog.IMAGE_MIMES)
        if len(data) > spec.image_max_bytes:
            raise TooLarge(f"input.img_url is larger than {spec.image_max_bytes // 2**20} MB.")
        info = probe_image(data, max_bytes=spec.image_max_bytes)
        name = f"image.{_EXT.get(info.mime, 'img')}"
        blobs.append(Blob(name=name, data=data, mime=info.mime))
        return MediaRef(storage_key=name, mime=info.mime)
    if value.startswith("oss://"):
        raise InvalidParameter(f"input.img_url: oss:// URLs only work on DashScope; send {hint}.")
    check_url_syntax(value, "input.img_url")
    return MediaRef(url=value)


def _audio_url(value: Any, blobs: list[Blob]) -> MediaRef | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidParameter("input.audio_url must be a string: an http(s) URL of a wav or mp3.")
    if value.startswith("data:"):
        mime, data = decode_data_uri(value, "input.audio_url", AUDIO_MIMES)
        if len(data) > catalog.AUDIO_MAX_BYTES:
            raise TooLarge("input.audio_url is larger than 15 MB.")
        ext = _EXT.get(mime, "wav")
        _probe_audio_bytes(data, ext)
        blobs.append(Blob(name=f"audio.{ext}", data=data, mime=mime))
        return MediaRef(storage_key=f"audio.{ext}", mime=mime)
    check_url_syntax(value, "input.audio_url")
    return MediaRef(url=value)


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
        return secrets.randbelow(catalog.SEED_MAX + 1)
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


def _raw(body: dict[str, Any], inp: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The body as sent, without the (possibly huge) data: URIs."""
    kept_input = {
        k: ("<data-uri>" if isinstance(v, str) and v.startswith("data:") else v)
        for k, v in inp.items()
    }
    return {"model": body.get("model"), "input": kept_input, "parameters": dict(params)}

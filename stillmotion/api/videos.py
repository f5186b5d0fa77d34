"""The OpenAI-style ``/v1/videos`` facade's mapping (docs/api.md, "OpenAI-style videos"): a
create request (JSON or a multipart form) to our submit body, a task row to a video object,
and the cursor page over the store's listing. The routes are in ``routes_videos.py``.

A create becomes the body of ``POST /task/bailian/image2video`` in the model's body generation
(the catalog's ``body``): ``input_reference`` is the first frame (``input.img_url``,
``input.media[first_frame]`` or ``input.first_frame_url``), ``size`` picks the tier,
``seconds`` the duration, and the Wan extras (``extra_body``) map to our fields. Everything
else (validation, pricing, holds, idempotency, webhooks) is ``TaskService.submit``'s.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from stillmotion.catalog import IMAGE_MIMES, TIERS, ModelSpec, get_model, model_names
from stillmotion.domain import TaskStatus
from stillmotion.errors import (
    EmptyModel,
    InvalidParameter,
    ServiceError,
    UnsupportedFileFormat,
)
from stillmotion.tasks.render import TaskRenderer
from stillmotion.tasks.retention import EXPIRED_AT
from stillmotion.tasks.store import TaskRow

OBJECT = "video"
STATUSES = {
    TaskStatus.PENDING: "queued",
    TaskStatus.RUNNING: "in_progress",
    TaskStatus.SUCCEEDED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELED: "failed",  # OpenAI has no canceled status: failed, code `canceled`
}
CANCELED_ERROR = {"code": "canceled", "message": "The task was canceled before it finished."}

#: extras that become ``parameters.*`` as they are
PARAMETERS = ("seed", "resolution", "audio", "prompt_extend", "watermark", "duration", "shot_type")
#: extras that become ``input.*`` as they are
INPUTS = ("negative_prompt", "template")
#: what a create takes besides a model's ``extra_parameters``
KNOWN = frozenset(
    {"prompt", "model", "seconds", "size", "input_reference", "last_frame", "audio_url"}
    | set(PARAMETERS)
    | set(INPUTS)
)
#: form fields that are JSON values, not text (``true``, ``5``)
_TYPED = frozenset({"seed", "audio", "prompt_extend", "watermark", "duration"})
_SIZE = re.compile(r"\s*(\d{1,5})\s*[xX*]\s*(\d{1,5})\s*")
#: a ``size`` whose area is further than this factor from every tier's fits none
SIZE_TOLERANCE = 2.0
_FIELD = re.compile(
    r"(Field required: )?((?:input|parameters)\.[a-z_]+(?:\[\d+\])?(?:\.url)?|model)"
)
IMAGE_HINT = (
    "a file upload (multipart/form-data), an http(s) URL or a data:image/...;base64 URI of a "
    "JPEG, PNG, BMP or WEBP image"
)


def with_param(exc: ServiceError, param: str | None) -> ServiceError:
    """``exc`` naming the request field at fault (``param`` of OpenAI's error shape)."""
    setattr(exc, "param", param)  # noqa: B010 (not an attribute of every ServiceError)
    return exc


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart create."""

    data: bytes
    content_type: str | None
    filename: str | None


def sniff_image(data: bytes) -> str | None:
    """The MIME type of an image file from its first bytes (JPEG, PNG, BMP, WEBP), or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:2] == b"BM":
        return "image/bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def upload_uri(upload: Upload, name: str) -> str:
    """An uploaded image as a ``data:`` URI, the form the service keeps in storage."""
    if not upload.data:
        raise with_param(InvalidParameter(f"{name}: the uploaded file is empty."), name)
    declared = (upload.content_type or "").split(";")[0].strip().lower()
    mime = sniff_image(upload.data) or (declared if declared in IMAGE_MIMES else None)
    if mime is None:
        raise with_param(
            UnsupportedFileFormat(
                f"{name}: the uploaded file is not a JPEG, PNG, BMP or WEBP image."
            ),
            name,
        )
    return f"data:{mime};base64,{base64.b64encode(upload.data).decode('ascii')}"


async def encode_uploads(
    fields: dict[str, Any], off_loop: Callable[..., Awaitable[Any]]
) -> dict[str, Any]:
    """``fields`` with every uploaded file as a data: URI (a big one encoded in a thread)."""
    out = dict(fields)
    for name, value in fields.items():
        if isinstance(value, Upload):
            small = len(value.data) <= 256 * 1024
            out[name] = (
                upload_uri(value, name) if small else await off_loop(upload_uri, value, name)
            )
    return out


def form_value(name: str, value: str) -> Any:
    """A form field's value: the JSON value of the typed extras (``true``, ``5``), else text."""
    if name not in _TYPED:
        return value
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    return parsed if isinstance(parsed, (bool, int, float)) else value


def merge_extra_body(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields sent inside a literal ``extra_body`` object join the top level (the ``openai``
    SDK merges ``extra_body`` into the body itself; other clients send it as it is)."""
    extra = fields.get("extra_body")
    if extra is None:
        return fields
    if isinstance(extra, str):
        try:
            extra = orjson.loads(extra)
        except orjson.JSONDecodeError:
            extra = None
    if not isinstance(extra, dict):
        raise with_param(InvalidParameter("extra_body must be a JSON object."), "extra_body")
    merged = {k: v for k, v in fields.items() if k != "extra_body"}
    for name, value in extra.items():
        if name in merged and merged[name] != value:
            raise with_param(
                InvalidParameter(f"{name} is given twice, differently (in extra_body too)."), name
            )
        merged[name] = value
    return merged


def model_spec(value: Any) -> ModelSpec:
    allowed = ", ".join(model_names())
    if value in (None, ""):
        raise with_param(EmptyModel(f"model is required: one of {allowed}."), "model")
    spec = get_model(value) if isinstance(value, str) else None
    if spec is None:
        shown = value[:100] if isinstance(value, str) else value
        raise with_param(
            InvalidParameter(f"model: {shown!r} is not supported; allowed values: {allowed}."),
            "model",
        )
    return spec


def tier_sizes(spec: ModelSpec) -> str:
    """The sizes that pick each of ``spec``'s tiers, for messages and docs."""
    parts = []
    for tier in spec.resolutions:
        width, height = TIERS[tier]
        parts.append(f"{width}x{height} or {height}x{width} ({tier})")
    return "; ".join(parts)


def tier_for_size(value: Any, spec: ModelSpec) -> str:
    """The tier whose pixel area is nearest ``value`` (``"WxH"``); 400 when that tier is not
    one of the model's, or the area is more than ``SIZE_TOLERANCE`` from every tier's."""
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None or 0 in (int(match[1]), int(match[2])):
        raise with_param(
            InvalidParameter(
                f"size: {value!r} is not a size; send WIDTHxHEIGHT, e.g. 1280x720. "
                f"{spec.name} takes {tier_sizes(spec)}."
            ),
            "size",
        )
    area = int(match[1]) * int(match[2])

    def distance(tier: str) -> float:
        width, height = TIERS[tier]
        return abs(math.log(area / (width * height)))

    nearest = min(TIERS, key=distance)
    if nearest not in spec.resolutions or distance(nearest) > math.log(SIZE_TOLERANCE):
        raise with_param(
            InvalidParameter(
                f"size: {value!r} fits no resolution tier of {spec.name}; it takes "
                f"{tier_sizes(spec)} (the video keeps the first frame's aspect ratio)."
            ),
            "size",
        )
    return nearest


def duration_for_seconds(value: Any, spec: ModelSpec) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number is None or number not in spec.durations:
        raise with_param(
            InvalidParameter(
                f"seconds: {value!r} is not supported by {spec.name}; allowed values: "
                f"{spec.duration_rule()}."
            ),
            "seconds",
        )
    return number


def image_value(value: Any, name: str, required: bool) -> str | None:
    """An image field (``input_reference``, ``last_frame``): a URL or data: URI string, or
    OpenAI's ``{"image_url": ...}`` reference object (uploads are data: URIs by now)."""
    if isinstance(value, dict):
        if value.get("file_id") and not value.get("image_url"):
            raise with_param(
                InvalidParameter(
                    f"{name}.file_id: this server has no Files API; send {IMAGE_HINT}."
                ),
                name,
            )
        value = value.get("image_url")
    if value in (None, ""):
        if not required:
            return None
        raise with_param(
            InvalidParameter(f"{name} is required (the first frame): {IMAGE_HINT}."), name
        )
    if not isinstance(value, str):
        raise with_param(InvalidParameter(f"{name} must be {IMAGE_HINT}."), name)
    return value


@dataclass
class Submit:
    """A create as our submit body, and how our field names read in the caller's terms."""

    body: dict[str, Any]
    spec: ModelSpec
    names: dict[str, str] = field(default_factory=dict)

    def name_field(self, exc: ServiceError) -> ServiceError:
        """``exc`` from the service with ``param`` (and the message's leading field) in the
        caller's names: ``input.img_url`` is ``input_reference``, ``parameters.duration``
        ``seconds`` when the caller sent ``seconds``."""
        if getattr(exc, "param", None) is not None:
            return exc
        match = _FIELD.match(exc.message)
        if match is None:
            return with_param(exc, None)
        ours = match[2]
        theirs = self.names.get(ours) or self.names.get(ours.removesuffix(".url"))
        if theirs is None and ours.startswith("parameters."):
            theirs = ours.removeprefix("parameters.")
        if theirs is None:
            return with_param(exc, None)
        exc.message = exc.message[: match.start(2)] + theirs + exc.message[match.end(2) :]
        return with_param(exc, theirs)


def build_submit(fields: Mapping[str, Any]) -> Submit:
    """Our submit body for a create's fields (uploads already data: URIs)."""
    fields = merge_extra_body(dict(fields))
    spec = model_spec(fields.get("model"))
    unknown = sorted(set(fields) - KNOWN - set(spec.extra_parameters))
    if unknown:
        known = ", ".join(sorted(KNOWN | set(spec.extra_parameters)))
        raise with_param(
            InvalidParameter(f"{unknown[0]} is not a parameter of this API; known: {known}."),
            unknown[0],
        )
    params = _parameters(fields, spec)
    names = {
        "model": "model",
        "input.prompt": "prompt",
        "input.negative_prompt": "negative_prompt",
        "input.template": "template",
        "parameters.duration": "seconds" if "duration" not in fields else "duration",
        "parameters.resolution": "size" if "resolution" not in fields else "resolution",
    }
    inp = _input(fields, spec, names)
    for name in INPUTS:
        if fields.get(name) is not None:
            inp[name] = fields[name]
    body = {"model": spec.name, "input": inp, "parameters": params}
    return Submit(body=body, spec=spec, names=names)


def _parameters(fields: Mapping[str, Any], spec: ModelSpec) -> dict[str, Any]:
    params = {
        name: fields[name]
        for name in (*PARAMETERS, *spec.extra_parameters)
        if fields.get(name) is not None
    }
    if fields.get("size") not in (None, ""):
        tier = tier_for_size(fields["size"], spec)
        given = params.get("resolution")
        if given is not None and (not isinstance(given, str) or given.upper() != tier):
            raise with_param(
                InvalidParameter(f"size picks {tier}, but resolution says {given!r}: send one."),
                "size",
            )
        params["resolution"] = tier
    if fields.get("seconds") not in (None, ""):
        seconds = duration_for_seconds(fields["seconds"], spec)
        given = params.get("duration")
        if given is not None and given != seconds:
            raise with_param(
                InvalidParameter(f"seconds is {seconds}, but duration says {given!r}: send one."),
                "seconds",
            )
        params["duration"] = seconds
    return params


def _input(fields: Mapping[str, Any], spec: ModelSpec, names: dict[str, str]) -> dict[str, Any]:
    """``input`` in the model's body generation, and what its fields are called by the caller."""
    first = image_value(fields.get("input_reference"), "input_reference", required=True)
    last = image_value(fields.get("last_frame"), "last_frame", required=False)
    audio = fields.get("audio_url")
    inp: dict[str, Any] = {"prompt": fields.get("prompt")}
    if spec.body == "media":
        media = [{"type": "first_frame", "url": first}]
        names["input.media"] = "input_reference"
        names["input.media[0]"] = "input_reference"
        if last is not None:
            names[f"input.media[{len(media)}]"] = "last_frame"
            media.append({"type": "last_frame", "url": last})
        if audio is not None:
            names[f"input.media[{len(media)}]"] = "audio_url"
            media.append({"type": "driving_audio", "url": audio})
        inp["media"] = media
        return inp
    if spec.body == "kf2v":
        if last is None:
            raise with_param(
                InvalidParameter(
                    f"last_frame is required: {spec.name} makes a video from a first and a last "
                    f"frame; send it as extra_body last_frame ({IMAGE_HINT})."
                ),
                "last_frame",
            )
        names.update(
            {"input.first_frame_url": "input_reference", "input.last_frame_url": "last_frame"}
        )
        inp.update(first_frame_url=first, last_frame_url=last)
    else:
        if last is not None:
            raise with_param(
                InvalidParameter(
                    f"last_frame is not supported by {spec.name}, which takes a first frame only."
                ),
                "last_frame",
            )
        names["input.img_url"] = "input_reference"
        inp["img_url"] = first
    if audio is not None:
        names["input.audio_url"] = "audio_url"
        inp["audio_url"] = audio
    return inp


# -- task rows as video objects ----------------------------------------------------------


def _size(row: TaskRow) -> str:
    """The real output size once there is a video; before, the tier's nominal size."""
    result = row.result or {}
    if row.status is TaskStatus.SUCCEEDED and result.get("width") and result.get("height"):
        return f"{int(result['width'])}x{int(result['height'])}"
    width, height = TIERS.get(str(row.request.get("resolution")), (0, 0))
    return f"{width}x{height}"


def _progress(row: TaskRow) -> int:
    if row.status is TaskStatus.SUCCEEDED:
        return 100
    if row.status is TaskStatus.PENDING:
        return 0
    return max(0, min(99, int(round(row.progress * 100))))


def _expires_at(row: TaskRow, renderer: TaskRenderer) -> int | None:
    if row.status is not TaskStatus.SUCCEEDED or row.ended_at is None:
        return None
    swept = (row.result or {}).get(EXPIRED_AT)
    if swept is not None:
        return int(swept)
    ttl = renderer.result_ttl_seconds
    return None if ttl is None else int(row.ended_at + ttl)


def _error(row: TaskRow) -> dict[str, str] | None:
    if row.status is TaskStatus.FAILED:
        return {"code": row.error_code or "InternalError", "message": row.error_message or ""}
    if row.status is TaskStatus.CANCELED:
        return dict(CANCELED_ERROR)
    return None


def video_object(row: TaskRow, renderer: TaskRenderer) -> dict[str, Any]:
    """A task as OpenAI's ``Video`` object."""
    ended = row.ended_at if row.status.terminal else None
    return {
        "id": row.id,
        "object": OBJECT,
        "model": row.model,
        "status": STATUSES.get(row.status, "failed"),
        "progress": _progress(row),
        "created_at": int(row.created_at),
        "completed_at": None if ended is None else int(ended),
        "expires_at": _expires_at(row, renderer),
        "error": _error(row),
        "seconds": str(row.request.get("duration")),
        "size": _size(row),
        "prompt": row.request.get("prompt") or None,
        "remixed_from_video_id": None,
    }


# -- the cursor page ---------------------------------------------------------------------

ListPage = Callable[..., Awaitable[tuple[list[TaskRow], int]]]


def _order_key(row: TaskRow) -> tuple[float, str]:
    return row.created_at, row.id


async def newest_first(list_page: ListPage, after: TaskRow | None, want: int) -> list[TaskRow]:
    """Up to ``want`` tasks older than ``after`` (all when None), newest first."""
    end = after.created_at if after is not None else None
    rows: list[TaskRow] = []
    offset = 0
    while True:
        got, _ = await list_page(limit=want, offset=offset, end=end)
        rows += [r for r in got if after is None or _order_key(r) < _order_key(after)]
        offset += len(got)
        if len(rows) >= want or len(got) < want:
            return rows[:want]


async def oldest_first(list_page: ListPage, after: TaskRow | None, want: int) -> list[TaskRow]:
    """Up to ``want`` tasks newer than ``after`` (all when None), oldest first. The listing
    reads newest first: the page is the end of that order, located from its count (read
    again when a task came or went in between)."""
    start = after.created_at if after is not None else None
    extra = 0 if after is None else 1
    rows: list[TaskRow] = []
    for _ in range(8):
        _, total = await list_page(limit=1, offset=0, start=start)
        size = want + extra
        offset = max(0, total - size)
        got, again = await list_page(limit=size, offset=offset, start=start)
        if again != total:
            continue
        rows = [r for r in reversed(got) if after is None or _order_key(r) > _order_key(after)]
        if len(rows) >= want or offset == 0:
            break
        extra = extra * 2 + want  # tasks created at the cursor's very time: read further back
    return rows[:want]

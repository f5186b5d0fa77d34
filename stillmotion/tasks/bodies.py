"""The three body generations of a submit, read into one set of media (``tasks/validation.py``
does the rest of the body): which fields a model takes is the catalog's ``body``.

- ``legacy`` (Wan 2.1-2.6): ``input.img_url``, ``input.audio_url``, ``input.template``.
- ``media`` (Wan 2.7, 3.0): ``input.media[]`` of ``{"type", "url"}``, each type at most the
  catalog's count for the model; Wan 3.0's ``reference_*`` exclude ``first_frame`` and
  ``last_frame``.
- ``kf2v`` (first-and-last-frame models): ``input.first_frame_url``, ``input.last_frame_url``.

A field of another generation is refused with a 400 that names the field the model takes, as
upstream does (``Field required: input.media``). Images and audio may be ``data:`` URIs
(decoded later, in ``decode_media``); clips and references must be http(s) URLs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stillmotion.catalog import ModelSpec
from stillmotion.domain import (
    DRIVING_AUDIO,
    FIRST_CLIP,
    FIRST_FRAME,
    LAST_FRAME,
    REFERENCE_KINDS,
    MediaRef,
    Reference,
)
from stillmotion.errors import InvalidParameter

#: reads one image or audio field: (value, field name, pending key) -> where it comes from
ReadMedia = Callable[[Any, str, str], MediaRef]
ReadUrl = Callable[[Any, str], MediaRef]

_LEGACY = ("img_url", "audio_url", "template")
_KF2V = ("first_frame_url", "last_frame_url")


@dataclass
class Media:
    image: MediaRef | None = None
    last_frame: MediaRef | None = None
    audio_source: MediaRef | None = None
    first_clip: MediaRef | None = None
    references: list[Reference] = field(default_factory=list)
    template: str | None = None


def read_media(
    inp: dict[str, Any], spec: ModelSpec, image: ReadMedia, audio: ReadMedia, url: ReadUrl
) -> Media:
    """The media of ``inp`` for ``spec``'s body generation (or a 400 naming the field)."""
    if spec.body == "media":
        _refuse(inp, spec, (*_LEGACY, *_KF2V), "input.media")
        return _media_list(inp.get("media"), spec, image, audio, url)
    if spec.body == "kf2v":
        _refuse(inp, spec, (*_LEGACY, "media"), "input.first_frame_url")
        return Media(
            image=image(_required(inp, "first_frame_url"), "input.first_frame_url", "image"),
            last_frame=image(
                _required(inp, "last_frame_url"), "input.last_frame_url", "last_frame"
            ),
        )
    _refuse(inp, spec, ("media", *_KF2V), "input.img_url")
    found = Media(image=image(inp.get("img_url"), "input.img_url", "image"))
    if inp.get("audio_url") not in (None, ""):
        found.audio_source = audio(inp["audio_url"], "input.audio_url", "audio_source")
    found.template = _template(inp.get("template"), spec)
    return found


def _refuse(inp: dict[str, Any], spec: ModelSpec, fields: tuple[str, ...], wanted: str) -> None:
    for name in fields:
        if inp.get(name) not in (None, "", []):
            if name == "template":
                raise InvalidParameter(f"input.template is not supported by model {spec.name}.")
            raise InvalidParameter(
                f"input.{name} is not supported by model {spec.name}, which takes {wanted} "
                f"({_GENERATIONS[spec.body]}); see GET /v1/models."
            )


_GENERATIONS = {
    "legacy": "input.img_url, with input.audio_url and input.template",
    "media": 'input.media: a list of {"type": ..., "url": ...}',
    "kf2v": "input.first_frame_url and input.last_frame_url",
}


def _required(inp: dict[str, Any], name: str) -> Any:
    value = inp.get(name)
    if value in (None, ""):
        raise InvalidParameter(f"Field required: input.{name}")
    return value


def _template(value: Any, spec: ModelSpec) -> str | None:
    if value in (None, ""):
        return None
    if not spec.templates:
        raise InvalidParameter(f"input.template is not supported by model {spec.name}.")
    if not isinstance(value, str) or value not in spec.templates:
        allowed = ", ".join(spec.templates)
        raise InvalidParameter(
            f"input.template: {value!r} is not a template of {spec.name}; allowed values: "
            f"{allowed}."
        )
    return value


def _media_list(
    items: Any, spec: ModelSpec, image: ReadMedia, audio: ReadMedia, url: ReadUrl
) -> Media:
    if items in (None, []):
        raise InvalidParameter(f"Field required: input.media (model {spec.name})")
    if not isinstance(items, list):
        raise InvalidParameter('input.media must be a list of {"type": ..., "url": ...} objects.')
    counts: dict[str, int] = {}
    found = Media()
    for index, item in enumerate(items):
        where = f"input.media[{index}]"
        kind, value = _item(item, where, spec)
        counts[kind] = counts.get(kind, 0) + 1
        if counts[kind] > spec.media[kind]:
            raise InvalidParameter(
                f"{where}: {spec.name} takes at most {spec.media[kind]} media of type {kind!r}."
            )
        _put(found, kind, value, f"{where}.url", image, audio, url)
    _check_combination(found, spec)
    return found


def _item(item: Any, where: str, spec: ModelSpec) -> tuple[str, Any]:
    if not isinstance(item, dict):
        raise InvalidParameter(f'{where} must be an object {{"type": ..., "url": ...}}.')
    kind = item.get("type")
    if kind not in spec.media:
        allowed = ", ".join(spec.media)
        raise InvalidParameter(
            f"{where}.type: {kind!r} is not supported by {spec.name}; allowed values: {allowed}."
        )
    if item.get("url") in (None, ""):
        raise InvalidParameter(f"Field required: {where}.url")
    return str(kind), item["url"]


def _put(
    found: Media,
    kind: str,
    value: Any,
    where: str,
    image: ReadMedia,
    audio: ReadMedia,
    url: ReadUrl,
) -> None:
    if kind == FIRST_FRAME:
        found.image = image(value, where, "image")
    elif kind == LAST_FRAME:
        found.last_frame = image(value, where, "last_frame")
    elif kind == DRIVING_AUDIO:
        found.audio_source = audio(value, where, "audio_source")
    elif kind == FIRST_CLIP:
        found.first_clip = url(value, where)
    else:
        found.references.append(Reference(kind, url(value, where)))


def _check_combination(found: Media, spec: ModelSpec) -> None:
    frames = found.image is not None or found.last_frame is not None
    if found.references and frames:
        kinds = ", ".join(REFERENCE_KINDS)
        raise InvalidParameter(
            f"input.media: {kinds} cannot be combined with first_frame or last_frame ({spec.name})."
        )
    if found.first_clip is not None and found.image is not None:
        raise InvalidParameter(
            "input.media: a 'first_clip' (a clip to continue) cannot be combined with a "
            f"'first_frame' ({spec.name})."
        )
    if found.image is None and found.first_clip is None and not found.references:
        raise InvalidParameter(
            f"input.media: {spec.name} needs a media item of type 'first_frame' (the image to "
            "animate)."
        )
    if found.last_frame is not None and found.image is None:
        raise InvalidParameter("input.media: a 'last_frame' needs a 'first_frame' too.")

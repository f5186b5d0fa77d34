"""Engine registry: the built-ins plus any ``stillmotion.engines`` entry points.

Built-ins are listed the same way plugins are found (as ``module:attribute`` strings), so the
default engine always goes through the plugin path. A factory is called with keyword options
and returns an object following ``stillmotion.engines.base.Engine``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from stillmotion.domain import (
    DRIVING_AUDIO,
    FIRST_CLIP,
    FIRST_FRAME,
    LAST_FRAME,
    VideoRequest,
)
from stillmotion.engines.base import Engine
from stillmotion.errors import InvalidParameter, ServiceError

BUILTINS: Mapping[str, str] = {
    "motion": "stillmotion.engines.motion.engine:MotionEngine",
    "wan": "stillmotion.engines.wan.engine:WanEngine",
    "dashscope": "stillmotion.engines.dashscope.engine:DashScopeEngine",
    "openai-videos": "stillmotion.engines.openai_videos.engine:OpenAIVideosEngine",
}


class UnknownEngine(ServiceError):
    code = "ModelUnavailable"
    status = 503


def available() -> dict[str, str]:
    """Engine names to ``module:attribute`` targets."""
    found = dict(BUILTINS)
    for ep in entry_points(group="stillmotion.engines"):
        found.setdefault(ep.name, ep.value)
    return found


def load_factory(name: str) -> Any:
    target = available().get(name)
    if target is None:
        known = ", ".join(sorted(available()))
        raise UnknownEngine(f"unknown engine {name!r}; available engines: {known}")
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def create_engine(name: str, **options: Any) -> Engine:
    factory = load_factory(name)
    engine: Engine = factory(**options)
    return engine


def request_kinds(request: VideoRequest) -> list[str]:
    """The media kinds a request uses (``media[].type`` names), in a fixed order."""
    kinds = [FIRST_FRAME] if request.image is not None else []
    kinds += [LAST_FRAME] if request.last_frame is not None else []
    kinds += [DRIVING_AUDIO] if request.audio_source is not None else []
    kinds += [FIRST_CLIP] if request.first_clip is not None else []
    kinds += sorted({r.kind for r in request.references})
    return kinds


@functools.cache
def _capabilities(name: str) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    try:
        factory = load_factory(name)
    except ServiceError:  # an unknown engine fails the start, not a submit
        return None, None
    return getattr(factory, "media_kinds", None), getattr(factory, "templates", None)


def check_request(name: str, request: VideoRequest) -> None:
    """Refuse (``InvalidParameter``, at submit) what engine ``name`` cannot make: media kinds
    beyond its class's ``media_kinds``, a template outside its ``templates`` (either None:
    anything the catalog allows, as a relay passes it on)."""
    kinds, templates = _capabilities(name)
    if kinds is not None:
        for kind in request_kinds(request):
            if kind not in kinds:
                raise InvalidParameter(
                    f"media of type {kind!r} is not supported for model {request.model} on "
                    f"this service (engine {name}); it takes: {', '.join(sorted(kinds))}."
                )
        if FIRST_FRAME not in request_kinds(request) and FIRST_FRAME in kinds:
            raise InvalidParameter(
                f"model {request.model} on this service (engine {name}) needs a first frame."
            )
    if request.template is not None and templates is not None:
        if request.template not in templates:
            drawn = ", ".join(sorted(templates)) or "none"
            raise InvalidParameter(
                f"input.template: {request.template!r} is not supported for model "
                f"{request.model} on this service (engine {name}); supported templates: "
                f"{drawn}."
            )

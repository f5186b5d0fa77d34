"""Engine registry: the built-ins plus any ``stillmotion.engines`` entry points.

Built-ins are listed the same way plugins are found (as ``module:attribute`` strings), so the
default engine always goes through the plugin path. A factory is called with keyword options
and returns an object following ``stillmotion.engines.base.Engine``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from stillmotion.engines.base import Engine
from stillmotion.errors import ServiceError

BUILTINS: Mapping[str, str] = {
    "motion": "stillmotion.engines.motion:MotionEngine",
    "wan": "stillmotion.engines.wan:WanEngine",
    "dashscope": "stillmotion.engines.dashscope:DashScopeEngine",
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

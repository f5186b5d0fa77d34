"""The ``openai-videos`` model map: our model names to the upstream's model id, its frame
rate and the default extras sent with it.

Written as a TOML table or JSON object (``STILLMOTION_OPENAI_VIDEOS_MODEL_MAP``)::

    [openai_videos_model_map]
    "wan2.6-i2v" = { model = "Wan-AI/Wan2.2-I2V-A14B-Diffusers", fps = 16,
                     extras = { num_inference_steps = 40, guidance_scale = 3.5 } }

or, names only, ``wan2.6-i2v=Wan-AI/Wan2.2-I2V-A14B-Diffusers,...``. A model the map does
not name goes up without ``model`` (a vLLM-Omni or SGLang server runs the one model it was
started with) at the engine's default fps with no extras.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stillmotion.engines.relay.channels import parse_model_map as parse_names

ENTRY_FIELDS = frozenset({"model", "fps", "extras"})
#: extras that would overwrite what the request decides (size, length, seed, inputs)
RESERVED = frozenset(
    {"prompt", "size", "seconds", "width", "height", "num_frames", "seed", "negative_prompt"}
    | {"input_reference", "image_reference", "model", "fps"}
)


@dataclass(frozen=True)
class VideoModel:
    """What one of our models goes up as."""

    model: str | None = None  # None: the server's own model (no ``model`` field sent)
    fps: int | None = None  # None: the engine's default
    extras: Mapping[str, Any] = field(default_factory=dict)


def _entry(name: str, value: Any) -> VideoModel:
    if isinstance(value, str):
        return VideoModel(model=value.strip() or None)
    if not isinstance(value, Mapping):
        raise ValueError(
            f"model map entry {name!r}: a model id or a table of {sorted(ENTRY_FIELDS)}"
        )
    unknown = set(value) - ENTRY_FIELDS
    if unknown:
        raise ValueError(f"model map entry {name!r}: unknown field(s) {sorted(unknown)}")
    extras = value.get("extras") or {}
    if not isinstance(extras, Mapping):
        raise ValueError(f"model map entry {name!r}: extras must be a table")
    clash = RESERVED & set(extras)
    if clash:
        raise ValueError(f"model map entry {name!r}: extras may not set {sorted(clash)}")
    fps = value.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int) or fps < 1):
        raise ValueError(f"model map entry {name!r}: fps must be a positive integer")
    model = value.get("model")
    return VideoModel(model=str(model) if model else None, fps=fps, extras=dict(extras))


def parse_model_map(value: Any) -> dict[str, VideoModel]:
    """A model map from settings: a table/object, a JSON string of one, or
    ``OURS=UPSTREAM,...``; raises ``ValueError``."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        value = json.loads(text) if text.startswith("{") else parse_names(text)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("the model map must be a table of our model names")
    return {str(name): _entry(str(name), entry) for name, entry in value.items()}

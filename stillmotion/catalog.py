"""The model catalog: one table of per-model rules (contract section 3).

Validation, geometry, billing/usage and the engines read this table; nothing else in the
package hard-codes a model name. Imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

AudioMode = Literal["always", "optional", "never"]

#: Pixel area targets per resolution tier (contract 3.4).
TIERS: Mapping[str, tuple[int, int]] = {
    "480P": (832, 480),
    "720P": (1280, 720),
    "1080P": (1920, 1080),
}

SEED_MAX = 2_147_483_647
IMAGE_MIN_SIDE = 240
IMAGE_MAX_SIDE = 8000
IMAGE_MIMES = ("image/jpeg", "image/png", "image/bmp", "image/webp")
AUDIO_MIN_SECONDS = 3.0
AUDIO_MAX_SECONDS = 30.0
AUDIO_MAX_BYTES = 15 * 1024 * 1024
AUDIO_FORMATS = ("wav", "mp3")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "wan2.6" | "wan2.5": decides the usage shape
    resolutions: tuple[str, ...]
    default_resolution: str
    durations: tuple[int, ...]
    default_duration: int
    fps: int
    audio: AudioMode  # "optional": parameters.audio may switch it off
    shot_types: tuple[str, ...]
    prompt_max: int
    negative_prompt_max: int
    image_max_bytes: int
    #: CNY per output second, keyed by resolution (and by audio for optional-audio models)
    price_cny: Mapping[str, Decimal]
    price_cny_silent: Mapping[str, Decimal] | None = None
    description: str = ""

    def duration_rule(self) -> str:
        ds = self.durations
        if list(ds) == list(range(ds[0], ds[-1] + 1)) and len(ds) > 2:
            return f"an integer from {ds[0]} to {ds[-1]}"
        return " or ".join(str(d) for d in ds)

    def price_per_second(self, resolution: str, audio: bool) -> Decimal:
        table = self.price_cny if audio or self.price_cny_silent is None else self.price_cny_silent
        return table[resolution]

    def to_json(self) -> dict[str, Any]:
        """The public description served by the catalog endpoint."""
        return {
            "id": self.name,
            "family": self.family,
            "description": self.description,
            "resolutions": list(self.resolutions),
            "default_resolution": self.default_resolution,
            "durations": list(self.durations),
            "default_duration": self.default_duration,
            "fps": self.fps,
            "audio": self.audio,
            "shot_types": list(self.shot_types),
            "prompt_max": self.prompt_max,
            "negative_prompt_max": self.negative_prompt_max,
            "image_max_bytes": self.image_max_bytes,
            "tiers": {r: list(TIERS[r]) for r in self.resolutions},
        }


_MB = 1024 * 1024

MODELS: Mapping[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec(
            name="wan2.6-i2v-flash",
            family="wan2.6",
            resolutions=("720P", "1080P"),
            default_resolution="1080P",
            durations=tuple(range(2, 16)),
            default_duration=5,
            fps=30,
            audio="optional",
            shot_types=("single", "multi"),
            prompt_max=1500,
            negative_prompt_max=500,
            image_max_bytes=20 * _MB,
            price_cny={"720P": Decimal("0.3"), "1080P": Decimal("0.5")},
            price_cny_silent={"720P": Decimal("0.15"), "1080P": Decimal("0.25")},
            description="Wan 2.6 flash: with audio by default; audio=false gives silent video",
        ),
        ModelSpec(
            name="wan2.6-i2v",
            family="wan2.6",
            resolutions=("720P", "1080P"),
            default_resolution="1080P",
            durations=tuple(range(2, 16)),
            default_duration=5,
            fps=30,
            audio="always",
            shot_types=("single", "multi"),
            prompt_max=1500,
            negative_prompt_max=500,
            image_max_bytes=20 * _MB,
            price_cny={"720P": Decimal("0.6"), "1080P": Decimal("1.0")},
            description="Wan 2.6: always with audio; single or multi-shot",
        ),
        ModelSpec(
            name="wan2.5-i2v-preview",
            family="wan2.5",
            resolutions=("480P", "720P", "1080P"),
            default_resolution="1080P",
            durations=(5, 10),
            default_duration=5,
            fps=30,
            audio="always",
            shot_types=(),
            prompt_max=1500,
            negative_prompt_max=500,
            image_max_bytes=20 * _MB,
            price_cny={"480P": Decimal("0.3"), "720P": Decimal("0.6"), "1080P": Decimal("1.0")},
            description="Wan 2.5 preview: 5 or 10 s, always with audio",
        ),
    )
}


def get_model(name: str) -> ModelSpec | None:
    return MODELS.get(name)


def model_names() -> list[str]:
    return list(MODELS)


def usage_for(spec: ModelSpec, resolution: str, duration: int, audio: bool) -> dict[str, Any]:
    """The ``usage`` object in the model family's shape (contract 2.6)."""
    sr = int(resolution.rstrip("P"))
    if spec.family == "wan2.6":
        usage: dict[str, Any] = {
            "duration": duration,
            "input_video_duration": 0,
            "output_video_duration": duration,
            "SR": sr,
            "video_count": 1,
        }
        if spec.audio == "optional":
            usage["audio"] = audio
        return usage
    return {"duration": duration, "SR": sr, "video_count": 1}

"""The model catalog: per-model rules (contract section 3) as data.

The rules live in ``models.toml`` beside this module; an operator adds or overrides models
with ``[[models]]`` tables in the TOML config (:func:`install`). Validation, geometry,
billing/usage and the engines read :data:`MODELS`; nothing else in the package hard-codes a
model name. Imports nothing of ours.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any, Literal, get_args

AudioMode = Literal["always", "optional", "never"]
BodyKind = Literal["legacy", "media", "kf2v"]
UsageShape = Literal["wan2.6", "sr", "ratio"]
#: ``media[].type`` values a model may declare (Wan 2.7 / 3.0)
MEDIA_TYPES = (
    *("first_frame", "last_frame", "driving_audio", "first_clip"),
    *("reference_image", "reference_video", "reference_audio"),
)

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
    body: BodyKind = "legacy"
    usage: UsageShape = "wan2.6"
    #: media[] types the model takes and the most of each (``body = "media"``)
    media: Mapping[str, int] = field(default_factory=dict)
    templates: tuple[str, ...] = ()  # input.template values (legacy body)
    #: parameters outside the contract that the model takes: passed through to an upstream
    extra_parameters: tuple[str, ...] = ()

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
            "body": self.body,
            "usage": self.usage,
            "media": dict(self.media),
            "templates": list(self.templates),
            "extra_parameters": list(self.extra_parameters),
        }


_MB = 1024 * 1024
_REQUIRED = ("family", "resolutions", "default_resolution", "durations", "default_duration")
_FIELDS = {
    *_REQUIRED, "name", "base", "description", "body", "usage", "fps", "audio", "shot_types",
    "prompt_max", "negative_prompt_max", "image_max_mb", "price_cny", "price_cny_silent",
    "media", "templates", "extra_parameters",
}  # fmt: skip


class CatalogError(ValueError):
    """A model table that cannot be used; the message names the model and the field."""


def _choice(name: str, key: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = tuple(allowed)
    if value not in allowed:
        raise CatalogError(f"model {name!r}: {key} must be one of {list(allowed)}, not {value!r}")
    return value


def _strings(name: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CatalogError(f"model {name!r}: {key} must be a list of strings")
    return tuple(value)


def _int(name: str, key: str, value: Any, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise CatalogError(f"model {name!r}: {key} must be an integer >= {low}")
    return value


def _durations(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, dict) and set(value) == {"min", "max"}:
        low, high = (
            _int(name, "durations.min", value["min"]),
            _int(name, "durations.max", value["max"]),
        )
        if high < low:
            raise CatalogError(f"model {name!r}: durations.max is below durations.min")
        return tuple(range(low, high + 1))
    if isinstance(value, list) and value:
        return tuple(sorted({_int(name, "durations", v) for v in value}))
    raise CatalogError(f"model {name!r}: durations must be a list of seconds or {{min, max}}")


def _prices(name: str, key: str, value: Any, resolutions: tuple[str, ...]) -> dict[str, Decimal]:
    if not isinstance(value, dict) or set(value) != set(resolutions):
        raise CatalogError(
            f"model {name!r}: {key} must give a price for each of {list(resolutions)}"
        )
    out = {}
    for tier, price in value.items():
        try:
            amount = Decimal(str(price))
        except InvalidOperation:
            amount = Decimal(-1)
        if isinstance(price, bool) or not amount.is_finite() or amount < 0:
            raise CatalogError(f"model {name!r}: {key}.{tier} must be a price >= 0, not {price!r}")
        out[tier] = amount
    return out


def _media(name: str, value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise CatalogError(f"model {name!r}: media must be a table of type = most")
    for kind in value:
        _choice(name, "media type", kind, MEDIA_TYPES)
    return {kind: _int(name, f"media.{kind}", most) for kind, most in value.items()}


def spec_from_table(table: Mapping[str, Any]) -> ModelSpec:
    """One ``[[models]]`` table (its ``base`` already merged in) as a :class:`ModelSpec`."""
    name = table.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise CatalogError("every model needs a name (a string of at most 100 characters)")
    unknown = set(table) - _FIELDS
    if unknown:
        raise CatalogError(f"model {name!r}: unknown field(s) {sorted(unknown)}")
    missing = [key for key in _REQUIRED if key not in table]
    if missing:
        raise CatalogError(f"model {name!r}: missing field(s) {missing}")
    resolutions = _strings(name, "resolutions", table["resolutions"])
    for tier in resolutions:
        _choice(name, "resolutions", tier, TIERS)
    durations = _durations(name, table["durations"])
    body = _choice(name, "body", table.get("body", "legacy"), get_args(BodyKind))
    media = _media(name, table.get("media", {}))
    if body == "media" and "first_frame" not in media:
        raise CatalogError(f"model {name!r}: a media-body model must take media.first_frame")
    silent = table.get("price_cny_silent")
    silent_prices = (
        None if silent is None else _prices(name, "price_cny_silent", silent, resolutions)
    )
    default_res = _choice(name, "default_resolution", table["default_resolution"], resolutions)
    negative_max = _int(name, "negative_prompt_max", table.get("negative_prompt_max", 500))
    return ModelSpec(
        name=name,
        family=str(table["family"]),
        resolutions=resolutions,
        default_resolution=default_res,
        durations=durations,
        default_duration=_choice(name, "default_duration", table["default_duration"], durations),
        fps=_int(name, "fps", table.get("fps", 30)),
        audio=_choice(name, "audio", table.get("audio", "never"), get_args(AudioMode)),
        shot_types=_strings(name, "shot_types", table.get("shot_types", [])),
        prompt_max=_int(name, "prompt_max", table.get("prompt_max", 1500)),
        negative_prompt_max=negative_max,
        image_max_bytes=_int(name, "image_max_mb", table.get("image_max_mb", 10)) * _MB,
        price_cny=_prices(name, "price_cny", table.get("price_cny"), resolutions),
        price_cny_silent=silent_prices,
        description=str(table.get("description", "")),
        body=body,
        usage=_choice(name, "usage", table.get("usage", "wan2.6"), get_args(UsageShape)),
        media=media,
        templates=_strings(name, "templates", table.get("templates", [])),
        extra_parameters=_strings(name, "extra_parameters", table.get("extra_parameters", [])),
    )  # fmt: skip


def build(
    tables: Iterable[Mapping[str, Any]], known: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Merge ``tables`` into ``known`` (name -> merged table): a table of a known name
    overrides it field by field; ``base = "<name>"`` starts from another model's table."""
    merged = {name: dict(table) for name, table in known.items()}
    for table in tables:
        if not isinstance(table, Mapping):
            raise CatalogError("each [[models]] entry must be a table")
        name = table.get("name")
        start: dict[str, Any] = dict(merged.get(str(name), {}))
        base = table.get("base")
        if base is not None:
            if base not in merged:
                raise CatalogError(f"model {name!r}: base {base!r} is not a model defined above it")
            start = dict(merged[base])
        start.update({k: v for k, v in table.items() if k != "base"})
        merged[str(name)] = start
    return merged


def _shipped_tables() -> dict[str, dict[str, Any]]:
    text = resources.files("stillmotion").joinpath("models.toml").read_text(encoding="utf-8")
    return build(tomllib.loads(text)["models"], {})


_SHIPPED = _shipped_tables()


def load(extra: Iterable[Mapping[str, Any]] = ()) -> dict[str, ModelSpec]:
    """The shipped models with ``extra`` (the config's ``[[models]]``) merged in, checked."""
    return {name: spec_from_table(table) for name, table in build(extra, _SHIPPED).items()}


#: The catalog in use: the shipped models, plus the config's once :func:`install` ran. One
#: dict, updated in place, so every module that imported it sees the installed one.
MODELS: dict[str, ModelSpec] = load()
SHIPPED_NAMES = tuple(MODELS)


def install(extra: Iterable[Mapping[str, Any]] = ()) -> dict[str, ModelSpec]:
    """Make the shipped models plus ``extra`` the catalog in use (checked first: a bad table
    raises :class:`CatalogError` and changes nothing)."""
    models = load(extra)
    MODELS.clear()
    MODELS.update(models)
    return MODELS


def get_model(name: str) -> ModelSpec | None:
    return MODELS.get(name)


def model_names() -> list[str]:
    return list(MODELS)


def usage_for(
    spec: ModelSpec,
    resolution: str,
    duration: int,
    audio: bool,
    size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The ``usage`` object in the model's shape (contract 2.6); ``size``: the output's
    width and height (the ``ratio`` shape's ``video_ratio``; the tier's when unknown)."""
    sr = int(resolution.rstrip("P"))
    if spec.usage == "wan2.6":
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
    if spec.usage == "ratio":
        width, height = size or TIERS[resolution]
        return {"video_duration": duration, "video_ratio": f"{width}*{height}", "video_count": 1}
    return {"duration": duration, "SR": sr, "video_count": 1}

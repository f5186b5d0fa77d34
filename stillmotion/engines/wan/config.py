"""Configuration of the ``wan`` engine, checked without importing torch.

What lives here: the three supported Wan families and their official defaults, the engine's
options, the start-up checks (is the ``wan`` extra installed, is the weights directory
complete, which family is it) and the request-to-call arithmetic (output size, frame count,
flow shift). Everything is plain Python so that ``stillmotion serve`` can validate a route
to ``wan`` in milliseconds and the API process never loads torch.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stillmotion.errors import ModelUnavailable

FAMILY_21 = "wan2.1-i2v-14b"
FAMILY_A14B = "wan2.2-i2v-a14b"
FAMILY_5B = "wan2.2-ti2v-5b"
DTYPES = ("bfloat16", "float16", "float32")
OFFLOAD_MODES = ("none", "model", "group")
#: Python modules the engine imports on first use, and the pip names that provide them.
REQUIRED_MODULES = {
    "torch": "torch",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "ftfy": "ftfy",
}
#: Pixel area of the 480P tier; Wan 2.1 uses a lower flow shift up to it.
AREA_480P = 832 * 480


class WanSetupError(ModelUnavailable):
    """The ``wan`` engine cannot start: extra missing, weights missing or incomplete."""


@dataclass(frozen=True)
class Family:
    """One Wan image-to-video family and its official sampling defaults."""

    name: str
    label: str
    hub_id: str
    fps: int
    steps: int
    guidance: float
    guidance_2: float | None  # the low-noise expert's guidance (A14B only)
    flow_shift: float
    flow_shift_480p: float
    multiple: int  # output sides are multiples of this
    components: tuple[str, ...]


_BASE = ("tokenizer", "text_encoder", "vae", "scheduler", "transformer")

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name=FAMILY_21,
            label="Wan 2.1 I2V-14B",
            hub_id="Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
            fps=16,
            steps=40,
            guidance=5.0,
            guidance_2=None,
            flow_shift=5.0,
            flow_shift_480p=3.0,
            multiple=16,
            components=(*_BASE, "image_encoder", "image_processor"),
        ),
        Family(
            name=FAMILY_A14B,
            label="Wan 2.2 I2V-A14B",
            hub_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers",
            fps=16,
            steps=40,
            guidance=3.5,
            guidance_2=3.5,
            flow_shift=5.0,
            flow_shift_480p=5.0,
            multiple=16,
            components=(*_BASE, "transformer_2"),
        ),
        Family(
            name=FAMILY_5B,
            label="Wan 2.2 TI2V-5B",
            hub_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
            fps=24,
            steps=50,
            guidance=5.0,
            guidance_2=None,
            flow_shift=5.0,
            flow_shift_480p=5.0,
            multiple=32,
            components=_BASE,
        ),
    )
}


@dataclass(frozen=True)
class WanOptions:
    """The engine's settings (``STILLMOTION_WAN_*``); ``None`` means the family default."""

    weights_dir: Path | None = None
    family: str = "auto"
    steps: int | None = None
    guidance: float | None = None
    guidance_2: float | None = None
    flow_shift: float | None = None
    dtype: str = "bfloat16"
    offload: str = "none"
    attention: str | None = None
    device: str = "auto"
    max_area: int | None = None
    compile: bool = False

    def validate(self) -> None:
        if self.family != "auto" and self.family not in FAMILIES:
            raise WanSetupError(f"wan engine: unknown family {self.family!r} ({_choices()})")
        if self.dtype not in DTYPES:
            raise WanSetupError(f"wan engine: dtype must be one of {', '.join(DTYPES)}")
        if self.offload not in OFFLOAD_MODES:
            raise WanSetupError(f"wan engine: offload must be one of {', '.join(OFFLOAD_MODES)}")
        if self.steps is not None and self.steps < 1:
            raise WanSetupError("wan engine: steps must be at least 1")
        if self.max_area is not None and self.max_area < 16 * 16:
            raise WanSetupError("wan engine: max_area must be at least 256 pixels")
        if self.attention and self.attention.endswith("_hub"):
            raise WanSetupError(
                f"wan engine: attention backend {self.attention!r} downloads kernels from the "
                "Hugging Face Hub at run time; choose a local one (native, _native_cudnn, "
                "_native_flash, flash, _flash_3, sage, xformers)"
            )


def _choices() -> str:
    return ", ".join(["auto", *FAMILIES])


# -- start-up checks ----------------------------------------------------------------------


def check_extra() -> None:
    """Fail with what to install when a module of the ``wan`` extra is missing."""
    missing = [
        pip for mod, pip in REQUIRED_MODULES.items() if importlib.util.find_spec(mod) is None
    ]
    if missing:
        raise WanSetupError(
            f"wan engine: the `wan` extra is not installed (missing: {', '.join(missing)}). "
            "Install it with `pip install 'stillmotion[wan]'` (see docs/wan.md)."
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _listed(index: dict[str, Any], name: str) -> bool:
    """Whether ``model_index.json`` names a real class for component ``name``."""
    value = index.get(name)
    return isinstance(value, list) and len(value) == 2 and value[1] is not None


def detect_family(root: Path) -> str | None:
    """The family of the diffusers-format weights in ``root``, from their configs."""
    index = _read_json(root / "model_index.json")
    transformer = _read_json(root / "transformer" / "config.json")
    vae = _read_json(root / "vae" / "config.json")
    if _listed(index, "transformer_2"):
        return FAMILY_A14B
    if (
        index.get("expand_timesteps") is True
        or transformer.get("in_channels") == 48
        or vae.get("z_dim") == 48
    ):
        return FAMILY_5B
    if _listed(index, "image_encoder") or transformer.get("image_dim") is not None:
        return FAMILY_21
    return None


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_CONFIG_FILES = {
    "scheduler": ("scheduler_config.json",),
    "image_processor": ("preprocessor_config.json",),
    "tokenizer": ("tokenizer_config.json",),
}


def _missing_weights(folder: Path) -> list[str]:
    """Weight files a model folder lacks: all of them, or the shards its index names."""
    indexes = sorted(folder.glob("*.index.json"))
    if indexes:
        shards = _read_json(indexes[0]).get("weight_map", {})
        names = sorted(set(shards.values())) if isinstance(shards, dict) else []
        return [n for n in names if not (folder / n).is_file()]
    if any(p.suffix in _WEIGHT_SUFFIXES for p in folder.iterdir() if p.is_file()):
        return []
    return ["*.safetensors"]


def missing_files(root: Path, family: Family) -> list[str]:
    """Paths (relative to ``root``) the pipeline of ``family`` needs and ``root`` lacks."""
    out: list[str] = []
    for name in family.components:
        folder = root / name
        if name in _CONFIG_FILES:  # no weights: a config (and the tokenizer's vocabulary)
            out += [f"{name}/{c}" for c in _CONFIG_FILES[name] if not (folder / c).is_file()]
            vocab = ("tokenizer.json", "spiece.model")
            if name == "tokenizer" and not any((folder / f).is_file() for f in vocab):
                out.append("tokenizer/tokenizer.json (or spiece.model)")
            continue
        if not (folder / "config.json").is_file():
            out.append(f"{name}/config.json")
        weights = _missing_weights(folder) if folder.is_dir() else ["*.safetensors"]
        out += [f"{name}/{w}" for w in weights]
    return out


def _where(root: Path | None, family: Family | None) -> str:
    hub = family.hub_id if family else "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
    target = root or Path("/path/to/weights")
    return (
        f"download the diffusers-format weights, e.g. `hf download {hub} --local-dir {target}`, "
        "and point STILLMOTION_WAN_WEIGHTS_DIR at that directory (docs/wan.md)"
    )


def resolve_family(root: Path | None, configured: str = "auto") -> Family:
    """Check the weights directory and return its family; raise a clear error otherwise."""
    wanted = FAMILIES.get(configured)
    if root is None:
        raise WanSetupError(
            f"wan engine: STILLMOTION_WAN_WEIGHTS_DIR is not set: {_where(root, wanted)}"
        )
    if not root.is_dir():
        raise WanSetupError(
            f"wan engine: the weights directory {root} does not exist: {_where(root, wanted)}"
        )
    if not (root / "model_index.json").is_file():
        raise WanSetupError(
            f"wan engine: {root} has no model_index.json, so it is not a diffusers-format "
            f"pipeline: {_where(root, wanted)}"
        )
    found = detect_family(root)
    if wanted is not None and found is not None and found != wanted.name:
        raise WanSetupError(
            f"wan engine: STILLMOTION_WAN_FAMILY={wanted.name} but the weights in {root} are "
            f"{FAMILIES[found].label} ({found})"
        )
    family = wanted or (FAMILIES[found] if found else None)
    if family is None:
        raise WanSetupError(
            f"wan engine: cannot tell which Wan image-to-video family the weights in {root} are "
            f"(no transformer_2, image encoder or 48-channel transformer found); set "
            f"STILLMOTION_WAN_FAMILY to one of {', '.join(FAMILIES)}"
        )
    missing = missing_files(root, family)
    if missing:
        raise WanSetupError(
            f"wan engine: the {family.label} weights in {root} are incomplete, missing: "
            f"{', '.join(missing)}; {_where(root, family)}"
        )
    return family


# -- request arithmetic -------------------------------------------------------------------


def wan_size(
    width: int, height: int, multiple: int, max_area: int | None = None
) -> tuple[int, int]:
    """The core's output size floored to ``multiple``, scaled down first to ``max_area``."""
    w, h = float(width), float(height)
    if max_area is not None and w * h > max_area:
        scale = math.sqrt(max_area / (w * h))
        w, h = w * scale, h * scale
    return max(multiple, int(w // multiple) * multiple), max(
        multiple, int(h // multiple) * multiple
    )


def wan_num_frames(duration: float, fps: int) -> int:
    """The ``4k + 1`` frame count nearest to ``duration * fps`` (at least 5)."""
    k = round((duration * fps - 1) / 4)
    return 4 * max(1, k) + 1


def flow_shift_for(family: Family, width: int, height: int, configured: float | None) -> float:
    """The configured shift, or the family's official one for this output size."""
    if configured is not None:
        return configured
    return family.flow_shift_480p if width * height <= AREA_480P else family.flow_shift

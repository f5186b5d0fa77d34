"""Load a Wan pipeline from local diffusers-format weights and run it, step by step.

Everything here runs on the ``wan`` engine's one worker thread, never on the event loop.
torch, diffusers and transformers are imported inside the functions: importing this module
costs nothing, so the API process can create the engine without loading torch.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from stillmotion.engines.wan.config import FAMILY_21, Family, WanOptions

log = logging.getLogger("stillmotion.engines.wan")

#: Called after each denoising step with the number of steps done; raising stops the call.
StepFn = Callable[[int], None]


class Interrupted(Exception):
    """Raised from the step callback when the task was canceled: skips the VAE decode."""


@dataclass
class Loaded:
    """A ready pipeline and where it computes."""

    pipe: Any
    device: str
    schedulers: dict[float, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CallArgs:
    """One generation: everything ``WanImageToVideoPipeline.__call__`` gets."""

    image: Image.Image
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    steps: int
    guidance: float
    guidance_2: float | None
    flow_shift: float
    seed: int


def _version(dist: str) -> tuple[int, ...]:
    parts = importlib.metadata.version(dist).split(".")[:2]
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts)


def _dtype_key() -> str:
    """diffusers 0.40 renamed ``torch_dtype`` to ``dtype`` (the old name warns)."""
    return "dtype" if _version("diffusers") >= (0, 40) else "torch_dtype"


def resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(options: WanOptions, family: Family) -> Loaded:
    """Load the pipeline once: main weights in ``options.dtype``, the VAE (and CLIP) in fp32."""
    import torch
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline

    assert options.weights_dir is not None
    root = str(options.weights_dir)
    key = _dtype_key()
    fp32 = {key: torch.float32, "local_files_only": True}
    parts: dict[str, Any] = {
        "vae": AutoencoderKLWan.from_pretrained(root, subfolder="vae", **fp32),
    }
    if family.name == FAMILY_21:
        from transformers import CLIPVisionModel

        parts["image_encoder"] = CLIPVisionModel.from_pretrained(
            root, subfolder="image_encoder", dtype=torch.float32, local_files_only=True
        )
    dtype = getattr(torch, options.dtype)
    pipe = WanImageToVideoPipeline.from_pretrained(
        root, **parts, **{key: dtype}, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    device = resolve_device(options.device)
    place(pipe, options.offload, device)
    if options.attention:
        for model in _transformers(pipe):
            model.set_attention_backend(options.attention)
    if options.compile:
        for model in _transformers(pipe):
            model.compile_repeated_blocks(fullgraph=True)
    log.info("loaded %s from %s on %s (%s)", family.label, root, device, options.dtype)
    return Loaded(pipe=pipe, device=device)


def _transformers(pipe: Any) -> list[Any]:
    return [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]


def place(pipe: Any, offload: str, device: str) -> None:
    """Put the pipeline on ``device``: whole, per model in turn, or in groups of layers."""
    import torch

    if offload == "none" or device == "cpu":
        pipe.to(device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        from diffusers.hooks import apply_group_offloading

        target = torch.device(device)
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                apply_group_offloading(
                    component,
                    onload_device=target,
                    offload_device=torch.device("cpu"),
                    offload_type="leaf_level",
                    use_stream=target.type == "cuda",
                )


def _scheduler(loaded: Loaded, shift: float) -> Any:
    """The pipeline's scheduler with flow shift ``shift`` (made once per shift value)."""
    pipe = loaded.pipe
    if shift not in loaded.schedulers:
        config = pipe.scheduler.config
        name = "flow_shift" if "flow_shift" in config else "shift"
        loaded.schedulers[shift] = type(pipe.scheduler).from_config(config, **{name: shift})
    return loaded.schedulers[shift]


def generate_frames(loaded: Loaded, args: CallArgs, on_step: StepFn) -> np.ndarray:
    """Run the pipeline; ``frames x height x width x 3`` uint8 RGB.

    ``on_step`` is called after every denoising step; when it raises :class:`Interrupted`
    the pipeline's ``_interrupt`` flag is set and the call stops before the VAE decode.
    """
    import torch

    pipe = loaded.pipe
    pipe.scheduler = _scheduler(loaded, args.flow_shift)

    def callback(p: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        try:
            on_step(step + 1)
        except Interrupted:
            p._interrupt = True
            raise
        return tensors

    extra = {"guidance_scale_2": args.guidance_2} if args.guidance_2 is not None else {}
    with torch.inference_mode():
        out = pipe(
            image=args.image,
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            height=args.height,
            width=args.width,
            num_frames=args.num_frames,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=torch.Generator("cpu").manual_seed(args.seed),
            output_type="np",
            callback_on_step_end=callback,
            **extra,
        )
    frames = np.asarray(out.frames[0], dtype=np.float32)
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def release(loaded: Loaded | None) -> None:
    """Drop the pipeline and give its GPU memory back."""
    if loaded is None:
        return
    loaded.pipe = None
    loaded.schedulers.clear()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

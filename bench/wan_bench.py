"""Wan 2.2 I2V-A14B and TI2V-5B step and VAE timings: plain diffusers vs exact speed-ups.

    python bench/wan_bench.py                      # GPU: both families at 480P and 720P
    python bench/wan_bench.py --family 5b --res 720P
    python bench/wan_bench.py --smoke              # 1 layer, 64x64, 5 frames (also on CPU)

No weights are needed: real-size models are made on the meta device, moved with
``to_empty``, filled with random values and their RoPE buffers re-created (research notes
3.4); the text embeddings are random too (the text encoder is not timed). bf16 weights, the
VAE in fp32, as the ``wan`` engine runs them. Per configuration, in one process:

- plain: ``WanImageToVideoPipeline.__call__`` itself (default attention, eager, the two CFG
  passes as two transformer calls); s/step from ``callback_on_step_end`` timestamps after
  one warm-up call per expert; its first step also covers the VAE encode of the input;
- fast: the same transformer(s) with exact speed-ups only: a fused attention kernel
  (cuDNN SDPA, ``_native_cudnn``), both CFG passes batched in one call, and regional
  ``torch.compile`` (``compile_repeated_blocks``); the output is checked against plain;
- VAE decode of the whole video, fp32.

Prints s/step, the projected s/video (encode + official steps x s/step + decode), peak
memory and the plain/fast ratio. Without a GPU (or with ``--smoke``) it runs the smallest
configuration on the CPU: a check that the code works, not a measurement.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanTransformer3DModel,
)
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stillmotion.testing.tiny_wan import tiny_tokenizer  # noqa: E402

_DIT: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "attention_head_dim": 128,
    "freq_dim": 256,
    "text_dim": 4096,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
_VAE22: dict[str, Any] = {
    "base_dim": 160,
    "decoder_base_dim": 256,
    "z_dim": 48,
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_spatial": 16,
    "scale_factor_temporal": 4,
    "latents_mean": [0.0] * 48,
    "latents_std": [1.0] * 48,
}


@dataclass(frozen=True)
class Config:
    label: str
    dit: dict[str, Any]
    experts: int
    vae: dict[str, Any]
    expand: bool
    frames: int
    steps: int
    guidance: float
    sizes: dict[str, tuple[int, int]]


CONFIGS = {
    "a14b": Config(
        label="Wan 2.2 I2V-A14B",
        dit={
            "num_attention_heads": 40,
            "ffn_dim": 13824,
            "num_layers": 40,
            "in_channels": 36,
            "out_channels": 16,
            **_DIT,
        },
        experts=2,
        vae={},
        expand=False,
        frames=81,
        steps=40,
        guidance=3.5,
        sizes={"480P": (832, 480), "720P": (1280, 720)},
    ),
    "5b": Config(
        label="Wan 2.2 TI2V-5B",
        dit={
            "num_attention_heads": 24,
            "ffn_dim": 14336,
            "num_layers": 30,
            "in_channels": 48,
            "out_channels": 48,
            **_DIT,
        },
        experts=1,
        vae=_VAE22,
        expand=True,
        frames=121,
        steps=50,
        guidance=5.0,
        sizes={"480P": (832, 480), "720P": (1280, 704)},
    ),
}
SMOKE_SIZE, SMOKE_FRAMES = (64, 64), 5


# -- building real-size random models -----------------------------------------------------


def random_transformer(cfg: dict[str, Any], device: str, dtype: torch.dtype) -> Any:
    """A ``WanTransformer3DModel`` of config ``cfg`` with random weights, without ever
    allocating it in fp32: meta device, ``to_empty``, fill, re-create the RoPE buffers."""
    with torch.device("meta"):
        model: Any = WanTransformer3DModel(**cfg)
    keep = set(model._keep_in_fp32_modules or [])
    for name, param in model.named_parameters():  # as from_pretrained(dtype=bf16) does
        fp32 = bool(keep & set(name.split(".")))
        param.data = param.data.to(torch.float32 if fp32 else dtype)
    model = model.to_empty(device=device)
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, 0.02, generator=gen)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
    model.rope = WanRotaryPosEmbed(cfg["attention_head_dim"], cfg["patch_size"], 1024).to(device)
    return model.eval().requires_grad_(False)


def random_vae(cfg: dict[str, Any], device: str) -> Any:
    with torch.device(device):
        vae: Any = AutoencoderKLWan(**cfg)
    return vae.eval().requires_grad_(False)


# -- timing helpers -----------------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    """Peak GPU memory since the last reset, or the process's peak RSS so far on the CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(device: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


@dataclass
class Shapes:
    """Latent shapes for one configuration and size."""

    latent: tuple[int, int, int, int, int]  # noise latents (B, C, F, H, W)
    model_in: tuple[int, int, int, int, int]  # what the transformer gets
    tokens: int


def shapes(config: Config, vae: Any, width: int, height: int, frames: int) -> Shapes:
    s, z = vae.config.scale_factor_spatial, vae.config.z_dim
    f = (frames - 1) // 4 + 1
    h, w = height // s, width // s
    c_in = config.dit["in_channels"]
    return Shapes((1, z, f, h, w), (1, c_in, f, h, w), f * (h // 2) * (w // 2))


def model_inputs(config: Config, sh: Shapes, batch: int, device: str) -> dict[str, Any]:
    """Random transformer inputs for ``batch`` (2: both CFG passes)."""
    gen = torch.Generator(device).manual_seed(1)
    x = torch.randn((batch, *sh.model_in[1:]), generator=gen, device=device).bfloat16()
    text = torch.randn((batch, 512, 4096), generator=gen, device=device).bfloat16()
    if config.expand:  # per-token timesteps; the first latent frame stays at 0
        _, _, f, h, w = sh.model_in
        t = torch.full((batch, f, h // 2, w // 2), 900.0, device=device)
        t[:, 0] = 0.0
        timestep = t.flatten(1)
    else:
        timestep = torch.full((batch,), 900.0, device=device)
    return {"hidden_states": x, "timestep": timestep, "encoder_hidden_states": text}


# -- the three measurements ---------------------------------------------------------------


def run_plain(
    config: Config, pipe: Any, size: tuple[int, int], frames: int, steps: int, device: str
) -> dict[str, float]:
    """The diffusers pipeline as shipped: s/step from step-end timestamps."""
    width, height = size
    gen = torch.Generator(device).manual_seed(2)
    text = torch.randn((2, 1, 512, 4096), generator=gen, device=device).bfloat16()
    marks: list[float] = []

    def on_step(p: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        sync(device)
        marks.append(time.perf_counter())
        return kw

    extra = {"guidance_scale_2": config.guidance} if config.experts == 2 else {}
    reset_peak(device)
    start = time.perf_counter()
    with torch.inference_mode():
        pipe(
            image=Image.new("RGB", size, (120, 140, 160)),
            prompt_embeds=text[0],
            negative_prompt_embeds=text[1],
            height=height,
            width=width,
            num_frames=frames,
            num_inference_steps=steps,
            guidance_scale=config.guidance,
            output_type="latent",
            callback_on_step_end=on_step,
            **extra,
        )
    per_step = (marks[-1] - marks[0]) / (len(marks) - 1)
    encode = max(0.0, marks[0] - start - per_step)
    return {"step": per_step, "encode": encode, "peak": peak_gib(device)}


def run_fast(
    config: Config,
    experts: list[Any],
    sh: Shapes,
    steps: int,
    device: str,
    attention: str,
    compile_blocks: bool,
) -> dict[str, float]:
    """Exact speed-ups on the same transformers; returns s/step, error vs plain, peak."""
    inputs = model_inputs(config, sh, 2, device)
    model = experts[0]
    with torch.inference_mode():
        halves = [{k: v[i : i + 1] for k, v in inputs.items()} for i in (0, 1)]
        ref = torch.cat([model(**h, return_dict=False)[0] for h in halves])
        for m in experts:
            m.set_attention_backend(attention)
            if compile_blocks:
                m.compile_repeated_blocks(fullgraph=True)
        reset_peak(device)
        warm, out = timed(device, lambda: model(**inputs, return_dict=False)[0])  # compiles
        error = float((out.float() - ref.float()).abs().max() / ref.float().abs().max())
        latents = torch.zeros(sh.latent, device=device, dtype=torch.float32)

        def step() -> None:
            noise = model(**inputs, return_dict=False)[0].float()
            cond, uncond = noise.chunk(2)
            latents.add_(uncond + config.guidance * (cond - uncond), alpha=-0.02)

        def run() -> None:
            for _ in range(steps):
                step()

        seconds, _ = timed(device, run)
    return {"step": seconds / steps, "warm": warm, "error": error, "peak": peak_gib(device)}


def run_decode(vae: Any, sh: Shapes, device: str) -> dict[str, float]:
    z = torch.randn(sh.latent, device=device)
    with torch.inference_mode():
        vae.decode(z[:, :, :2], return_dict=False)  # warm-up on two latent frames
        reset_peak(device)
        seconds, _ = timed(device, lambda: vae.decode(z, return_dict=False))
    return {"decode": seconds, "peak": peak_gib(device)}


# -- one configuration --------------------------------------------------------------------


def build(config: Config, device: str, layers: int | None) -> tuple[Any, list[Any]]:
    dit = {**config.dit, **({"num_layers": layers} if layers else {})}
    experts = [random_transformer(dit, device, torch.bfloat16) for _ in range(config.experts)]
    tokenizer, _ = tiny_tokenizer()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    )
    pipe: Any = WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=None,
        vae=random_vae(config.vae, device),
        scheduler=scheduler,
        transformer=experts[0],
        transformer_2=experts[1] if len(experts) > 1 else None,
        boundary_ratio=0.9 if len(experts) > 1 else None,
        expand_timesteps=config.expand,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, experts


def bench_one(config: Config, res: str, args: argparse.Namespace, device: str) -> None:
    size = SMOKE_SIZE if args.smoke else config.sizes[res]
    frames = SMOKE_FRAMES if args.smoke else config.frames
    pipe, experts = build(config, device, 1 if args.smoke else None)
    sh = shapes(config, pipe.vae, size[0], size[1], frames)
    with torch.inference_mode():  # first-call costs of every expert, outside the timings
        for m in experts:
            m(**model_inputs(config, sh, 1, device), return_dict=False)
    plain = run_plain(config, pipe, size, frames, args.timed_steps + 1, device)
    attention = args.attention if device.startswith("cuda") else "native"
    fast = run_fast(config, experts, sh, args.timed_steps, device, attention, args.compile)
    decode = run_decode(pipe.vae, sh, device)
    where = "smoke, 1 layer" if args.smoke else res
    print(f"\n{config.label} ({where}): {size[0]}x{size[1]}, {frames} frames, {sh.tokens} tokens")
    report(config, plain, fast, decode, f"{attention}, CFG batched" + ", compiled" * args.compile)
    del pipe, experts
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def report(
    config: Config,
    plain: dict[str, float],
    fast: dict[str, float],
    decode: dict[str, float],
    how: str,
) -> None:
    fixed = plain["encode"] + decode["decode"]
    video_plain = fixed + config.steps * plain["step"]
    video_fast = fixed + config.steps * fast["step"]
    note = f"max rel. diff {fast['error']:.1e}, warm-up {fast['warm']:.1f} s"
    rows = [
        ("plain diffusers pipeline", plain["step"], plain["peak"], ""),
        (f"fast ({how})", fast["step"], fast["peak"], note),
    ]
    for label, step, peak, note in rows:
        print(f"  {label:<44} {step:9.3f} s/step  peak {peak:6.1f} GiB  {note}".rstrip())
    print(f"  ratio plain/fast per step {plain['step'] / fast['step']:.2f}x")
    print(
        f"  VAE encode (in the first step) {plain['encode']:.2f} s, "
        f"VAE decode {decode['decode']:.2f} s (peak {decode['peak']:.1f} GiB)"
    )
    print(
        f"  projected video ({config.steps} steps, bf16, CFG on): plain {video_plain:.1f} s, "
        f"fast {video_fast:.1f} s, ratio {video_plain / video_fast:.2f}x"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="a14b,5b", help="a14b, 5b or both")
    parser.add_argument("--res", default="480P,720P", help="480P, 720P or both")
    parser.add_argument("--timed-steps", type=int, default=2)
    parser.add_argument("--attention", default="_native_cudnn", help="fast path backend")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--smoke", action="store_true", help="1 layer, 64x64, 5 frames")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        print("no GPU: running the smoke configuration on the CPU (not a measurement)")
        args.smoke = True
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    memory = "GPU max_memory_allocated" if device == "cuda" else "process peak RSS"
    print(f"device {name}, torch {torch.__version__}, timed steps {args.timed_steps}, {memory}")
    families = [f.strip() for f in args.family.split(",")]
    resolutions = ["smoke"] if args.smoke else [r.strip() for r in args.res.split(",")]
    for family in families:
        for res in resolutions:
            bench_one(CONFIGS[family], res, args, device)


if __name__ == "__main__":
    main()

"""Tiny, randomly initialised Wan image-to-video pipelines, built in code (no network).

For tests and local development of the ``wan`` engine: every component, the tokenizer
included, is made here and can be saved with ``save_pretrained`` into a directory laid out
exactly like the real diffusers-format weights (research notes 2.2). The three families:

- ``wan2.1-i2v-14b``: one transformer with an image branch (``image_dim``) and a CLIP
  vision encoder + processor;
- ``wan2.2-i2v-a14b``: two transformers (high- and low-noise experts), ``boundary_ratio``;
- ``wan2.2-ti2v-5b``: one 48-channel transformer, the Wan 2.2 VAE (z 48, 16x spatial),
  ``expand_timesteps``.

Needs the ``wan`` extra (torch, diffusers, transformers, tokenizers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanTransformer3DModel,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
)

try:  # transformers >= 5 without torchvision
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import CLIPImageProcessor  # type: ignore[assignment]

FAMILIES = ("wan2.1-i2v-14b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b")
TEXT_DIM = 32
#: Transformer sizes shared by the three families (2 heads of 12, 1 layer).
_DIT: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "text_dim": TEXT_DIM,
    "freq_dim": 32,
    "ffn_dim": 32,
    "num_layers": 1,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}
_VAE: dict[str, Any] = {
    "base_dim": 3,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}


def tiny_tokenizer() -> tuple[PreTrainedTokenizerFast, int]:
    """A T5-style unigram tokenizer from an in-code vocabulary, and its size."""
    specials = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5
    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    pieces = ["\u2581", *letters, *("\u2581" + c for c in "abcdefghijklmnopqrst")]
    vocab = [(p, 0.0) for p in specials] + [(p, -float(i + 1)) for i, p in enumerate(pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
    )
    return wrapped, len(vocab)


def _text_encoder(vocab: int) -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=vocab,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
    )
    return UMT5EncoderModel(config).eval()


def _vae(family: str) -> AutoencoderKLWan:
    if family == "wan2.2-ti2v-5b":
        return AutoencoderKLWan(
            z_dim=48,
            in_channels=12,
            out_channels=12,
            is_residual=True,
            patch_size=2,
            latents_mean=[0.0] * 48,
            latents_std=[1.0] * 48,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
            **_VAE,
        )
    return AutoencoderKLWan(z_dim=16, **_VAE)


def _scheduler(flow_shift: float) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift
    )


def tiny_components(family: str, seed: int = 0) -> dict[str, Any]:
    """The keyword arguments of ``WanImageToVideoPipeline`` for a tiny ``family``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown Wan family {family!r}; one of {', '.join(FAMILIES)}")
    tokenizer, vocab = tiny_tokenizer()
    torch.manual_seed(seed)
    parts: dict[str, Any] = {
        "tokenizer": tokenizer,
        "text_encoder": _text_encoder(vocab),
        "vae": _vae(family),
        "image_encoder": None,
        "image_processor": None,
        "transformer_2": None,
    }
    if family == "wan2.1-i2v-14b":
        clip = CLIPVisionConfig(
            hidden_size=4,
            projection_dim=4,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            intermediate_size=16,
            patch_size=8,
        )
        parts["image_encoder"] = CLIPVisionModel(clip).eval()
        parts["image_processor"] = CLIPImageProcessor(crop_size=32, size=32)
        parts["transformer"] = WanTransformer3DModel(
            in_channels=36, out_channels=16, image_dim=4, **_DIT
        )
        parts["scheduler"] = _scheduler(3.0)
    elif family == "wan2.2-i2v-a14b":
        parts["transformer"] = WanTransformer3DModel(in_channels=36, out_channels=16, **_DIT)
        parts["transformer_2"] = WanTransformer3DModel(in_channels=36, out_channels=16, **_DIT)
        parts["scheduler"] = _scheduler(3.0)
        parts["boundary_ratio"] = 0.9
    else:
        parts["transformer"] = WanTransformer3DModel(in_channels=48, out_channels=48, **_DIT)
        parts["scheduler"] = _scheduler(5.0)
        parts["expand_timesteps"] = True
    return parts


def tiny_pipeline(family: str, seed: int = 0) -> WanImageToVideoPipeline:
    return WanImageToVideoPipeline(**tiny_components(family, seed))


def save_tiny_weights(family: str, dest: Path, seed: int = 0) -> Path:
    """Write a tiny ``family`` pipeline to ``dest`` as diffusers-format weights."""
    dest = Path(dest)
    pipe: Any = tiny_pipeline(family, seed)  # save_pretrained comes from a mixin
    pipe.save_pretrained(str(dest))
    return dest

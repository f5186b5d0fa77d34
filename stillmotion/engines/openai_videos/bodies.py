"""Our request as an OpenAI-style create body (vLLM-Omni's and SGLang's ``/v1/videos``).

- ``size``: the contract's output geometry, ``WIDTHxHEIGHT``: the first frame's aspect
  ratio at the tier's pixel area, each side a multiple of 16 (``media/geometry.py``, the
  worker computes it as for every engine that takes media);
- ``seconds``: the duration, a string; ``num_frames`` and ``fps``: the duration at the
  model's frame rate, rounded to Wan's ``4k + 1`` frames (5 s at 16 fps: 81);
- ``seed``, ``negative_prompt``; ``model`` and the default extras from the model map;
- the first frame as a ``data:`` URI, so the server never reaches our storage or the
  client's URL: ``image_reference = {"image_url": ...}`` (JSON-encoded) in a form,
  ``input_reference = {"image_url": ...}`` in a JSON body.
"""

from __future__ import annotations

from typing import Any

from stillmotion.domain import VideoRequest
from stillmotion.engines.openai_videos.config import VideoModel
from stillmotion.engines.relay.engine import data_uri


def wan_frames(duration: int, fps: int) -> int:
    """Frames for ``duration`` s at ``fps``, rounded down to ``4k + 1`` (Wan's VAE)."""
    return max(1, duration * fps // 4 * 4 + 1)


def build_body(
    req: VideoRequest,
    entry: VideoModel,
    *,
    width: int,
    height: int,
    fps: int,
    image: tuple[str, bytes],
    form: bool,
) -> dict[str, Any]:
    """The create body; ``image``: the first frame's ``(mime, bytes)``."""
    body: dict[str, Any] = {"prompt": req.prompt}
    if entry.model:
        body["model"] = entry.model
    body.update(
        size=f"{width}x{height}",
        seconds=str(req.duration),
        num_frames=wan_frames(req.duration, fps),
        fps=fps,
        seed=req.seed,
    )
    if req.negative_prompt:
        body["negative_prompt"] = req.negative_prompt
    reference = {"image_url": data_uri(*image)}
    body["image_reference" if form else "input_reference"] = reference
    body.update(entry.extras)
    return body

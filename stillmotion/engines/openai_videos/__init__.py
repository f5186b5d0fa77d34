"""The relay to an OpenAI-style ``/v1/videos`` GPU fleet (docs/gpu-fleet.md): ``engine.py``
on the shared relay core (``engines/relay/``) with its client, bodies, model map and
reconciliation through ``GET /v1/videos``."""

from stillmotion.engines.openai_videos.engine import OpenAIVideosEngine

__all__ = ["OpenAIVideosEngine"]

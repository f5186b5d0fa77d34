"""Open Wan weights on a GPU through diffusers (``engine.py``, ``config.py``, ``loader.py``)."""

from stillmotion.engines.wan.engine import WanEngine

__all__ = ["WanEngine"]

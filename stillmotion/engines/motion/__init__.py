"""The built-in CPU engine: no weights, no network (``engine.py``; the plan, frames and
render processes beside it)."""

from stillmotion.engines.motion.engine import MotionEngine

__all__ = ["MotionEngine"]

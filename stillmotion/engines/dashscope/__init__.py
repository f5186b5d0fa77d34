"""The relay to DashScope (docs/relay.md): ``engine.py`` and its channels, client, polling,
reconciliation and results."""

from stillmotion.engines.dashscope.engine import DashScopeEngine

__all__ = ["DashScopeEngine"]

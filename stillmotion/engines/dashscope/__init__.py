"""The relay to DashScope (docs/relay.md): ``engine.py`` on the shared relay core
(``engines/relay/``) with DashScope's client, bodies and task-list reconciliation;
``channels.py`` re-exports the core's channels."""

from stillmotion.engines.dashscope.engine import DashScopeEngine

__all__ = ["DashScopeEngine"]

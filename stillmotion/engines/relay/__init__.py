"""The relay core every relay engine stands on (docs/relay.md): channels and admission
(``channels.py``), HTTP failure classes (``http.py``), following a task (``follow.py``),
reconciling a lost submit (``reconcile.py``), the result (``result.py``) and the protocol
itself (``engine.py``: :class:`RelayEngine`). It names no concrete upstream; each family
(``dashscope/``, ``openai_videos/``) holds only its wire mapping."""

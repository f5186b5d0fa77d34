"""Random ids on the hot path: request ids (UUIDv4 text) and the random bits of task ids.

``os.urandom`` is a system call; two of them per submit showed up as 7% of the event loop's
time under load. Here the operating system's random bytes are drawn 4 KB at a time and
handed out in slices: the same CSPRNG output, one system call per 256 request ids. The pool
is per thread and per process (a forked child draws its own, never its parent's bytes).
"""

from __future__ import annotations

import os
import threading

POOL_BYTES = 4096
_local = threading.local()


def random_bytes(n: int) -> bytes:
    """``n`` bytes (at most ``POOL_BYTES``) from the operating system's CSPRNG."""
    pool: bytearray | None = getattr(_local, "pool", None)
    if pool is None or len(pool) < n or _local.pid != os.getpid():
        pool = _local.pool = bytearray(os.urandom(POOL_BYTES))
        _local.pid = os.getpid()
    out = bytes(pool[-n:])
    del pool[-n:]
    return out


def uuid4_text() -> str:
    """A random (version 4, RFC 9562) UUID as text, as ``str(uuid.uuid4())``."""
    raw = random_bytes(16)
    h = raw.hex()
    variant = "89ab"[raw[8] >> 6]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"

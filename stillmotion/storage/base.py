"""The storage protocol: results and kept inputs, addressed by key."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    async def put_file(self, key: str, src: Path) -> int:
        """Move or copy ``src`` under ``key``; returns the size in bytes."""
        ...

    async def put_bytes(self, key: str, data: bytes) -> int: ...

    def local_path(self, key: str) -> Path:
        """A path on this machine holding ``key``'s bytes (raises ``NotFound``)."""
        ...

    def signed_url(self, key: str, *, now: float | None = None) -> str:
        """An absolute, expiring, HMAC-signed URL for ``key``."""
        ...

    def verify(
        self, key: str, expires: int, signature: str, *, now: float | None = None
    ) -> bool: ...

    async def list_files(self, prefix: str) -> list[tuple[str, float]]:
        """``(key, last modified epoch seconds)`` of every stored file under ``prefix``."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every file under ``prefix`` (``inputs/<task_id>/``); how many."""
        ...

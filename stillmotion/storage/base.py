"""The storage protocol: results and kept inputs, addressed by key.

Two implementations: ``LocalStorage`` (a directory; the single-box default) and ``S3Storage``
(any S3-compatible object store, shared by every API process and worker). Nothing outside
``storage/`` needs a path in the store: workers copy what they need into their scratch
directory with ``fetch_to``, the files route streams ranges with ``open_range``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: Chunks of a streamed download.
CHUNK_BYTES = 1 << 20


class StorageUnavailable(Exception):
    """The store named by the settings cannot be used (malformed URL, unreachable bucket,
    missing client library or credentials); the runtime reports it as a setting error."""


@dataclass(frozen=True)
class StoredObject:
    size: int
    modified: float  # epoch seconds
    etag: str | None = None


def check_key(key: str) -> bool:
    """A key is relative, ``/``-separated, without ``..`` segments or backslashes."""
    return bool(key) and not key.startswith("/") and ".." not in key.split("/") and "\\" not in key


class Storage(Protocol):
    async def put_file(self, key: str, src: Path) -> int:
        """Store ``src`` under ``key`` (local storage moves it; the caller removes it
        otherwise); returns the size in bytes."""
        ...

    async def put_bytes(self, key: str, data: bytes) -> int: ...

    async def fetch_to(self, key: str, dest: Path) -> Path:
        """A path on this machine holding ``key``'s bytes, for reading only: ``dest``, written
        by streaming the object, or (local storage) the stored file itself. ``NotFound``
        when there is no such key."""
        ...

    async def read_bytes(self, key: str) -> bytes:
        """The whole object (small inputs only: the relay re-sends a data: URI)."""
        ...

    async def stat(self, key: str) -> StoredObject:
        """Size and modification time of ``key`` (raises ``NotFound``)."""
        ...

    async def open_range(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start``..``end`` (inclusive) of ``key``, streamed in chunks; the request is
        made before this returns, so a missing key raises ``NotFound`` here. The iterator has
        an ``aclose()``: call it when done (the files route does, also after a disconnect)."""
        ...

    def signed_url(self, key: str, *, now: float | None = None) -> str:
        """An absolute, expiring URL for ``key``: our HMAC-signed ``/files`` URL, or the
        store's presigned URL."""
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

    async def delete_keys(self, keys: list[str]) -> None:
        """Delete these files; a key that is not there is no error (deleting twice is
        harmless, so several sweepers may delete the same keys)."""
        ...

    async def aclose(self) -> None: ...

"""Local-disk storage under ``<data_dir>/files``."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from stillmotion.errors import NotFound
from stillmotion.storage.base import CHUNK_BYTES, StoredObject, check_key
from stillmotion.storage.signing import UrlSigner


class LocalStorage:
    def __init__(self, root: Path, signer: UrlSigner):
        self.root = root
        self.signer = signer
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not check_key(key):
            raise NotFound(f"no such file: {key}")
        return self.root / key

    async def put_file(self, key: str, src: Path) -> int:
        dest = self._path(key)
        return await asyncio.to_thread(_move_into, src, dest)

    async def put_bytes(self, key: str, data: bytes) -> int:
        dest = self._path(key)
        return await asyncio.to_thread(_write_atomic, dest, data)

    def local_path(self, key: str) -> Path:
        """The stored file itself (local storage only: the files route serves it as is)."""
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"no such file: {key}")
        return path

    async def fetch_to(self, key: str, dest: Path) -> Path:
        return self.local_path(key)  # already on this machine: no copy

    async def read_bytes(self, key: str) -> bytes:
        return await asyncio.to_thread(self.local_path(key).read_bytes)

    async def stat(self, key: str) -> StoredObject:
        st = self.local_path(key).stat()
        return StoredObject(size=st.st_size, modified=st.st_mtime)

    async def open_range(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        path = self.local_path(key)
        return _read_range(path, start, end)

    def signed_url(self, key: str, *, now: float | None = None) -> str:
        return self.signer.url(key, now=now)

    def verify(self, key: str, expires: int, signature: str, *, now: float | None = None) -> bool:
        return self.signer.verify(key, expires, signature, now=now)

    async def list_files(self, prefix: str) -> list[tuple[str, float]]:
        return await asyncio.to_thread(_list_files, self.root, self._path(prefix.rstrip("/")))

    async def delete_prefix(self, prefix: str) -> int:
        return await asyncio.to_thread(_delete_tree, self._path(prefix.rstrip("/")))

    async def delete_keys(self, keys: list[str]) -> None:
        paths = [self._path(key) for key in keys]
        await asyncio.to_thread(_unlink_all, paths)

    async def aclose(self) -> None:
        return None


async def _read_range(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    with path.open("rb") as fh:
        fh.seek(start)
        left = end - start + 1
        while left > 0:
            chunk = await asyncio.to_thread(fh.read, min(CHUNK_BYTES, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def _move_into(src: Path, dest: Path) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    shutil.move(str(src), tmp)
    os.replace(tmp, dest)
    return dest.stat().st_size


def _write_atomic(dest: Path, data: bytes) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return len(data)


def _list_files(root: Path, top: Path) -> list[tuple[str, float]]:
    found: list[tuple[str, float]] = []
    for dirpath, _, names in os.walk(top):
        for name in names:
            path = Path(dirpath, name)
            try:
                found.append((path.relative_to(root).as_posix(), path.stat().st_mtime))
            except OSError:  # removed meanwhile
                continue
    return found


def _delete_tree(top: Path) -> int:
    count = sum(len(names) for _, _, names in os.walk(top))
    shutil.rmtree(top, ignore_errors=True)
    return count


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)

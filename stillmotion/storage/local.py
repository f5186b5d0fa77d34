"""Local-disk storage under ``<data_dir>/files``."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from stillmotion.errors import NotFound
from stillmotion.storage.signing import UrlSigner


class LocalStorage:
    def __init__(self, root: Path, signer: UrlSigner):
        self.root = root
        self.signer = signer
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/") or "\\" in key:
            raise NotFound(f"no such file: {key}")
        return self.root / key

    async def put_file(self, key: str, src: Path) -> int:
        dest = self._path(key)
        return await asyncio.to_thread(_move_into, src, dest)

    async def put_bytes(self, key: str, data: bytes) -> int:
        dest = self._path(key)
        return await asyncio.to_thread(_write_atomic, dest, data)

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"no such file: {key}")
        return path

    def signed_url(self, key: str, *, now: float | None = None) -> str:
        return self.signer.url(key, now=now)

    def verify(self, key: str, expires: int, signature: str, *, now: float | None = None) -> bool:
        return self.signer.verify(key, expires, signature, now=now)

    async def list_files(self, prefix: str) -> list[tuple[str, float]]:
        return await asyncio.to_thread(_list_files, self.root, self._path(prefix.rstrip("/")))

    async def delete_prefix(self, prefix: str) -> int:
        return await asyncio.to_thread(_delete_tree, self._path(prefix.rstrip("/")))


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

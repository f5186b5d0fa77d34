"""HMAC-SHA256 signed, expiring URLs; the secret is created once and kept in the data dir."""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote


def load_or_create_secret(path: Path) -> bytes:
    """Read the signing secret at ``path``; make a new 32-byte one (mode 0600) if missing."""
    try:
        data = path.read_bytes().strip()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret)
    try:
        os.link(tmp, path)  # first writer wins when several processes start together
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


class UrlSigner:
    """Signs ``(key, expires)``; expiry is rounded up to ``granularity`` so repeated polls of a
    task return the same URL."""

    def __init__(self, secret: bytes, base_url: str, ttl: int, granularity: int = 3600):
        self._secret = secret
        self._base = base_url.rstrip("/")
        self._ttl = ttl
        self._granularity = max(1, min(granularity, ttl))

    def signature(self, key: str, expires: int) -> str:
        msg = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def expires_for(self, now: float) -> int:
        g = self._granularity
        return int(math.ceil((now + self._ttl) / g) * g)

    def url(self, key: str, *, now: float | None = None) -> str:
        expires = self.expires_for(time.time() if now is None else now)
        sig = self.signature(key, expires)
        return f"{self._base}/files/{quote(key)}?Expires={expires}&Signature={sig}"

    def verify(self, key: str, expires: int, signature: str, *, now: float | None = None) -> bool:
        current = time.time() if now is None else now
        if expires < current or not signature.isascii():  # compare_digest raises on non-ASCII
            return False
        return hmac.compare_digest(self.signature(key, expires), signature)

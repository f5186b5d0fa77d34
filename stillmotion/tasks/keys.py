"""API keys: made once, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from stillmotion.errors import InvalidApiKey
from stillmotion.tasks.store import ApiKeyRow, TaskStore

KEY_PREFIX = "sm-"


@dataclass(frozen=True)
class NewKey:
    key: str  # the secret, shown once
    row: ApiKeyRow


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(
    store: TaskStore, name: str, *, account_id: str | None = None, is_admin: bool = False
) -> NewKey:
    """A new key of ``account_id`` (without one: of a new account named ``name``)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = await store.create_key(
        name, hash_key(key), key[:10], account_id=account_id, is_admin=is_admin
    )
    return NewKey(key=key, row=row)


class KeyVerifier:
    """Checks ``Authorization: Bearer`` keys, caching hits for ``ttl`` seconds."""

    def __init__(self, store: TaskStore, ttl: float = 5.0, max_entries: int = 10_000):
        self._store = store
        self._ttl = ttl
        self._max = max_entries
        self._cache: dict[str, tuple[float, ApiKeyRow]] = {}

    async def verify(self, authorization: str | None) -> ApiKeyRow:
        if not authorization:
            raise InvalidApiKey("No API-key provided.")
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise InvalidApiKey("No API-key provided.")
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        row = await self._store.key_by_hash(digest)
        if row is None:
            self._cache.pop(digest, None)
            raise InvalidApiKey("Invalid API-key provided.")
        if self._ttl > 0:
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[digest] = (now + self._ttl, row)
        return row

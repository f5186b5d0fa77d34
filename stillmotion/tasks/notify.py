"""New-work wake-ups across processes: PostgreSQL ``LISTEN``/``NOTIFY``.

A submit's group-commit transaction sends ``NOTIFY stillmotion_tasks`` (``tasks/batch.py``),
so PostgreSQL delivers it to every listening connection when, and only when, the tasks are
committed. Each worker process holds one connection that listens and wakes its claim loop
at once, instead of finding the work at its next poll. The poll stays as the fallback: a
lost notification (the listening connection dropped) only delays a claim to the next poll,
and the listener reconnects by itself. SQLite has no such channel; there a submit wakes the
in-process worker directly (``TaskService.set_on_submit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("stillmotion.tasks")

#: the channel the submit transaction notifies (payload: empty)
CHANNEL = "stillmotion_tasks"
#: ``write_batch``'s statement, run once per batch that accepted a task (PostgreSQL only)
NOTIFY_SQL = f"SELECT pg_notify('{CHANNEL}', '')"
RECONNECT_SECONDS = (0.5, 1.0, 2.0, 5.0)  # backoff after a lost listening connection


def driver_dsn(url: sa.URL) -> str:
    """The plain ``postgresql://`` DSN asyncpg takes, from SQLAlchemy's URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """Calls ``on_notify()`` for every notification on :data:`CHANNEL`, reconnecting after a
    lost connection (each reconnect also calls it once: work may have come meanwhile)."""

    def __init__(self, url: sa.URL, on_notify: Callable[[], None]) -> None:
        self._dsn = driver_dsn(url)
        self._on_notify = on_notify
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()  # set while listening (tests wait on it)
        self.connects = 0  # listening connections made so far (a reconnect counts too)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stillmotion-listen")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _notified(self, *_: Any) -> None:
        self._on_notify()

    async def _run(self) -> None:
        import asyncpg  # the PostgreSQL driver: only a PostgreSQL store listens

        failures = 0
        while True:
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                delay = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
                failures += 1
                log.warning("LISTEN %s: cannot connect (%s); again in %g s", CHANNEL, exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            try:
                await self._listen(conn)
            finally:
                self.connected.clear()
                if not conn.is_closed():  # cancelled while listening: close it cleanly
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))

    async def _listen(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda *_: lost.set())
        await conn.add_listener(CHANNEL, self._notified)
        self.connects += 1
        self.connected.set()
        self._on_notify()  # anything submitted while we were not listening
        await lost.wait()
        log.warning("LISTEN %s: connection lost; reconnecting", CHANNEL)

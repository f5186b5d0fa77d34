"""A graceful stop for ``stillmotion serve``: SIGTERM drains before uvicorn shuts down.

On the first SIGTERM (or SIGINT) the app starts draining at once (``app.begin_draining``:
``GET /readyz`` answers 503, the in-process worker stops claiming). The server keeps serving
``STILLMOTION_DRAIN_SECONDS`` more (0: none), so a load balancer polling ``/readyz`` takes
the process out before its port closes; then uvicorn's own shutdown runs: it stops
accepting, lets the requests in flight finish (keep-alive connections close after their
current answer), and the lifespan's end hands running tasks back to the queue. A second
signal stops at once (SIGINT twice: uvicorn's force exit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from stillmotion.api.app import begin_draining

log = logging.getLogger("stillmotion")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_seconds: float = 0.0):
        super().__init__(config)
        self.app = app
        self.drain_seconds = max(0.0, drain_seconds)
        self.stop_at: float | None = None  # monotonic; set by the first signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stop_at is None and not self.should_exit:
            self.stop_at = time.monotonic() + self.drain_seconds
            self._soon(self._drain)
            if self.drain_seconds > 0:
                self._captured_signals.append(sig)  # re-raised after the stop, as uvicorn's
                return
        super().handle_exit(sig, frame)

    def _soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop, not inside the signal handler (it sets events)."""
        try:
            asyncio.get_running_loop().call_soon_threadsafe(callback)
        except RuntimeError:  # no loop running (not serving yet)
            callback()

    def _drain(self) -> None:
        begin_draining(self.app)
        log.info(
            "draining: /readyz answers 503, no new tasks claimed; stopping in %.1f s",
            self.drain_seconds,
        )

    async def on_tick(self, counter: int) -> bool:
        if self.stop_at is not None and time.monotonic() >= self.stop_at:
            self.should_exit = True
        return await super().on_tick(counter)

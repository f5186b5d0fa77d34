"""What the shipped fake servers share: uvicorn on a loopback socket, in a thread (tests) or
in the foreground (the ``stillmotion fake-*`` commands), and an answer that drops the
connection half-way (a scripted fault)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import uvicorn
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send


class DroppedConnection(Exception):
    """Raised after a partial answer so that uvicorn closes the connection."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DroppedConnection))


def _quiet() -> None:
    logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


class DropResponse(Response):
    """Starts a 200 answer, sends ``prefix`` of its JSON, then drops the connection."""

    def __init__(self, prefix: bytes) -> None:
        super().__init__()
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.prefix, "more_body": True})
        raise DroppedConnection()


class LoopbackServer:
    """``app`` on ``host`` (a free port unless given), served by uvicorn in a thread; a
    context manager. Subclasses name the API's base under :attr:`root_url`."""

    name = "fake server"

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
        except BaseException:
            self._socket.close()  # a taken port: no socket left for the collector to warn about
            raise
        self.port = int(self._socket.getsockname()[1])
        cfg = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _serve(self) -> None:
        self._server.run(sockets=[self._socket])

    def start(self) -> Self:
        _quiet()
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()  # ``with`` calls no __exit__ when __enter__ raises
                raise RuntimeError(f"the {self.name} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_foreground(
    app: Any, sock: socket.socket, *, ready: Callable[[int], None] | None = None
) -> None:
    """Run ``app`` in the foreground on the bound ``sock`` (a ``stillmotion fake-*``
    command); ``ready`` is called with its port once it accepts connections."""
    _quiet()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))

    async def main() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        if server.started and ready is not None:
            ready(int(sock.getsockname()[1]))
        await serving

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # as uvicorn.run: uvicorn re-raises a SIGINT once it has stopped
        pass
    finally:
        sock.close()

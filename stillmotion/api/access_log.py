"""One log line per HTTP request: method, path, status and milliseconds, at info.

A pure ASGI middleware (no per-request objects beyond one closure). When the
``stillmotion.access`` logger is not enabled for info it only passes the call on (under
1 µs); when it is, a record is made without logging's caller lookup (about 15 µs a request,
mostly the handler's write). It logs the path only, never the query string (signed
``/files`` URLs carry ``Signature=`` there) nor any header (API keys travel in
``Authorization``); the record carries the request's ``request_id`` and ``key_id`` (the
key's id, not the key) as extras, when the request got them. Paths are logged as the client
sent them (percent-encoded), with anything unprintable escaped and long ones cut, so a
request cannot forge or flood log lines.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("stillmotion.access")

MAX_PATH_CHARS = 256
LINE = "%s %s %d %.1f ms"  # method, path, status, milliseconds


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            args = (scope["method"], log_path(scope), status, elapsed_ms)
            # log.info() less its caller lookup (a stack walk): a quarter of the line's cost
            record = log.makeRecord(log.name, logging.INFO, __file__, 0, LINE, args, None)
            state = scope.get("state")
            if state:  # the ids the request got, for the JSON format (logfmt.py); no secret
                record.request_id = state.get("request_id")
                record.key_id = state.get("key_id")
            log.handle(record)


def log_path(scope: Scope) -> str:
    """The request's path as sent, without the query string, safe to put in one log line."""
    raw = scope.get("raw_path")
    text = raw.decode("latin-1") if raw else scope.get("path", "")
    text = text.split("?", 1)[0]  # some servers put the query string in raw_path
    if len(text) > MAX_PATH_CHARS:
        text = text[:MAX_PATH_CHARS] + "…"
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text

"""Bounds on a request's head (request line and headers) for ``stillmotion serve``.

uvicorn's httptools protocol keeps every header it is sent, of any size and in any number,
and a header that never ends grows in memory until the client stops. This protocol answers
``431`` in the error shape and closes the connection once the head is over
:data:`MAX_HEAD_BYTES` or has more than :data:`MAX_HEADERS` headers; the server goes on.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
CODE = "BadRequest.TooLarge"
MESSAGE = (
    f"The request line and headers are larger than {MAX_HEAD_BYTES // 1024} KB "
    f"or there are more than {MAX_HEADERS} headers."
)


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops and uvicorn calls send_400_response."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # from the start of a message to the end of its head
        self._head_bytes = 0  # bytes received while the head was still incomplete
        self._heads = 0  # heads completed on this connection
        self._too_large = False

    def data_received(self, data: bytes) -> None:
        heads = self._heads
        super().data_received(data)
        # Only data that completed no head counts: a whole request (head and body) often
        # arrives in one read, and its body is not part of any head.
        if self._in_head and heads == self._heads and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._too_large = True
                self.send_400_response(MESSAGE)

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes = True, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > MAX_HEAD_BYTES or len(self.headers) > MAX_HEADERS:
            self._too_large = True
            raise _HeadTooLarge(MESSAGE)
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._too_large:
            super().send_400_response(msg)
            return
        self.logger.warning("Refused a request whose head is too large.")
        body = orjson.dumps({"request_id": str(uuid.uuid4()), "code": CODE, "message": MESSAGE})
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        )
        self.transport.write(head + body)
        self.transport.close()

"""Oversize request heads are refused by a real ``stillmotion serve``, over raw sockets: a
431 in the error shape, the connection closed, and the server answering the next request."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from stillmotion.api.http_limits import MAX_HEAD_BYTES, MAX_HEADERS
from tests.servers import Server, served


@pytest.fixture(scope="module", name="live")
def live_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    yield from served(tmp_path_factory.mktemp("limits"), "limits", workers=0)


def exchange(srv: Server, head: bytes, tail: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (then ``tail``, which the server may refuse to read) on a new
    connection, read until the server closes it; the status, headers and body."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        try:
            sock.sendall(head)
            sock.sendall(tail)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while still sending: the answer is already there
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    raw = b"".join(chunks)
    status_line, _, rest = raw.partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    headers = dict(
        line.decode().lower().split(": ", 1) for line in header_block.split(b"\r\n") if line
    )
    return int(status_line.split()[1]), headers, body


def get(path: str, *headers: bytes) -> bytes:
    lines = [b"GET " + path.encode() + b" HTTP/1.1", b"Host: 127.0.0.1", *headers]
    return b"\r\n".join([*lines, b"Connection: close", b"", b""])


def assert_refused(answer: tuple[int, dict[str, str], bytes]) -> None:
    status, headers, body = answer
    assert status == 431
    assert headers["connection"] == "close"
    error = json.loads(body)
    assert set(error) == {"request_id", "code", "message"}
    assert error["code"] == "BadRequest.TooLarge"


def assert_alive(srv: Server) -> None:
    status, _, body = exchange(srv, get("/healthz"))
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert srv.proc is not None and srv.proc.poll() is None


def test_a_100_kb_header_is_refused(live: tuple[Server, str]) -> None:
    srv, key = live
    assert_refused(exchange(srv, get("/healthz", b"X-Big: " + b"a" * 100_000)))
    assert_refused(exchange(srv, get("/v1/tasks", f"Authorization: Bearer {key}".encode(),
                                     b"Cookie: " + b"c" * (MAX_HEAD_BYTES + 1))))  # fmt: skip
    assert_alive(srv)


def test_too_many_headers_are_refused(live: tuple[Server, str]) -> None:
    srv, _ = live
    many = [f"X-H{i}: {i}".encode() for i in range(MAX_HEADERS + 1)]
    assert_refused(exchange(srv, get("/healthz", *many)))
    assert_alive(srv)


def test_a_long_url_is_refused(live: tuple[Server, str]) -> None:
    srv, _ = live
    assert_refused(exchange(srv, get("/healthz?q=" + "u" * 100_000)))
    assert_alive(srv)


def test_a_header_that_never_ends_is_cut_off(live: tuple[Server, str]) -> None:
    """8 MB of one header line with no end: refused once the limit is passed, not buffered."""
    srv, _ = live
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: "
    assert_refused(exchange(srv, head, b"e" * 8_000_000))
    assert_alive(srv)


def test_a_large_but_allowed_head_is_served(live: tuple[Server, str]) -> None:
    srv, key = live
    near = [f"X-H{i}: {'v' * 500}".encode() for i in range(MAX_HEADERS - 10)]
    auth = f"Authorization: Bearer {key}".encode()
    status, _, body = exchange(srv, get("/v1/tasks?limit=5", auth, *near))
    assert status == 200, body
    assert json.loads(body)["total"] == 0


def test_keep_alive_requests_each_get_the_full_allowance(live: tuple[Server, str]) -> None:
    """The count restarts with each request on a kept-alive connection."""
    srv, _ = live
    one = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * (MAX_HEAD_BYTES // 2) + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        for _ in range(4):
            sock.sendall(one)
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
            length = int(reply.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = reply.partition(b"\r\n\r\n")[2]
            while len(body) < length:
                body += sock.recv(65536)


def test_a_big_body_sent_with_its_head_in_one_write_is_not_a_head(
    live: tuple[Server, str],
) -> None:
    """A client (http.client, requests) often writes head and body at once, so one read
    holds a whole request; only the head counts against the bound, not the 90 KB body."""
    srv, key = live
    body = b'{"model": "nope", "input": {"prompt": "' + b"x" * 90_000 + b'"}}'
    head = (
        b"POST /task/bailian/image2video HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    )
    status, _, answer = exchange(srv, head + body)
    assert status == 400, answer  # the body was read and validated: an unknown model
    assert json.loads(answer)["code"] == "InvalidParameter"

"""Parsing a submit body without holding the event loop (or the GIL) for long.

A submit may carry 15-26 MB of ``data:`` URIs. ``orjson`` parses such a string in one call
that holds the GIL for tens of milliseconds, and so does ``base64`` decoding it, so running
them in a thread alone would still stall every other request. Big bodies are therefore parsed
by :func:`parse_body` *without* their data URIs: each long ``"data:...;base64,..."`` string is
cut out of the bytes (found by memchr-speed searches over windows, yielding the GIL between
windows), replaced by a short placeholder, and handed to validation as a :class:`SplicedUri`
whose payload :func:`b64decode_gently` decodes window by window.

Also here: the nesting-depth bound (``MAX_DEPTH``), checked on every body.
"""

from __future__ import annotations

import binascii
import time
from typing import Any

import orjson

from stillmotion.errors import InvalidParameter

#: Deepest nesting of objects/arrays a body may have; the contract's bodies use 3.
MAX_DEPTH = 32
#: Bodies up to this size are parsed inline, on the event loop (a few hundred microseconds).
INLINE_BYTES = 256 * 1024
#: Only data URIs at least this long are cut out of a body before parsing.
SPLICE_MIN_BYTES = 64 * 1024
#: Bytes searched or decoded between two yields of the GIL (a multiple of 4).
WINDOW = 256 * 1024
#: How long decoding pauses after each window, for the event loop to run.
YIELD_SECONDS = 0.0002
_OPEN = b'"data:'
_HEADER_MAX = 128  # "data:" + MIME type + ";base64," fits in this


class SplicedUri(str):
    """A ``data:`` URI cut out of the body: the ``str`` is its header (``data:mime;base64,``),
    ``payload`` the base64 bytes that followed, still inside the body's buffer."""

    payload: memoryview

    def __new__(cls, header: str, payload: memoryview) -> SplicedUri:
        self = super().__new__(cls, header)
        self.payload = payload
        return self

    def text(self) -> str:
        """The whole URI as a plain string (only for a misplaced URI, e.g. in a prompt)."""
        return str.__str__(self) + bytes(self.payload).decode("ascii")


def parse_body(raw: bytes | bytearray) -> Any:
    """The JSON value of ``raw`` (``InvalidParameter`` when it is not JSON or too deep).
    Long data URIs come back as :class:`SplicedUri` values when ``raw`` is big."""
    spliced: dict[str, SplicedUri] = {}
    text: bytes | bytearray = raw
    if len(raw) > INLINE_BYTES:
        text, spliced = _splice(raw)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc).lower():
            raise _too_deep() from None
        raise InvalidParameter(f"The request body is not valid JSON: {exc}") from None
    check_depth(value, text)
    return _restore(value, spliced) if spliced else value


def parse_chunks(chunks: list[bytes]) -> Any:
    """:func:`parse_body` of the chunks joined (in a thread: the join copies the whole body).
    Empties ``chunks``, so that the body is held once, not twice."""
    raw = b"".join(chunks)
    chunks.clear()
    return parse_body(raw)


def check_depth(value: Any, text: bytes | bytearray | None = None) -> None:
    """``InvalidParameter`` when ``value`` nests objects/arrays deeper than ``MAX_DEPTH``.
    With the JSON ``text`` at hand, few enough brackets in it settle the question at once."""
    small = text is not None and len(text) <= INLINE_BYTES
    if small and text.count(b"[") + text.count(b"{") <= MAX_DEPTH:  # type: ignore[union-attr]
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise _too_deep()
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def _too_deep() -> InvalidParameter:
    return InvalidParameter(
        f"The request body nests objects or arrays more than {MAX_DEPTH} levels deep."
    )


def _find(buf: bytes | bytearray, needle: bytes, start: int, stop: int | None = None) -> int:
    """``buf.find(needle, start, stop)``, a window at a time, letting other threads run between."""
    size, step = len(buf) if stop is None else stop, WINDOW
    while start < size:
        hit = buf.find(needle, start, min(size, start + step + len(needle) - 1))
        if hit >= 0:
            return hit
        start += step
        _yield()
    return -1


def _splice(raw: bytes | bytearray) -> tuple[bytes | bytearray, dict[str, SplicedUri]]:
    """``raw`` with each long, escape-free data URI string replaced by a placeholder."""
    view = memoryview(raw)
    parts: list[bytes | memoryview] = []
    spliced: dict[str, SplicedUri] = {}
    done = pos = 0
    while (start := _find(raw, _OPEN, pos)) >= 0:
        end = _find(raw, b'"', start + 1)
        if end < 0:
            break
        pos = end + 1
        comma = raw.find(b",", start, min(end, start + _HEADER_MAX))
        escaped = start > 0 and raw[start - 1] == ord("\\")  # a quote inside a string
        if escaped or end - start < SPLICE_MIN_BYTES or comma < 0:
            continue
        if _find(raw, b"\\", start, end) >= 0:
            continue
        try:
            header = bytes(view[start + 1 : comma + 1]).decode("ascii")
        except UnicodeDecodeError:
            continue
        token = f"\x00spliced-{len(spliced)}"
        spliced[token] = SplicedUri(header, view[comma + 1 : end])
        parts += [view[done:start], orjson.dumps(token)]
        done = end + 1
    if not spliced:
        return raw, {}
    parts.append(view[done:])
    return b"".join(parts), spliced


def _restore(value: Any, spliced: dict[str, SplicedUri]) -> Any:
    """Put the spliced URIs back where their placeholders are (keys are left as they are)."""
    if isinstance(value, str):
        return spliced.get(value, value)
    if isinstance(value, dict):
        return {k: _restore(v, spliced) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, spliced) for v in value]
    return value


def b64decode_gently(payload: str | memoryview, what: str, offset: int = 0) -> bytes:
    """Strict base64 decoding of ``payload[offset:]`` (as ``base64.b64decode(validate=True)``),
    one window at a time, letting other threads run between windows."""
    size = len(payload)
    if (size - offset) % 4:
        raise InvalidParameter(f"{what} data URI does not hold valid base64")
    parts: list[bytes] = []
    for start in range(offset, size, WINDOW):
        chunk = payload[start : start + WINDOW]
        data = chunk.encode("ascii", "replace") if isinstance(chunk, str) else bytes(chunk)
        last = start + WINDOW >= size
        try:
            if not last and b"=" in data:
                raise ValueError("padding before the end")
            parts.append(binascii.a2b_base64(data, strict_mode=True))
        except (binascii.Error, ValueError):
            raise InvalidParameter(f"{what} data URI does not hold valid base64") from None
        if not last:
            _yield()
    return b"".join(parts)


def _yield() -> None:
    """Let a thread waiting for the GIL (the event loop's) take it: a zero sleep would
    hand it back to this thread at once, and a thread that never lets go makes the event
    loop wait a whole switch interval (5 ms) each time it wakes up."""
    time.sleep(YIELD_SECONDS)

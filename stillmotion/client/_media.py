"""Turning what the caller has (a path, bytes, a URL) into the ``img_url``/``audio_url`` string."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from stillmotion.client._errors import InvalidInputError

MediaInput = str | bytes | os.PathLike[str]

#: Strings sent as they are: the server (or DashScope) fetches or decodes them.
PASS_THROUGH = ("http://", "https://", "data:", "oss://")


def sniff_image(data: bytes) -> str | None:
    """The MIME type of a JPEG, PNG, BMP or WEBP file from its first bytes."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def sniff_audio(data: bytes) -> str | None:
    """The MIME type of a wav or mp3 file from its first bytes."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    if data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    return None


def _read(value: MediaInput, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    path = Path(value)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{what}: cannot read {str(path)!r}: {exc.strerror}") from None


def as_data_uri(value: MediaInput, *, audio: bool = False) -> str:
    """A URL or data: URI string for ``value``: strings that already are URLs pass through;
    paths and bytes are read and sent as ``data:{mime};base64,...``."""
    what = "audio_url" if audio else "image"
    if isinstance(value, str) and value.startswith(PASS_THROUGH):
        return value
    data = _read(value, what)
    mime = sniff_audio(data) if audio else sniff_image(data)
    if mime is None:
        kinds = "a wav or mp3 file" if audio else "a JPEG, PNG, BMP or WEBP image"
        raise InvalidInputError(f"{what}: not {kinds}")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

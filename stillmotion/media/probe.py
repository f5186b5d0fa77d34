"""Probing and decoding of input media: ``img_url`` images and ``audio_url`` audio (contract 3.2).

Everything here is synchronous and CPU-bound: call it through ``asyncio.to_thread`` from async
code. Errors are :mod:`stillmotion.errors` types whose messages name the request field.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image, ImageOps, UnidentifiedImageError

from stillmotion import catalog, errors

#: Pillow format name -> MIME type, for the formats the contract allows.
IMAGE_FORMATS: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "BMP": "image/bmp",
    "WEBP": "image/webp",
}
#: The most pixels we ever decode: a maximal image of 8000 x 8000.
MAX_PIXELS = catalog.IMAGE_MAX_SIDE * catalog.IMAGE_MAX_SIDE
#: Grace on the audio duration bounds, for encoder padding (e.g. mp3 without a gapless tag).
AUDIO_DURATION_GRACE = 0.1

_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_DATA_URI = re.compile(r"data:(?P<mime>[A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+);base64,(?P<data>.*)", re.S)
_IMAGE_KINDS = "JPEG, PNG, BMP or WEBP"
_SIDES = f"{catalog.IMAGE_MIN_SIDE} to {catalog.IMAGE_MAX_SIDE} px"
# What Pillow raises on corrupt or truncated data (SyntaxError: some plugins' header checks).
_PIL_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError)


@dataclass(frozen=True)
class ImageInfo:
    """An image's header facts. ``width``/``height`` are as displayed (EXIF orientation applied)."""

    width: int
    height: int
    format: str  # Pillow's name: JPEG, PNG, BMP or WEBP
    mime: str
    size: int  # bytes


@dataclass(frozen=True)
class AudioInfo:
    duration: float  # seconds, from the decoded samples
    format: str  # "wav" or "mp3"
    size: int  # bytes
    sample_rate: int
    channels: int


# --------------------------------------------------------------------------- data: URIs


def decode_data_uri(uri: str, what: str, allowed_mimes: Sequence[str]) -> tuple[str, bytes]:
    """Split ``data:{mime};base64,{data}`` into the (lower-cased) MIME type and the bytes."""
    allowed = ", ".join(allowed_mimes)
    match = _DATA_URI.fullmatch(uri)
    if match is None:
        raise errors.InvalidParameter(
            f"{what} must be an http(s) URL or a data URI of the form "
            f"data:{{MIME_type}};base64,{{data}} with MIME type {allowed}"
        )
    mime = match["mime"].lower()
    if mime not in allowed_mimes:
        raise errors.InvalidParameter(
            f"{what} has MIME type {mime!r}; the data URI MIME type must be one of {allowed}"
        )
    try:
        data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidParameter(f"{what} data URI does not hold valid base64") from None
    if not data:
        raise errors.InvalidParameter(f"{what} data URI is empty")
    return mime, data


# --------------------------------------------------------------------------- images


@contextmanager
def _open_image(source: bytes | Path) -> Iterator[Image.Image]:
    """Open an allowed-format image, header only, refusing decompression bombs."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        img = Image.open(fp, formats=list(IMAGE_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels() from None
    except _PIL_DECODE_ERRORS:
        raise errors.UnsupportedFileFormat(
            f"img_url is not a readable image; supported formats are {_IMAGE_KINDS}"
        ) from None
    with img:
        if img.width * img.height > MAX_PIXELS:
            raise _too_many_pixels()
        yield img


def _too_many_pixels() -> errors.InvalidParameter:
    return errors.InvalidParameter(
        f"img_url has too many pixels; width and height must each be {_SIDES}"
    )


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag, read from the header only (1 when absent or unreadable)."""
    if img.format in ("PNG", "BMP") and "exif" not in img.info:
        return 1  # Pillow would decode the whole PNG to look for a late eXIf chunk
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value)
    except (*_PIL_DECODE_ERRORS, TypeError, KeyError):
        return 1


def _check_sides(width: int, height: int) -> None:
    lo, hi = catalog.IMAGE_MIN_SIDE, catalog.IMAGE_MAX_SIDE
    if not (lo <= width <= hi and lo <= height <= hi):
        raise errors.InvalidParameter(
            f"img_url is {width}x{height} px; width and height must each be {_SIDES}"
        )


def probe_image(source: bytes | Path, *, max_bytes: int) -> ImageInfo:
    """Check an input image from its header: format, sides and file size.

    PNG chunk checksums are verified too (cheap, no decoding); other truncation shows up in
    :func:`load_image_rgb`.
    """
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    if size > max_bytes:
        raise errors.TooLarge(f"img_url is larger than {_megabytes(max_bytes)}")
    with _open_image(source) as img:
        fmt = str(img.format)
        width, height = img.size
        if _orientation(img) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        _check_sides(width, height)
        try:
            img.verify()
        except _PIL_DECODE_ERRORS:
            raise errors.UnsupportedFileFormat("img_url is a corrupt or truncated image") from None
    return ImageInfo(width=width, height=height, format=fmt, mime=IMAGE_FORMATS[fmt], size=size)


def load_image_rgb(path: Path) -> Image.Image:
    """Fully decode an input image: EXIF orientation applied, alpha flattened onto black, RGB."""
    with _open_image(path) as img:
        try:
            img.load()
            upright = ImageOps.exif_transpose(img)
            return _flatten_rgb(upright)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels() from None
        except _PIL_DECODE_ERRORS:
            raise errors.UnsupportedFileFormat("img_url is a corrupt or truncated image") from None


def _flatten_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        img = img.point(lambda v: v / 256) if img.mode != "F" else img
        img = img.convert("L")
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


# --------------------------------------------------------------------------- audio


def probe_audio(path: Path) -> AudioInfo:
    """Check an ``audio_url`` file: wav (PCM) or mp3, 3 to 30 s, at most 15 MB.

    The duration is measured by decoding (stopping once past the limit), which also proves
    the file decodes.
    """
    size = path.stat().st_size
    if size > catalog.AUDIO_MAX_BYTES:
        raise errors.TooLarge(f"audio_url is larger than {_megabytes(catalog.AUDIO_MAX_BYTES)}")
    try:
        with av.open(str(path), mode="r") as container:
            fmt, stream = _audio_stream(container)
            rate = stream.codec_context.sample_rate
            channels = stream.codec_context.layout.nb_channels
            duration = _decoded_seconds(container, stream)
    except (av.FFmpegError, ValueError, UnicodeDecodeError):
        raise errors.UnsupportedFileFormat(
            "audio_url could not be decoded; it must be a wav (PCM) or mp3 file"
        ) from None
    if duration <= 0 or rate <= 0:
        raise errors.UnsupportedFileFormat("audio_url holds no decodable audio")
    if duration < catalog.AUDIO_MIN_SECONDS - AUDIO_DURATION_GRACE:
        raise errors.InvalidParameter(
            f"audio_url is {duration:.2f} s long; it must be {_audio_seconds()}"
        )
    return AudioInfo(duration=duration, format=fmt, size=size, sample_rate=rate, channels=channels)


def _audio_stream(container: av.container.InputContainer) -> tuple[str, av.AudioStream]:
    names = set(container.format.name.split(","))
    if not container.streams.audio:
        raise errors.UnsupportedFileFormat("audio_url holds no audio stream")
    stream = container.streams.audio[0]
    codec = stream.codec_context.name
    if "wav" in names and codec.startswith("pcm_"):
        return "wav", stream
    if "mp3" in names and codec.startswith("mp3"):
        return "mp3", stream
    raise errors.UnsupportedFileFormat(
        f"audio_url is {container.format.name}/{codec}; it must be a wav (PCM) or mp3 file"
    )


def _decoded_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float:
    """Sum of decoded samples / rate; raises as soon as the audio is over the limit."""
    limit = catalog.AUDIO_MAX_SECONDS + AUDIO_DURATION_GRACE
    seconds = 0.0
    for frame in container.decode(stream):
        seconds += frame.samples / (frame.sample_rate or stream.codec_context.sample_rate)
        if seconds > limit:
            raise errors.InvalidParameter(
                f"audio_url is longer than {catalog.AUDIO_MAX_SECONDS:g} s; "
                f"it must be {_audio_seconds()}"
            )
    return seconds


def _audio_seconds() -> str:
    return f"{catalog.AUDIO_MIN_SECONDS:g} to {catalog.AUDIO_MAX_SECONDS:g} s long"


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"

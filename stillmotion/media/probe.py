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
from PIL import Image, UnidentifiedImageError

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
#: How much of the image one step of :func:`load_image_rgb`'s reduction converts at once.
BAND_PIXELS = 1_000_000
#: The request fields named in error messages.
IMAGE_FIELD = "input.img_url"
AUDIO_FIELD = "input.audio_url"
#: Grace on the audio duration bounds, for encoder padding (e.g. mp3 without a gapless tag).
AUDIO_DURATION_GRACE = 0.1

_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
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
def _open_image(source: bytes | Path, field: str) -> Iterator[Image.Image]:
    """Open an allowed-format image, header only, refusing decompression bombs."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        img = Image.open(fp, formats=list(IMAGE_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(field) from None
    except _PIL_DECODE_ERRORS:
        raise errors.UnsupportedFileFormat(
            f"{field} is not a readable image; supported formats are {_IMAGE_KINDS}"
        ) from None
    with img:
        if img.width * img.height > MAX_PIXELS:
            raise _too_many_pixels(field)
        yield img


def _too_many_pixels(field: str) -> errors.InvalidParameter:
    return errors.InvalidParameter(
        f"{field} has too many pixels (at most {MAX_PIXELS:,} are decoded); "
        f"width and height must each be {_SIDES}"
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


def _check_sides(width: int, height: int, field: str) -> None:
    lo, hi = catalog.IMAGE_MIN_SIDE, catalog.IMAGE_MAX_SIDE
    if not (lo <= width <= hi and lo <= height <= hi):
        raise errors.InvalidParameter(
            f"{field} is {width}x{height} px; width and height must each be {_SIDES}"
        )


def probe_image(source: bytes | Path, *, max_bytes: int, field: str = IMAGE_FIELD) -> ImageInfo:
    """Check an input image from its header: format, sides and file size.

    PNG chunk checksums are verified too (cheap, no decoding); other truncation shows up in
    :func:`load_image_rgb`.
    """
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    if size > max_bytes:
        raise errors.TooLarge(f"{field} is larger than {_megabytes(max_bytes)}")
    with _open_image(source, field) as img:
        fmt = str(img.format)
        width, height = img.size
        if _orientation(img) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        _check_sides(width, height, field)
        try:
            img.verify()
        except _PIL_DECODE_ERRORS:
            raise errors.UnsupportedFileFormat(f"{field} is a corrupt or truncated image") from None
    return ImageInfo(width=width, height=height, format=fmt, mime=IMAGE_FORMATS[fmt], size=size)


def load_image_rgb(
    path: Path, *, fit: tuple[int, int] | None = None, field: str = IMAGE_FIELD
) -> Image.Image:
    """Decode an input image: EXIF orientation applied, alpha flattened onto black, RGB.

    With ``fit`` (width, height, as displayed) the image comes back only as large as
    needed to cover that box: a JPEG is decoded at a reduced scale (``draft``, 1/2 to 1/8),
    anything else is shrunk by the largest whole factor that keeps it covering ``fit``
    (``reduce``, a box filter), band by band so that no full-size copy is ever made. Either
    way, for a box of the image's aspect ratio (as the output's is), each side ends below
    twice ``fit``'s. Without ``fit`` it is decoded at full size.
    At most :data:`MAX_PIXELS` are ever decoded (the side limits).
    """
    with _open_image(path, field) as img:
        try:
            if fit is not None:
                img.draft("RGB", _upright_box(fit, _orientation(img)))
            img.load()
            orientation = _loaded_orientation(img)
            want = _upright_box(fit, orientation) if fit is not None else img.size
            factor = max(1, min(img.width // want[0], img.height // want[1]))
            rgb = _reduced_rgb(img, factor)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(field) from None
        except _PIL_DECODE_ERRORS:
            raise errors.UnsupportedFileFormat(f"{field} is a corrupt or truncated image") from None
    method = _TRANSPOSE.get(orientation)
    return rgb.transpose(method) if method is not None else rgb


def _upright_box(box: tuple[int, int], orientation: int) -> tuple[int, int]:
    """``box`` (as displayed) in the stored image's axes."""
    w, h = (max(1, int(v)) for v in box)
    return (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)


def _loaded_orientation(img: Image.Image) -> int:
    """The EXIF orientation of a loaded image (a PNG's eXIf chunk may follow the pixels)."""
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except (*_PIL_DECODE_ERRORS, TypeError, KeyError):
        return 1


def _reduced_rgb(img: Image.Image, factor: int) -> Image.Image:
    """``img`` as RGB, ``factor`` times smaller (rounded up), converted in bands of rows.

    Each band is a small copy (flattened to RGB first, so transparency is averaged as
    composited on black), so the only full-size buffer is the decoded image itself.
    """
    if factor == 1 and img.mode == "RGB":
        return img._new(img.im)  # the decoded pixels themselves, not a copy; outlive close()
    width, height = img.size
    rows = max(1, BAND_PIXELS // (width * factor)) * factor
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        band = _flatten_rgb(img.crop((0, top, width, min(height, top + rows))))
        out.paste(band.reduce(factor) if factor > 1 else band, (0, top // factor))
    return out


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


def probe_audio(path: Path, field: str = AUDIO_FIELD) -> AudioInfo:
    """Check an ``audio_url`` file: wav (PCM) or mp3, 3 to 30 s, at most 15 MB.

    The duration is measured by decoding (stopping once past the limit), which also proves
    the file decodes.
    """
    size = path.stat().st_size
    if size > catalog.AUDIO_MAX_BYTES:
        raise errors.TooLarge(f"{field} is larger than {_megabytes(catalog.AUDIO_MAX_BYTES)}")
    try:
        with av.open(str(path), mode="r") as container:
            fmt, stream = _audio_stream(container, field)
            rate = stream.codec_context.sample_rate
            channels = stream.codec_context.layout.nb_channels
            duration = _decoded_seconds(container, stream, field)
    except (av.FFmpegError, ValueError, UnicodeDecodeError):
        raise errors.UnsupportedFileFormat(
            f"{field} could not be decoded; it must be a wav (PCM) or mp3 file"
        ) from None
    if duration <= 0 or rate <= 0:
        raise errors.UnsupportedFileFormat(f"{field} holds no decodable audio")
    if duration < catalog.AUDIO_MIN_SECONDS - AUDIO_DURATION_GRACE:
        raise errors.InvalidParameter(
            f"{field} is {duration:.2f} s long; it must be {_audio_seconds()}"
        )
    return AudioInfo(duration=duration, format=fmt, size=size, sample_rate=rate, channels=channels)


def _audio_stream(container: av.container.InputContainer, field: str) -> tuple[str, av.AudioStream]:
    names = set(container.format.name.split(","))
    if not container.streams.audio:
        raise errors.UnsupportedFileFormat(f"{field} holds no audio stream")
    stream = container.streams.audio[0]
    codec = stream.codec_context.name
    if "wav" in names and codec.startswith("pcm_"):
        return "wav", stream
    if "mp3" in names and codec.startswith("mp3"):
        return "mp3", stream
    raise errors.UnsupportedFileFormat(
        f"{field} is {container.format.name}/{codec}; it must be a wav (PCM) or mp3 file"
    )


def _decoded_seconds(
    container: av.container.InputContainer, stream: av.AudioStream, field: str
) -> float:
    """Sum of decoded samples / rate; raises as soon as the audio is over the limit."""
    limit = catalog.AUDIO_MAX_SECONDS + AUDIO_DURATION_GRACE
    seconds = 0.0
    for frame in container.decode(stream):
        seconds += frame.samples / (frame.sample_rate or stream.codec_context.sample_rate)
        if seconds > limit:
            raise errors.InvalidParameter(
                f"{field} is longer than {catalog.AUDIO_MAX_SECONDS:g} s; "
                f"it must be {_audio_seconds()}"
            )
    return seconds


def _audio_seconds() -> str:
    return f"{catalog.AUDIO_MIN_SECONDS:g} to {catalog.AUDIO_MAX_SECONDS:g} s long"


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"

"""stillmotion.media.probe: data URIs, image and audio checks, on media made in the tests."""

from __future__ import annotations

import base64
import io
import os
import struct
import wave
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from stillmotion import catalog, errors
from stillmotion.media.probe import (
    MAX_PIXELS,
    decode_data_uri,
    load_image_rgb,
    probe_audio,
    probe_image,
)

MB = 1024 * 1024
RED, BLUE = (255, 0, 0), (0, 0, 255)


# --------------------------------------------------------------------------- helpers


def image_bytes(fmt: str, size: tuple[int, int], mode: str = "RGB", **save: object) -> bytes:
    img = Image.new(mode, size, color=(10, 200, 30) if mode == "RGB" else None)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def bilevel_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG, all black: tiny on disk, ``width*height`` pixels when decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    pixels = zlib.compressobj(9)
    idat = b"".join(pixels.compress(row) for _ in range(height)) + pixels.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    header = b"\x89PNG\r\n\x1a\n"
    return header + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_wav(path: Path, seconds: float, rate: int = 16000, channels: int = 1) -> Path:
    n = int(seconds * rate)
    tone = (np.sin(2 * np.pi * 440 * np.arange(n) / rate) * 9000).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.repeat(tone, channels).tobytes())
    return path


def encode_audio(path: Path, fmt: str, codec: str, seconds: float, rate: int = 44100) -> Path:
    """Encode a mono tone with PyAV (the frames are s16; PyAV converts to the codec's format)."""
    n = int(seconds * rate)
    tone = (np.sin(2 * np.pi * 440 * np.arange(n) / rate) * 9000).astype(np.int16)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        for start in range(0, n, 1152):
            frame = av.AudioFrame.from_ndarray(
                tone[start : start + 1152].reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


# --------------------------------------------------------------------------- data URIs


def test_data_uri_good() -> None:
    png = image_bytes("PNG", (240, 240))
    uri = "data:IMAGE/PNG;base64," + base64.b64encode(png).decode()
    assert decode_data_uri(uri, "img_url", catalog.IMAGE_MIMES) == ("image/png", png)


@pytest.mark.parametrize(
    ("uri", "hint"),
    [
        ("data:image/gif;base64,R0lGODlhAQABAAAAACw=", "image/gif"),
        ("data:image/png;base64,@@not-base64@@", "base64"),
        ("data:image/png;base64,AAA", "base64"),  # bad padding
        ("data:image/png;base64,", "empty"),
        ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB", "data:{MIME_type};base64"),
        ("data:image/png,iVBORw0KGgo=", "data:{MIME_type};base64"),
        ("data:;base64,iVBORw0KGgo=", "data:{MIME_type};base64"),
    ],
)
def test_data_uri_bad(uri: str, hint: str) -> None:
    with pytest.raises(errors.InvalidParameter) as info:
        decode_data_uri(uri, "img_url", catalog.IMAGE_MIMES)
    assert info.value.code == "InvalidParameter" and info.value.status == 400
    assert info.value.message.startswith("img_url") and hint in info.value.message


def test_data_uri_bad_mime_lists_allowed_types() -> None:
    with pytest.raises(errors.InvalidParameter, match="image/jpeg, image/png, image/bmp"):
        decode_data_uri("data:text/plain;base64,aGk=", "img_url", catalog.IMAGE_MIMES)


# --------------------------------------------------------------------------- probe_image


@pytest.mark.parametrize(
    ("fmt", "mode", "size", "mime"),
    [
        ("JPEG", "RGB", (640, 480), "image/jpeg"),
        ("PNG", "RGBA", (240, 8000), "image/png"),
        ("BMP", "RGB", (240, 240), "image/bmp"),
        ("WEBP", "RGB", (1000, 300), "image/webp"),
    ],
)
def test_probe_image_allowed_formats(
    fmt: str, mode: str, size: tuple[int, int], mime: str, tmp_path: Path
) -> None:
    data = image_bytes(fmt, size, mode)
    info = probe_image(data, max_bytes=20 * MB)
    assert (info.width, info.height, info.format, info.mime) == (*size, fmt, mime)
    assert info.size == len(data)
    path = tmp_path / "img"
    path.write_bytes(data)
    assert probe_image(path, max_bytes=20 * MB) == info


@pytest.mark.parametrize("size", [(239, 300), (300, 239), (8001, 240), (240, 8001)])
def test_probe_image_side_limits(size: tuple[int, int]) -> None:
    with pytest.raises(errors.InvalidParameter) as info:
        probe_image(image_bytes("PNG", size, "L"), max_bytes=20 * MB)
    assert info.value.code == "InvalidParameter"
    message = info.value.message
    assert message.startswith("input.img_url ") and f"{size[0]}x{size[1]}" in message
    assert "240 to 8000 px" in message


def test_probe_image_largest_allowed_is_accepted() -> None:
    info = probe_image(bilevel_png(8000, 8000), max_bytes=20 * MB)
    assert (info.width, info.height) == (8000, 8000)
    assert info.width * info.height == MAX_PIXELS


def test_probe_image_too_many_bytes() -> None:
    data = image_bytes("BMP", (300, 300))
    with pytest.raises(errors.TooLarge) as info:
        probe_image(data, max_bytes=len(data) - 1)
    assert info.value.code == "BadRequest.TooLarge"
    assert info.value.message.startswith("input.img_url ")
    assert probe_image(data, max_bytes=len(data)).size == len(data)


@pytest.mark.parametrize(
    "data",
    [
        image_bytes("GIF", (300, 300), "L"),
        image_bytes("TIFF", (300, 300)),
        os.urandom(4096),
        b"",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 30,  # PNG signature, broken header
    ],
    ids=["gif", "tiff", "random", "empty", "broken-png"],
)
def test_probe_image_unsupported(data: bytes) -> None:
    with pytest.raises(errors.UnsupportedFileFormat) as info:
        probe_image(data, max_bytes=20 * MB)
    assert info.value.code == "BadRequest.UnsupportedFileFormat" and info.value.status == 415
    assert info.value.message.startswith("input.img_url ")
    assert "JPEG, PNG, BMP or WEBP" in info.value.message


def test_probe_image_truncated_png() -> None:
    data = image_bytes("PNG", (400, 400), "RGB", compress_level=0)
    with pytest.raises(errors.UnsupportedFileFormat, match="truncated"):
        probe_image(data[: len(data) // 2], max_bytes=20 * MB)


@pytest.mark.parametrize("side", [9000, 10000, 20000])
def test_decompression_bomb_refused(side: int, tmp_path: Path) -> None:
    """9000^2 passes Pillow's own limit (our cap refuses it); 10000^2 makes Pillow warn and
    20000^2 makes it raise: all come out as the same InvalidParameter, before decoding."""
    path = tmp_path / "bomb.png"
    path.write_bytes(bilevel_png(side, side))
    assert path.stat().st_size < 100 * 1024
    for call in (
        lambda: probe_image(path, max_bytes=20 * MB),
        lambda: load_image_rgb(path),
        lambda: load_image_rgb(path, fit=(1280, 720)),
    ):
        with pytest.raises(errors.InvalidParameter, match="too many pixels") as info:
            call()
        assert info.value.status == 400 and info.value.code == "InvalidParameter"
        assert info.value.message.startswith("input.img_url ")
        assert f"{MAX_PIXELS:,}" in info.value.message


# --------------------------------------------------------------------------- load_image_rgb


def test_load_applies_exif_orientation(tmp_path: Path) -> None:
    """Stored 300x240, left red / right blue, orientation 6 (rotate 90 clockwise to show):
    shown 240x300 with red on top."""
    img = Image.new("RGB", (300, 240), BLUE)
    img.paste(RED, (0, 0, 150, 240))
    exif = img.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", exif=exif, quality=95)

    info = probe_image(path, max_bytes=20 * MB)
    assert (info.width, info.height) == (240, 300)
    out = load_image_rgb(path)
    assert out.mode == "RGB" and out.size == (240, 300)
    assert _near(out.getpixel((120, 30)), RED) and _near(out.getpixel((120, 270)), BLUE)


def _near(got: object, want: tuple[int, int, int], tol: int = 40) -> bool:
    assert isinstance(got, tuple)
    return all(abs(a - b) <= tol for a, b in zip(got, want, strict=True))


def test_load_flattens_alpha_onto_black(tmp_path: Path) -> None:
    img = Image.new("RGBA", (300, 300), (255, 255, 255, 0))
    img.paste((255, 255, 255, 255), (0, 0, 150, 300))
    path = tmp_path / "alpha.png"
    img.save(path)
    out = load_image_rgb(path)
    assert out.mode == "RGB" and out.size == (300, 300)
    assert out.getpixel((10, 10)) == (255, 255, 255)
    assert out.getpixel((290, 10)) == (0, 0, 0)


def test_load_palette_transparency_and_16_bit(tmp_path: Path) -> None:
    pal = Image.new("P", (240, 240), 1)
    pal.putpalette([0, 0, 0, 250, 250, 250] + [0] * 762)
    pal.paste(0, (0, 0, 120, 240))
    pal.save(tmp_path / "p.png", transparency=1)  # the light right half is see-through
    out = load_image_rgb(tmp_path / "p.png")
    assert out.mode == "RGB" and out.getpixel((200, 10)) == (0, 0, 0)

    deep = Image.fromarray(np.full((240, 240), 40000, dtype=np.uint16))
    deep.save(tmp_path / "deep.png")
    grey = load_image_rgb(tmp_path / "deep.png").getpixel((5, 5))
    assert grey == (156, 156, 156)  # 40000 / 256, not clipped to 255


def png_rgba16(pixels: np.ndarray) -> bytes:
    """A 16-bit RGBA PNG (Pillow cannot write one) of ``pixels``, an ``H x W x 4`` uint16."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    h, w, _ = pixels.shape
    rows = np.zeros((h, 1 + w * 8), np.uint8)  # filter byte 0, then big-endian samples
    rows[:, 1:] = pixels.astype(">u2").view(np.uint8).reshape(h, w * 8)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0)
    idat = zlib.compress(rows.tobytes(), 6)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def quadrants(size: tuple[int, int]) -> Image.Image:
    """Red, green / blue, white quadrants."""
    w, h = size
    img = Image.new("RGB", size, (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, w // 2, h // 2))
    img.paste((0, 255, 0), (w // 2, 0, w, h // 2))
    img.paste((0, 0, 255), (0, h // 2, w // 2, h))
    return img


def assert_quadrants(out: Image.Image, tol: int = 12) -> None:
    w, h = out.size
    for (fx, fy), want in {
        (0.25, 0.25): (255, 0, 0),
        (0.75, 0.25): (0, 255, 0),
        (0.25, 0.75): (0, 0, 255),
        (0.75, 0.75): (255, 255, 255),
    }.items():
        assert _near(out.getpixel((int(fx * w), int(fy * h))), want, tol), (fx, fy)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP", "JPEG"])
def test_load_with_fit_decodes_only_what_the_output_needs(fmt: str, tmp_path: Path) -> None:
    """A 4000x3000 image for an 800x600 box comes back covering the box, under twice its
    sides, with its colours where they were (JPEG through ``draft``, the rest reduced)."""
    path = tmp_path / f"big.{fmt.lower()}"
    quadrants((4000, 3000)).save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    out = load_image_rgb(path, fit=(800, 600))
    assert out.mode == "RGB"
    assert 800 <= out.width < 1600 and 600 <= out.height < 1200
    assert_quadrants(out, tol=40 if fmt in ("JPEG", "WEBP") else 2)
    assert load_image_rgb(path, fit=(4000, 3000)).size == (4000, 3000)  # never enlarged
    assert load_image_rgb(path, fit=(6000, 5000)).size == (4000, 3000)


def test_load_with_fit_bounds_a_maximal_png(tmp_path: Path) -> None:
    """8000x8000 in a small file (what limits on sides and bytes let through): what is
    handed on is bounded by the box, not by the image."""
    path = tmp_path / "huge.png"
    quadrants((8000, 8000)).save(path, compress_level=1)
    assert path.stat().st_size < 2 * MB
    out = load_image_rgb(path, fit=(1920, 1920))
    assert (out.width, out.height) == (2000, 2000)  # reduced 4x: >= the box, < twice it
    assert_quadrants(out, tol=0)


def test_load_with_fit_swaps_the_box_for_exif_rotation(tmp_path: Path) -> None:
    img = Image.new("RGB", (3000, 2000), BLUE)
    img.paste(RED, (0, 0, 1500, 2000))
    exif = img.getexif()
    exif[0x0112] = 6  # shown 2000x3000, red on top
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", exif=exif, quality=95)
    out = load_image_rgb(path, fit=(400, 600))
    assert out.width < out.height and 400 <= out.width < 800 and 600 <= out.height < 1200
    assert _near(out.getpixel((out.width // 2, out.height // 8)), RED)
    assert _near(out.getpixel((out.width // 2, out.height * 7 // 8)), BLUE)


def test_load_16_bit_rgba_and_palette_keep_their_colours(tmp_path: Path) -> None:
    """16-bit samples scaled to 8 bits, alpha composited on black, reduced or not."""
    pixels = np.empty((1200, 1600, 4), np.uint16)
    pixels[:] = (0x3000, 0x8000, 0xC000, 0xFFFF)  # opaque (48, 128, 192)
    pixels[:, 800:] = (0xF000, 0xD000, 0x2000, 0x8000)  # half-transparent (240, 208, 32)
    path = tmp_path / "deep.png"
    path.write_bytes(png_rgba16(pixels))
    for fit in (None, (200, 150)):
        out = load_image_rgb(path, fit=fit)
        assert out.size == ((1600, 1200) if fit is None else (200, 150))
        assert _near(out.getpixel((out.width // 4, 5)), (48, 128, 192), 2)
        assert _near(out.getpixel((out.width * 3 // 4, 5)), (120, 104, 16), 2)

    pal = Image.new("P", (1600, 1200), 1)
    pal.putpalette([200, 30, 60, 250, 250, 250] + [0] * 762)
    pal.paste(0, (0, 0, 800, 1200))
    pal.save(tmp_path / "p.png", transparency=1)
    out = load_image_rgb(tmp_path / "p.png", fit=(400, 300))
    assert out.size == (400, 300)
    assert out.getpixel((100, 10)) == (200, 30, 60) and out.getpixel((300, 10)) == (0, 0, 0)


def test_load_truncated_jpeg(tmp_path: Path) -> None:
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 300, 3), np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert probe_image(path, max_bytes=20 * MB).format == "JPEG"  # the header is intact
    with pytest.raises(errors.UnsupportedFileFormat, match="truncated"):
        load_image_rgb(path)


def test_load_refuses_other_formats(tmp_path: Path) -> None:
    path = tmp_path / "a.gif"
    path.write_bytes(image_bytes("GIF", (300, 300), "L"))
    with pytest.raises(errors.UnsupportedFileFormat):
        load_image_rgb(path)


# --------------------------------------------------------------------------- probe_audio


def test_probe_wav(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", 5.0, rate=48000, channels=2)
    info = probe_audio(path)
    assert info.format == "wav" and info.duration == pytest.approx(5.0, abs=1e-3)
    assert (info.sample_rate, info.channels) == (48000, 2)
    assert info.size == path.stat().st_size


@pytest.mark.parametrize("seconds", [3.0, 30.0])
def test_probe_wav_bounds_are_inclusive(seconds: float, tmp_path: Path) -> None:
    assert probe_audio(write_wav(tmp_path / "a.wav", seconds)).duration == pytest.approx(seconds)


def test_probe_mp3(tmp_path: Path) -> None:
    info = probe_audio(encode_audio(tmp_path / "a.mp3", "mp3", "libmp3lame", 4.0))
    assert info.format == "mp3" and info.duration == pytest.approx(4.0, abs=0.06)
    assert (info.sample_rate, info.channels) == (44100, 1)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: write_wav(p, 2.0), "2.00 s"),
        (lambda p: write_wav(p, 31.0), "longer than 30 s"),
        (lambda p: encode_audio(p, "mp3", "libmp3lame", 31.0), "longer than 30 s"),
    ],
    ids=["wav-2s", "wav-31s", "mp3-31s"],
)
def test_probe_audio_duration_limits(make: object, words: str, tmp_path: Path) -> None:
    assert callable(make)
    with pytest.raises(errors.InvalidParameter) as info:
        probe_audio(make(tmp_path / "a"))
    assert info.value.code == "InvalidParameter"
    assert info.value.message.startswith("input.audio_url ") and words in info.value.message
    assert "3 to 30 s" in info.value.message


@pytest.mark.parametrize(
    ("fmt", "codec"),
    [("flac", "flac"), ("ogg", "libopus"), ("wav", "adpcm_ms"), ("adts", "aac")],
)
def test_probe_audio_other_formats(fmt: str, codec: str, tmp_path: Path) -> None:
    rate = 48000 if codec == "libopus" else 44100
    path = encode_audio(tmp_path / f"a.{fmt}", fmt, codec, 5.0, rate=rate)
    with pytest.raises(errors.UnsupportedFileFormat) as info:
        probe_audio(path)
    assert info.value.code == "BadRequest.UnsupportedFileFormat"
    assert info.value.message.startswith("input.audio_url ")
    assert "wav (PCM) or mp3" in info.value.message


@pytest.mark.parametrize("data", [os.urandom(50_000), b"", b"RIFF\x00\x00\x00\x00WAVEjunk"])
def test_probe_audio_undecodable(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    with pytest.raises(errors.UnsupportedFileFormat):
        probe_audio(path)


def test_probe_audio_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.wav"
    with path.open("wb") as out:
        out.truncate(catalog.AUDIO_MAX_BYTES + 1)  # sparse: the size check comes first
    with pytest.raises(errors.TooLarge) as info:
        probe_audio(path)
    assert info.value.code == "BadRequest.TooLarge" and "15 MB" in info.value.message
    assert info.value.message.startswith("input.audio_url ")

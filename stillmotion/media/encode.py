"""Write frames (and optional audio) to an H.264/AAC MP4 with ``+faststart``.

Video: libx264, yuv420p (BT.709, limited range, tagged), constant frame rate with
``pts = index`` in a ``1/fps`` time base. Audio: AAC at the given sample rate, stereo,
encoded on its own thread as the video advances and cut or padded on close so that its
duration is exactly the video's. Video encoding runs on a background thread
(``background=True``): the caller draws the next frames while x264 works.

Frames come as RGB (:meth:`VideoWriter.write`) or, cheapest, as ready yuv420p planes
(:meth:`VideoWriter.write_planes`; see :func:`yuv420p_planes` and :func:`rgb_to_yuv420p`).
"""

from __future__ import annotations

import queue
import threading
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np
from PIL import Image

#: Measured on 2 cores, 5 s of 720P push-in: veryfast took as long as superfast (~0.8 s)
#: for a file 4.7x smaller at nearly the same PSNR (41.6 vs 41.9 dB); faster took twice as
#: long for no visible gain. CRF 20: high quality; these smooth moves compress well anyway.
DEFAULT_PRESET = "veryfast"
DEFAULT_CRF = 20
AUDIO_BITRATE = 128_000
AAC_FRAME = 1024
#: Frames queued for the encoder thread: up to this many bytes (the renderer runs ahead and
#: then keeps out of x264's way), between 4 and 64 frames. 48 MB cost ~35 MB more memory per
#: render process than 16 MB, for no measurable speed.
_QUEUE_BYTES = 16 * 1024 * 1024
_SPARE_ROWS = 2  # zeroed rows after the picture, for x264's reads past its end
_STOP = object()


class VideoWriter:
    """Encode frames (RGB, or yuv420p planes) and optional audio to an MP4 at ``path``.

    ``audio`` is float32 ``channels x samples`` at ``sample_rate`` (mono is duplicated to
    stereo); it is encoded on its own thread, following the video, and ends exactly where
    the video ends (cut, or padded with silence). ``threads`` x264 threads: frame threads (the
    default, faster) or sliced threads (``sliced_threads=True``).
    Use as a context manager, or call :meth:`close` (or :meth:`abort`).
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: int,
        *,
        audio: np.ndarray | None = None,
        sample_rate: int = 48_000,
        preset: str = DEFAULT_PRESET,
        crf: int = DEFAULT_CRF,
        threads: int = 2,
        sliced_threads: bool = False,
        background: bool = True,
    ) -> None:
        if width % 2 or height % 4:
            raise ValueError("yuv420p here needs an even width and a height divisible by 4")
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.sample_rate = sample_rate
        self.frames_written = 0
        self._stride = (width + 63) // 64 * 64 + 64  # row padding x264 may read, zeroed
        self._lock = threading.Lock()  # around the muxer, shared with the audio thread
        self._closed = False
        self._error: BaseException | None = None
        self._queue: queue.Queue[Any] | None = None
        self._thread: threading.Thread | None = None
        self._audio: _AudioTrack | None = None
        self._container = av.open(
            str(self.path), mode="w", format="mp4", options={"movflags": "+faststart"}
        )
        try:
            self._video = self._add_video(preset, crf, threads, sliced_threads)
            if audio is not None:
                data = _as_stereo(audio)
                self._audio = _AudioTrack(self._container, data, sample_rate, self._lock)
            self._container.start_encoding()  # opens every codec before any thread muxes
        except BaseException:
            self._discard()
            raise
        if self._audio is not None:
            self._audio.start()
        if background:
            depth = min(64, max(4, _QUEUE_BYTES // (self._stride * height * 3 // 2)))
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._drain, name="VideoWriter", daemon=True)
            self._thread.start()

    @property
    def has_audio(self) -> bool:
        return self._audio is not None

    def _add_video(self, preset: str, crf: int, threads: int, sliced: bool) -> Any:
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        cc = stream.codec_context
        cc.time_base = Fraction(1, self.fps)
        cc.thread_count = threads
        # Frame threads are ~10 % faster than sliced ones beside a busy renderer. libx264
        # reads a little uninitialised heap, so the same frames could encode to different
        # bytes run to run (seen at 832x480 and 816x1104); the motion engine's processes fix
        # that memory's contents (stillmotion.engines.motion.render.init_render_process),
        # and then both thread modes give identical output.
        cc.thread_type = "SLICE" if sliced else "FRAME"
        cc.color_range = 1  # MPEG (limited)
        cc.colorspace = cc.color_primaries = cc.color_trc = 1  # BT.709
        stream.options = {"preset": preset, "crf": str(crf)}
        return stream

    # -- writing ------------------------------------------------------------------------

    def write(self, frame: np.ndarray) -> None:
        """Add one ``height x width x 3`` uint8 RGB frame (see :func:`rgb_to_yuv420p`)."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"expected {self.height}x{self.width}x3 uint8, got {frame.shape}")
        self.write_planes(*rgb_to_yuv420p(frame))

    def write_planes(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        """Add one frame as BT.709 limited-range yuv420p planes (uint8, chroma half size).

        The planes are copied into a zeroed buffer with padded rows and spare rows after
        it, which the frame then points to: x264's SIMD code may read a little past the
        picture, and those reads see fixed values.
        """
        h, w, stride = self.height, self.width, self._stride
        if y.shape != (h, w) or u.shape != (h // 2, w // 2) or v.shape != (h // 2, w // 2):
            raise ValueError(f"expected planes {h}x{w} and {h // 2}x{w // 2}")
        buf = np.zeros((h * 3 // 2 + _SPARE_ROWS, stride), np.uint8)
        buf[:h, :w] = y
        chroma = buf[h : h * 3 // 2].reshape(h, stride // 2)  # U rows, then V rows
        chroma[: h // 2, : w // 2] = u
        chroma[h // 2 :, : w // 2] = v
        self._submit(av.VideoFrame.from_numpy_buffer(buf[: h * 3 // 2], "yuv420p", width=w))

    def _submit(self, frame: av.VideoFrame) -> None:
        """Encode now, or queue for the encoder thread; raises that thread's error, if any."""
        if self._closed:
            raise RuntimeError("VideoWriter is closed")
        self._raise_pending()
        if self._queue is None:
            self._encode_frame(frame)
        else:
            self._queue.put(frame)

    def _drain(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is None:
                try:
                    self._encode_frame(item)
                except BaseException as exc:  # handed to the caller on its next call
                    self._error = exc

    def _encode_frame(self, frame: av.VideoFrame) -> None:
        frame.pts = self.frames_written
        packets = self._video.encode(frame)
        with self._lock:
            self._container.mux(packets)
        self.frames_written += 1
        if self._audio is not None:
            self._audio.advance(self._samples_for(self.frames_written))

    def _samples_for(self, frames: int) -> int:
        return frames * self.sample_rate // self.fps

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    # -- closing ------------------------------------------------------------------------

    def _stop_thread(self) -> None:
        if self._thread is not None and self._queue is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Flush the encoders, end the audio with the video, write the file.

        On an error the partial file is removed and the error raised.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_thread()
            self._raise_pending()
            packets = self._video.encode(None)
            with self._lock:
                self._container.mux(packets)
            if self._audio is not None:
                self._audio.advance(self._samples_for(self.frames_written), final=True)
                self._audio.join()
            self._container.close()
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        """Stop without finishing; the partial file is removed."""
        if self._closed:
            return
        self._closed = True
        self._error = self._error or RuntimeError("aborted")
        self._stop_thread()
        self._discard()

    def _discard(self) -> None:
        """Stop the audio thread, close the container as it is and delete the file."""
        if self._audio is not None:
            self._audio.stop()
        try:
            self._container.close()
        except Exception:  # a half-written container may fail to finalise; it is deleted
            pass
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def join_segments(
    segments: list[Path], path: str | Path, fps: int, *, audio: np.ndarray | None = None,
    sample_rate: int = 48_000,
) -> int:  # fmt: skip
    """Copy H.264 ``segments`` (each from a :class:`VideoWriter` with the same settings, so
    each starts with an IDR frame and all share one SPS/PPS) one after the other into an MP4
    at ``path``, without re-encoding; ``audio`` as in :class:`VideoWriter`. Returns the
    number of frames. On an error the partial file is removed and the error raised.
    """
    out = Path(path)
    container = av.open(str(out), mode="w", format="mp4", options={"movflags": "+faststart"})
    lock = threading.Lock()
    track: _AudioTrack | None = None
    try:
        frames = 0
        for index, segment in enumerate(segments):
            with av.open(str(segment)) as source:
                src = source.streams.video[0]
                if index == 0:
                    video = container.add_stream_from_template(src)
                    if audio is not None:
                        track = _AudioTrack(container, _as_stereo(audio), sample_rate, lock)
                    container.start_encoding()
                    if track is not None:
                        track.start()
                offset = round(Fraction(frames, fps) / (src.time_base or Fraction(1, fps)))
                for packet in source.demux(src):
                    if packet.dts is None or packet.pts is None:  # the end-of-stream marker
                        continue
                    packet.pts, packet.dts = packet.pts + offset, packet.dts + offset
                    packet.stream = video
                    with lock:
                        container.mux(packet)
                frames += src.frames
            if track is not None:
                track.advance(frames * sample_rate // fps, final=index == len(segments) - 1)
        if track is not None:
            track.join()
        container.close()
        return frames
    except BaseException:
        if track is not None:
            track.stop()
        try:
            container.close()
        except Exception:  # a half-written container may fail to finalise; it is deleted
            pass
        out.unlink(missing_ok=True)
        raise


class _AudioTrack:
    """AAC on its own thread, encoding up to the sample position the video has reached."""

    def __init__(
        self, container: Any, data: np.ndarray, sample_rate: int, lock: threading.Lock
    ) -> None:
        self.stream = container.add_stream("aac", rate=sample_rate, layout="stereo")
        self.stream.bit_rate = AUDIO_BITRATE
        self.stream.codec_context.time_base = Fraction(1, sample_rate)
        self._container, self._data, self._rate, self._lock = container, data, sample_rate, lock
        self._pos = 0
        self._target = 0
        self._final = False
        self._stopped = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="VideoWriter-audio", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def advance(self, end: int, final: bool = False) -> None:
        """Encode up to sample ``end`` (whole AAC frames; with ``final``, exactly ``end``)."""
        with self._wake:
            self._target = max(self._target, end)
            self._final = self._final or final
            self._wake.notify()

    def join(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while not (
                        self._stopped or self._final or self._pos + AAC_FRAME <= self._target
                    ):
                        self._wake.wait()
                    if self._stopped:
                        return
                    target, final = self._target, self._final
                while self._pos + AAC_FRAME <= target:
                    self._encode(self._pos, self._pos + AAC_FRAME)
                if final:
                    if self._pos < target:
                        self._encode(self._pos, target)
                    self._mux(self.stream.encode(None))
                    return
        except BaseException as exc:  # reported by join()
            self.error = exc

    def _encode(self, start: int, stop: int) -> None:
        chunk = self._data[:, start:stop]
        if chunk.shape[1] < stop - start:  # pad with silence past the end of the source
            chunk = np.pad(chunk, ((0, 0), (0, stop - start - chunk.shape[1])))
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk, dtype=np.float32), format="fltp", layout="stereo"
        )
        frame.sample_rate = self._rate
        frame.pts = start
        self._mux(self.stream.encode(frame))
        self._pos = stop

    def _mux(self, packets: list[av.Packet]) -> None:
        with self._lock:
            self._container.mux(packets)


def _as_stereo(audio: np.ndarray) -> np.ndarray:
    data = np.asarray(audio, dtype=np.float32)
    if data.ndim == 1:
        data = data[None, :]
    if data.ndim != 2 or data.shape[0] not in (1, 2):
        raise ValueError(f"audio must be channels x samples (1 or 2 channels), got {data.shape}")
    if data.shape[0] == 1:
        data = np.repeat(data, 2, axis=0)
    return data


#: BT.709 R'G'B' -> Y'CbCr, rows Y, Cb, Cr (Y in 0..1, Cb and Cr in -0.5..0.5).
_BT709 = (
    (0.2126, 0.7152, 0.0722),
    (-0.2126 / 1.8556, -0.7152 / 1.8556, 0.9278 / 1.8556),
    (0.7874 / 1.5748, -0.7152 / 1.5748, -0.0722 / 1.5748),
)


def yuv420p_planes(image: Image.Image) -> tuple[Image.Image, Image.Image, Image.Image]:
    """BT.709 limited-range (Y 16-235, C 16-240) planes of an RGB image with even sides.

    Chroma is the mean of each 2x2 block (centre-sited), so it can be cropped and scaled
    like the luma at half the size. Pillow's matrix conversion does the arithmetic in C.
    """
    if image.width % 2 or image.height % 2:
        raise ValueError("yuv420p needs even sides")
    rgb = image.convert("RGB")
    (yr, yg, yb), *chroma = _BT709
    y = rgb.convert("L", (yr * 219 / 255, yg * 219 / 255, yb * 219 / 255, 16.0))
    u, v = (
        rgb.convert("L", (r * 224 / 255, g * 224 / 255, b * 224 / 255, 128.0)).reduce(2)
        for r, g, b in chroma
    )
    return y, u, v


def rgb_to_yuv420p(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`yuv420p_planes` for an ``h x w x 3`` uint8 array."""
    y, u, v = yuv420p_planes(Image.fromarray(rgb, "RGB"))
    return np.asarray(y), np.asarray(u), np.asarray(v)

"""The relay's result: download the upstream MP4 (SSRF-guarded) and read what it holds."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import av
import httpx

from stillmotion.errors import PermanentEngineError, RetryableEngineError, ServiceError
from stillmotion.media.fetch import FetchPolicy, fetch_to_file

log = logging.getLogger("stillmotion.engines.dashscope")

MAX_VIDEO_BYTES = 1024 * 1024 * 1024
DOWNLOAD_FAILED = "InternalError.ResultDownload"


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    num_frames: int
    has_audio: bool


async def download_result(
    url: str,
    dest: Path,
    *,
    allow_private: bool,
    timeout: float,
    client: httpx.AsyncClient | None = None,
) -> Path:
    """Fetch the upstream ``video_url`` to ``dest``. A failure is retryable (the next attempt
    polls again and gets a fresh URL); its message never carries the URL."""
    policy = FetchPolicy(
        allow_private=allow_private,
        timeout=timeout,
        max_redirects=5,
        max_bytes=MAX_VIDEO_BYTES,
        allow_setting="STILLMOTION_DASHSCOPE_ALLOW_PRIVATE",
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        fetched = await fetch_to_file(url, dest, policy, what="video_url", client=client)
    except ServiceError as exc:
        log.warning("downloading an upstream result failed: %s (%s)", exc.code, exc.message)
        raise RetryableEngineError(
            f"downloading the upstream result failed ({exc.code})", code=DOWNLOAD_FAILED
        ) from None
    return fetched.path


def probe_video(path: Path) -> VideoInfo:
    """Size, rate, frame count and audio of an MP4; a file that is not one fails the task."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise PermanentEngineError("the upstream result has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or 0
            fps = float(rate)
            frames = int(stream.frames or 0)
            if not frames and stream.duration is not None and stream.time_base is not None:
                frames = round(float(stream.duration * stream.time_base) * fps)
            return VideoInfo(
                width=int(stream.codec_context.width),
                height=int(stream.codec_context.height),
                fps=fps,
                num_frames=frames,
                has_audio=bool(container.streams.audio),
            )
    except av.error.FFmpegError:
        raise PermanentEngineError("the upstream result is not a readable video") from None

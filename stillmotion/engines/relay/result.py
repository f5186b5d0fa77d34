"""The relay's result: download the upstream MP4 into the task's work directory and read
what it holds.

Two ways in: :func:`download_result` fetches a URL the upstream handed out (an object
store's, anywhere: SSRF-guarded like every fetch of ours); :func:`download_content` streams
an endpoint of the upstream itself (``GET /v1/videos/{id}/content``), with the channel's
key, through the relay's pool. Either failure is retryable (the next attempt polls again
and downloads again) and its message never carries the URL.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import av
import httpx

from stillmotion.engines.relay.http import JsonClient, UpstreamError, classify
from stillmotion.errors import PermanentEngineError, RetryableEngineError, ServiceError
from stillmotion.media.fetch import FetchPolicy, fetch_to_file

log = logging.getLogger("stillmotion.engines.relay")

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
    allow_setting: str = "STILLMOTION_ALLOW_PRIVATE_URLS",
) -> Path:
    """Fetch the upstream ``video_url`` to ``dest``. A failure is retryable (the next attempt
    polls again and gets a fresh URL); its message never carries the URL."""
    policy = FetchPolicy(
        allow_private=allow_private,
        timeout=timeout,
        max_redirects=5,
        max_bytes=MAX_VIDEO_BYTES,
        allow_setting=allow_setting,
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


async def download_content(
    client: JsonClient, url: str, key: str, dest: Path, *, timeout: float
) -> Path:
    """Stream ``url`` (an upstream endpoint) with ``key`` to ``dest``, at most
    :data:`MAX_VIDEO_BYTES`; ``dest`` is written only whole (through ``dest.part``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        async with asyncio.timeout(timeout):
            await _stream(client, url, key, part)
        part.replace(dest)
    except (UpstreamError, httpx.HTTPError, TimeoutError, _TooBig) as exc:
        what = exc.code if isinstance(exc, UpstreamError) else type(exc).__name__
        log.warning("downloading an upstream result failed: %s", what)
        raise RetryableEngineError(
            f"downloading the upstream result failed ({what})", code=DOWNLOAD_FAILED
        ) from None
    finally:
        part.unlink(missing_ok=True)
    return dest


class _TooBig(Exception):
    pass


async def _stream(client: JsonClient, url: str, key: str, part: Path) -> None:
    headers = {**client.auth(key), "Accept": "video/mp4, */*", "Accept-Encoding": "identity"}
    async with client.http.stream("GET", url, headers=headers) as response:
        if not response.is_success:
            await response.aread()
            raise classify(response, may_apply=False)
        size = 0
        with part.open("wb") as out:
            async for chunk in response.aiter_bytes(1 << 20):
                size += len(chunk)
                if size > MAX_VIDEO_BYTES:
                    raise _TooBig()
                out.write(chunk)


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

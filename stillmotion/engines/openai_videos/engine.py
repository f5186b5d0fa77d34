"""The ``openai-videos`` engine: stillmotion in front of a GPU fleet that serves Wan through
an OpenAI-style ``/v1/videos`` API (vLLM-Omni, SGLang Diffusion, a Dynamo frontend;
docs/gpu-fleet.md).

The relay protocol (admission by deferral, the submit marker, one submit with
``X-Stillmotion-Submit-Id``, the video id saved at once, polling with backoff and
``Retry-After``, the deadline, never submitting twice) is
:class:`~stillmotion.engines.relay.engine.RelayEngine`; this engine holds the wire mapping:
the client (:mod:`client`), the create body (:mod:`bodies`), the model map (:mod:`config`),
reconciliation through ``GET /v1/videos`` (:mod:`reconcile`) and the result: the MP4 from
``/content`` into our storage, with an audio track muxed in by us when the catalog's rule
gives the output audio and the server made silent video (as the ``wan`` engine does).

The worker fetches and checks the first frame (and an ``audio_url``) for this engine as for
``wan`` (``needs_media``), so the output geometry is the contract's and the server gets the
frame inline.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Literal

import av
import httpx

from stillmotion.domain import DRIVING_AUDIO, FIRST_FRAME
from stillmotion.engines.base import EngineJob, EngineResult, ProgressFn
from stillmotion.engines.openai_videos import bodies, reconcile
from stillmotion.engines.openai_videos.client import VideosClient
from stillmotion.engines.openai_videos.config import VideoModel, parse_model_map
from stillmotion.engines.relay.channels import Channel, channel_configs, key_fingerprint
from stillmotion.engines.relay.engine import RelayEngine
from stillmotion.engines.relay.follow import RelayTimings, Status, UpstreamTask
from stillmotion.engines.relay.result import (
    VideoInfo,
    download_content,
    download_result,
    probe_video,
)
from stillmotion.engines.relay_limits import RelayLimits
from stillmotion.errors import ModelUnavailable, PermanentEngineError
from stillmotion.media.audio import load_audio, synth_ambience
from stillmotion.media.encode import join_segments
from stillmotion.media.probe import IMAGE_FORMATS

log = logging.getLogger("stillmotion.engines.openai_videos")

DEFAULT_BASE_URL = "http://127.0.0.1:8091/v1"
ALLOW_SETTING = "STILLMOTION_OPENAI_VIDEOS_ALLOW_PRIVATE"
AUDIO_FAILED = "InternalError.AudioMux"


class OpenAIVideosEngine(RelayEngine):
    """Relay tasks to ``/v1/videos`` servers; see the module docstring."""

    name = "openai-videos"
    label = "openai-videos"
    media_kinds = frozenset({FIRST_FRAME, DRIVING_AUDIO})  # the frame up, the audio muxed here
    templates: frozenset[str] | None = frozenset()
    needs_media = True
    keys_required = False  # a fleet on a private network often takes no key

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_keys: str | list[str] = "",
        max_in_flight: int = 4,
        submit_rate: float = 2.0,
        query_rate: float = 20.0,
        channels: Any = None,
        model_map: Any = None,
        fps: int = 16,
        body: Literal["form", "json"] = "form",
        task_deadline: float = 3600.0,
        poll_first: float = 5.0,
        poll_max: float = 15.0,
        max_poll_failures: int = 20,
        download_timeout: float = 300.0,
        request_timeout: float = 60.0,
        allow_private: bool = False,
        max_connections: int = 256,
        limits: RelayLimits | None = None,  # shared by every worker (default: this process's)
    ) -> None:
        try:
            configs = channel_configs(
                "openai-videos",
                base_url=base_url,
                api_keys=api_keys,
                max_in_flight=max_in_flight,
                submit_rate=submit_rate,
                query_rate=query_rate,
                model_map=parse_model_map(model_map),
                channels=channels,
                parse_map=parse_model_map,
            )
            if body not in ("form", "json"):
                raise ValueError(f"body must be 'form' or 'json', not {body!r}")
        except (TypeError, ValueError) as exc:  # the runtime reports it as a setting error
            raise ModelUnavailable(f"openai-videos engine: {exc}") from None
        super().__init__(
            configs,
            timings=RelayTimings.of(
                poll_first=poll_first,
                poll_max=poll_max,
                max_poll_failures=max_poll_failures,
                task_deadline=task_deadline,
                download_timeout=download_timeout,
            ),
            request_timeout=request_timeout,
            allow_private=allow_private,
            max_connections=max_connections,
            limits=limits,
        )
        self.fps = max(1, fps)
        self.form = body == "form"

    # -- the wire mapping --------------------------------------------------------------

    def _make_client(self, http: httpx.AsyncClient) -> VideosClient:
        return VideosClient(http, self._channel_names, self.gate)

    def _client(self) -> VideosClient:
        return self._make_client(self.http)

    def entry(self, channel: Channel, model: str) -> VideoModel:
        found = channel.config.model_map.get(model)
        return found if isinstance(found, VideoModel) else VideoModel()

    async def _upstream_body(self, job: EngineJob, channel: Channel) -> dict[str, Any]:
        if job.image_path is None:  # needs_media: the runner always fetches it
            raise PermanentEngineError("openai-videos needs the first frame")
        entry = self.entry(channel, job.request.model)
        image = await asyncio.to_thread(_image, job.image_path)
        return bodies.build_body(
            job.request,
            entry,
            width=job.width,
            height=job.height,
            fps=entry.fps or self.fps,
            image=image,
            form=self.form,
        )

    async def _send(self, channel: Channel, key: str, body: dict[str, Any], submit_id: str) -> str:
        """The one submit call (a seam for tests that crash around it)."""
        who = key_fingerprint(key) if key else "no key"
        log.info("submitting to channel %s (%s)", channel.name, who)
        base = channel.config.base_url
        return await self._client().submit(base, key, body, submit_id, form=self.form)

    async def _find_submitted(
        self, job: EngineJob, channel: Channel, key: str, marker: dict[str, Any]
    ) -> str | None:
        return await reconcile.find_submitted(
            self._client(),
            channel.config.base_url,
            key,
            marker=marker,
            prompt=job.request.prompt,
            taken=self.taken(),
            throttle=channel.take_query,
        )

    # -- the result --------------------------------------------------------------------

    async def _collect(
        self, job: EngineJob, task: UpstreamTask, status: Status, progress: ProgressFn
    ) -> EngineResult:
        await progress(0.95)
        dest = job.work_dir / "upstream.mp4"
        url = status.body.get("video_url") or status.body.get("url")
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            # a gateway that hands out a download URL of its own: fetched SSRF-guarded
            await download_result(
                url,
                dest,
                allow_private=self.allow_private,
                timeout=self.timings.download_timeout,
                client=self._http,
                allow_setting=ALLOW_SETTING,
            )
        else:
            await task.channel.take_query()
            client = self._client()
            await download_content(
                client,
                client.content_url(task.base, task.upstream_id),
                task.key,
                dest,
                timeout=self.timings.download_timeout,
            )
        info = await asyncio.to_thread(probe_video, dest)
        if job.request.audio and not info.has_audio:  # the catalog's rule: audio, by us
            dest, info = await asyncio.to_thread(_with_audio, job, dest, info)
        return EngineResult(
            video_path=dest,
            width=info.width,
            height=info.height,
            fps=info.fps,
            num_frames=info.num_frames,
            has_audio=info.has_audio,
        )


def _image(path: Path) -> tuple[str, bytes]:
    """The first frame's mime type and bytes (the worker checked it already)."""
    from PIL import Image

    with Image.open(path) as img:
        fmt = str(img.format)
    mime = IMAGE_FORMATS.get(fmt)
    if mime is None:
        raise PermanentEngineError(f"the first frame's format {fmt} cannot be sent")
    return mime, path.read_bytes()


def _with_audio(job: EngineJob, silent: Path, info: VideoInfo) -> tuple[Path, VideoInfo]:
    """``silent`` with the request's audio (trimmed or padded), else a synthesised ambience,
    copied into a new MP4 without re-encoding the video."""
    fps = round(info.fps) or 16
    seconds = info.num_frames / info.fps if info.fps and info.num_frames else job.request.duration
    try:
        if job.audio_path is not None:
            audio = load_audio(job.audio_path, seconds)
        else:
            audio = synth_ambience(seconds, job.request.seed)
        out = job.work_dir / "upstream-audio.mp4"
        join_segments([silent], out, fps, audio=audio)
    except (ValueError, OSError, av.error.FFmpegError) as exc:
        raise PermanentEngineError(
            f"adding the audio track to the upstream video failed ({type(exc).__name__})",
            code=AUDIO_FAILED,
        ) from None
    return out, probe_video(out)

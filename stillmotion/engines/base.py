"""The narrow engine protocol: a job in, progress out, a cancel signal, a result out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from stillmotion.catalog import ModelSpec
from stillmotion.domain import VideoRequest

#: Called with a fraction in [0, 1]; may be awaited.
ProgressFn = Callable[[float], Awaitable[None]]

#: Persists engine-private state on the task (fenced); False means the claim was lost.
SaveStateFn = Callable[[dict[str, Any]], Awaitable[bool]]


async def _no_save(state: dict[str, Any]) -> bool:
    return True


class CancelSignal:
    """Set by the worker when the task's cancel was requested; engines check it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass(frozen=True)
class EngineJob:
    """Everything an engine needs to make one video.

    ``image_path``/``audio_path``/``last_frame_path`` are local files fetched and checked by
    the worker when the engine asks for media (``Engine.needs_media``); a relay engine reads
    ``request`` instead.
    """

    task_id: str
    spec: ModelSpec
    request: VideoRequest
    width: int
    height: int
    fps: int
    num_frames: int
    work_dir: Path
    image_path: Path | None = None
    audio_path: Path | None = None
    last_frame_path: Path | None = None  # the frame to end on (``request.last_frame``)
    #: engine-private state persisted on the task (e.g. a relay's upstream task id); a task
    #: claimed again after a crash starts with what the last run saved
    state: dict[str, Any] = field(default_factory=dict)
    save_state: SaveStateFn = _no_save


@dataclass(frozen=True)
class EngineResult:
    """A finished video on local disk, with what was actually produced."""

    video_path: Path
    width: int
    height: int
    fps: float
    num_frames: int
    has_audio: bool
    usage: dict[str, Any] | None = None  # engine-reported usage (relay); None -> from catalog
    extra_output: dict[str, Any] = field(default_factory=dict)  # e.g. actual_prompt


@runtime_checkable
class Engine(Protocol):
    name: str
    needs_media: bool

    async def generate(
        self, job: EngineJob, progress: ProgressFn, cancel: CancelSignal
    ) -> EngineResult:
        """Make the video for ``job``; raise an ``EngineError`` subclass on failure."""
        ...

    async def aclose(self) -> None:
        """Release pools, clients and processes."""
        ...

"""The state behind the fake ``/v1/videos`` server: videos, keys, scripted faults, records.

Everything here is plain Python guarded by one lock, so a test can read and script the fake
from its own thread while the server thread answers requests. See docs/fake-videos.md.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

#: ``[fake:NAME]`` or ``[fake:NAME=VALUE]`` anywhere in the prompt scripts that video.
DIRECTIVE = re.compile(r"\[fake:([a-z_]+)(?:=([^\]]*))?\]")
OPS = ("submit", "get", "list", "content", "delete")
SUBMIT_ID_HEADER = "x-stillmotion-submit-id"
ACTIVE = ("queued", "in_progress")
#: what a scripted task failure reports by default: vLLM-Omni puts the exception's class
#: name in ``error.code`` and its text in ``error.message``
DEFAULT_FAIL_CODE = "RuntimeError"


@dataclass
class VideoFault:
    """A scripted answer for the next ``times`` requests of ``op`` (-1: until cleared).

    ``status`` answers with that HTTP status (the OpenAI error shape; ``message``, ``type``
    and ``code`` override its fields) and ``Retry-After`` when ``retry_after`` is set;
    ``delay`` answers late. Submit only: ``create`` makes the video first and then answers
    ``status`` (the answer is lost, the video exists); ``drop`` makes the video and then
    drops the connection before the answer is complete.
    """

    op: str
    status: int | None = None
    message: str = ""
    type: str = ""
    code: str | int | None = None
    retry_after: float | None = None
    delay: float = 0.0
    create: bool = False
    drop: bool = False
    times: int = 1

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"fault op must be one of {', '.join(OPS)}, not {self.op!r}")


@dataclass
class FakeVideo:
    id: str
    seq: int
    key: str
    model: str
    prompt: str
    params: dict[str, Any]  # the normalised request (see ``FakeVideosState.submit``)
    width: int
    height: int
    seconds: str
    frames: int  # in the MP4
    fps: int
    created: float
    queued_seconds: float
    running_seconds: float
    ttl: float
    fail: tuple[str, str] | None = None
    submit_id: str | None = None

    @property
    def started(self) -> float:
        return self.created + self.queued_seconds

    @property
    def ended(self) -> float:
        return self.started + self.running_seconds

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    def status_at(self, now: float) -> str:
        if now < self.started:
            return "queued"
        if now < self.ended:
            return "in_progress"
        return "failed" if self.fail else "completed"

    def progress_at(self, now: float) -> int:
        """0 while queued, rising from 1 to 99 while in progress, 100 once completed; a
        failed video reports 0, as vLLM-Omni leaves it."""
        status = self.status_at(now)
        if status == "completed":
            return 100
        if status != "in_progress":
            return 0
        done = (now - self.started) / self.running_seconds if self.running_seconds else 1
        return max(1, min(99, int(100 * done)))

    def view(self, now: float) -> dict[str, Any]:
        """The video object (vLLM-Omni's ``VideoResponse``) plus ``submit_id``."""
        status = self.status_at(now)
        ended = status in ("completed", "failed")
        error = None
        if status == "failed" and self.fail is not None:
            error = {"code": self.fail[0], "message": self.fail[1]}
        return {
            "id": self.id,
            "object": "video",
            "model": self.model,
            "prompt": self.prompt,
            "status": status,
            "progress": self.progress_at(now),
            "created_at": int(self.created),
            "completed_at": int(self.ended) if ended else None,
            "expires_at": int(self.ended + self.ttl) if status == "completed" else None,
            "error": error,
            "seconds": self.seconds,
            "size": self.size,
            "quality": "default",
            "remixed_from_video_id": None,
            "media_type": "video/mp4",
            "submit_id": self.submit_id,
        }


@dataclass
class FakeVideosConfig:
    #: accepted Bearer keys; empty: any request is accepted, with or without a key
    keys: set[str] = field(default_factory=set)
    queued_seconds: float = 0.2
    running_seconds: float = 0.5
    video_ttl: float = 3600.0  # ``expires_at`` = ``completed_at`` + this
    model: str = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"  # when a request names none
    size: str = "832x480"  # when a request gives neither ``size`` nor ``width``/``height``
    seconds: str = "4"  # when a request gives none (vLLM-Omni's default)
    fps: int = 16  # of the MP4 when a request gives none
    #: the most frames an MP4 gets (``num_frames``, else ``seconds`` x fps, capped here):
    #: keeps results cheap to make; raise it to get full-length clips
    max_frames: int = 16
    max_side: int = 2048  # the largest width or height accepted


@dataclass
class _FailNext:
    times: int = 0
    code: str = DEFAULT_FAIL_CODE
    message: str = "scripted failure"


class FakeVideosState:
    """Videos, keys, faults and what was asked of the fake. Thread-safe."""

    def __init__(self, config: FakeVideosConfig | None = None, *, clock: Any = time.time) -> None:
        self.config = config or FakeVideosConfig()
        self.clock = clock
        self.lock = threading.Lock()
        self.videos: dict[str, FakeVideo] = {}
        self.peak_active = 0  # the most videos queued or in progress at once
        self.submits: list[dict[str, Any]] = []  # every submit request that reached the fake
        self.deletes: list[str] = []  # the ids of every video deleted
        self.requests: Counter[str] = Counter()  # op -> count
        self.log: list[tuple[float, str, int]] = []  # (time, op, HTTP status) per API request
        self.faults: list[VideoFault] = []
        self.fail_next = _FailNext()
        self._by_submit_id: dict[str, str] = {}
        self._seq = 0

    # -- scripting -------------------------------------------------------------------------

    def add_fault(self, fault: VideoFault) -> None:
        with self.lock:
            self.faults.append(fault)

    def take_fault(self, op: str) -> VideoFault | None:
        with self.lock:
            for fault in self.faults:
                if fault.op == op and fault.times != 0:
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
            return None

    def fail_next_tasks(
        self, times: int, code: str = DEFAULT_FAIL_CODE, message: str = "scripted failure"
    ) -> None:
        """The next ``times`` videos made end ``failed`` with ``error: {code, message}``."""
        with self.lock:
            self.fail_next = _FailNext(int(times), str(code), str(message))

    def control(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply a ``POST /_control`` body; answers :meth:`stats`."""
        if not isinstance(body, dict):
            raise ValueError("the control body is a JSON object")
        faults = [VideoFault(**raw) for raw in body.get("faults") or []]  # all valid, or none
        with self.lock:
            if body.get("reset"):
                self.videos.clear()
                self.submits.clear()
                self.deletes.clear()
                self.requests.clear()
                self.log.clear()
                self.faults.clear()
                self._by_submit_id.clear()
                self.fail_next = _FailNext()
                self.peak_active = 0
            if body.get("clear_faults"):
                self.faults.clear()
                self.fail_next = _FailNext()
            for name in ("queued_seconds", "running_seconds", "video_ttl"):
                if name in body:
                    setattr(self.config, name, float(body[name]))
            if "keys" in body:
                self.config.keys = {str(k) for k in body["keys"] or []}
            self.faults.extend(faults)
        if "fail_tasks" in body:
            raw = body["fail_tasks"]
            raw = {"times": raw} if isinstance(raw, int) else dict(raw)
            self.fail_next_tasks(**raw)
        return self.stats()

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        with self.lock:
            statuses = Counter(v.status_at(now) for v in self.videos.values())
            return {
                "submits": [dict(record) for record in self.submits],
                "videos": len(self.videos),
                "active": sum(statuses[s] for s in ACTIVE),
                "peak_active": self.peak_active,
                "statuses": dict(statuses),
                "polls": self.requests["get"],
                "lists": self.requests["list"],
                "contents": self.requests["content"],
                "deletes": list(self.deletes),
                "requests": dict(self.requests),
                "faults": [asdict(f) for f in self.faults if f.times != 0],
                "fail_tasks": asdict(self.fail_next),
                "keys": len(self.config.keys),
            }

    # -- keys ------------------------------------------------------------------------------

    def check_key(self, authorization: str | None) -> tuple[str, bool]:
        """``(key, accepted)``: any request when no keys are configured, else a Bearer key
        among them."""
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip() if scheme.lower() == "bearer" else ""
        with self.lock:
            keys = self.config.keys
            return key, not keys or key in keys

    # -- videos ----------------------------------------------------------------------------

    def submit(
        self, key: str, record: dict[str, Any], params: dict[str, Any], submit_id: str | None
    ) -> tuple[FakeVideo, bool]:
        """Record a submit and make its video; ``(video, made)``: a repeat of a known
        ``submit_id`` answers the first video (``made`` False) and is still recorded."""
        now = self.clock()
        with self.lock:
            entry = {"at": now, "key": key, "submit_id": submit_id, **record}
            self.submits.append(entry)
            known = self._by_submit_id.get(submit_id or "")
            if known is not None and known in self.videos:
                entry["video_id"] = known
                return self.videos[known], False
            video = self._new_video(key, params, now, submit_id)
            entry["video_id"] = video.id
            self.videos[video.id] = video
            active = sum(v.status_at(now) in ACTIVE for v in self.videos.values())
            self.peak_active = max(self.peak_active, active)
            if submit_id:
                self._by_submit_id[submit_id] = video.id
            return video, True

    def _new_video(
        self, key: str, params: dict[str, Any], now: float, submit_id: str | None
    ) -> FakeVideo:
        config = self.config
        directives = prompt_directives(str(params.get("prompt") or ""))
        fail = None
        if "fail" in directives:
            code, _, message = (directives["fail"] or DEFAULT_FAIL_CODE).partition(":")
            fail = (code, message or f"scripted failure {code}")
        elif self.fail_next.times != 0:
            if self.fail_next.times > 0:
                self.fail_next.times -= 1
            fail = (self.fail_next.code, self.fail_next.message)
        width, height = params["width"], params["height"]
        fps = int(params.get("fps") or config.fps)
        frames = int(params.get("num_frames") or int(params["seconds"]) * fps)
        self._seq += 1
        return FakeVideo(
            id=f"video_gen_{uuid.uuid4().hex}",
            seq=self._seq,
            key=key,
            model=str(params.get("model") or config.model),
            prompt=str(params.get("prompt") or ""),
            params=params,
            width=width,
            height=height,
            seconds=str(params["seconds"]),
            frames=max(1, min(frames, config.max_frames)),
            fps=fps,
            created=now,
            queued_seconds=_float(directives.get("queued"), config.queued_seconds),
            running_seconds=_float(directives.get("running"), config.running_seconds),
            ttl=config.video_ttl,
            fail=fail,
            submit_id=submit_id,
        )

    def get(self, video_id: str) -> FakeVideo | None:
        with self.lock:
            return self.videos.get(video_id)

    def delete(self, video_id: str) -> bool:
        """Forget a video whatever its status (vLLM-Omni cancels a queued or running job,
        then removes it); False when it is unknown."""
        with self.lock:
            if self.videos.pop(video_id, None) is None:
                return False
            self.deletes.append(video_id)
            return True

    def listing(self) -> list[FakeVideo]:
        with self.lock:
            return list(self.videos.values())


def prompt_directives(prompt: str) -> dict[str, str | None]:
    return {name: value or None for name, value in DIRECTIVE.findall(prompt)}


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        return default

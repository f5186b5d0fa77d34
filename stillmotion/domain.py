"""Task states, the allowed transitions and the typed video request. Imports nothing of ours."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class TaskStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    UNKNOWN = "UNKNOWN"  # only on the wire: unknown id, or a task of another key

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED})

TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELED, TaskStatus.FAILED}),
    TaskStatus.RUNNING: frozenset(
        {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.PENDING, TaskStatus.CANCELED}
    ),
    TaskStatus.SUCCEEDED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELED: frozenset(),
    TaskStatus.UNKNOWN: frozenset(),
}


#: Key in a task's engine state: True while its engine can still stop it cleanly (a relayed
#: task that is PENDING upstream). A client's cancel of such a RUNNING task is then accepted
#: (contract: PENDING tasks can be canceled) and the engine gets its cancel signal.
CANCELABLE = "cancelable"
#: engine-state key: the usage an upstream reported for a task it finished. Saved before the
#: result is downloaded, so a task that fails after it is recorded as the operator's loss.
UPSTREAM_USAGE = "upstream_usage"


def can_transition(old: TaskStatus, new: TaskStatus) -> bool:
    return new in TRANSITIONS[old]


def is_clean_text(value: str) -> bool:
    """Whether ``value`` is text both databases store and compare alike: no NUL character and
    no lone surrogate (PostgreSQL refuses both; SQLite would take them)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class MediaRef:
    """Where a request's media comes from: a remote URL, or bytes already kept in storage."""

    url: str | None = None  # http(s) URL to fetch in the worker
    storage_key: str | None = None  # key in our storage (a decoded data: URI)
    mime: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "storage_key": self.storage_key, "mime": self.mime}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> MediaRef | None:
        if not data:
            return None
        return cls(url=data.get("url"), storage_key=data.get("storage_key"), mime=data.get("mime"))


#: media kinds of a normalised request (the ``media[].type`` names of Wan 2.7 / 3.0)
FIRST_FRAME = "first_frame"
LAST_FRAME = "last_frame"
DRIVING_AUDIO = "driving_audio"
FIRST_CLIP = "first_clip"
REFERENCE_KINDS = ("reference_image", "reference_video", "reference_audio")


@dataclass(frozen=True)
class Reference:
    """A reference asset of a ``media[]`` body (``reference_image`` and co), in order."""

    kind: str
    media: MediaRef

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "media": self.media.to_json()}


@dataclass(frozen=True)
class VideoRequest:
    """A submit request after validation, whatever body generation it came in (legacy
    ``img_url``/``audio_url``, ``media[]``, or kf2v's ``first_frame_url``/``last_frame_url``):
    every default filled in from the catalog. Engines see only this."""

    model: str
    prompt: str
    negative_prompt: str
    image: MediaRef | None  # the first frame; None: a media[] body of a clip or references
    audio_source: MediaRef | None
    resolution: str
    duration: int
    audio: bool  # whether the output has an audio track
    shot_type: str
    seed: int
    prompt_extend: bool
    watermark: bool
    #: the frame the video ends on (``media[last_frame]``, kf2v's ``last_frame_url``)
    last_frame: MediaRef | None = None
    #: a clip the video continues (``media[first_clip]``, Wan 2.7)
    first_clip: MediaRef | None = None
    references: tuple[Reference, ...] = ()
    #: an effect template (``input.template``, legacy first-frame models)
    template: str | None = None
    #: parameters the contract does not know but the model does (the catalog's
    #: ``extra_parameters``), passed on to an upstream as they came
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "image": self.image.to_json() if self.image else None,
            "audio_source": self.audio_source.to_json() if self.audio_source else None,
            "resolution": self.resolution,
            "duration": self.duration,
            "audio": self.audio,
            "shot_type": self.shot_type,
            "seed": self.seed,
            "prompt_extend": self.prompt_extend,
            "watermark": self.watermark,
            "last_frame": self.last_frame.to_json() if self.last_frame else None,
            "first_clip": self.first_clip.to_json() if self.first_clip else None,
            "references": [r.to_json() for r in self.references],
            "template": self.template,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VideoRequest:
        image = MediaRef.from_json(data.get("image"))
        return cls(
            model=data["model"],
            prompt=data["prompt"],
            negative_prompt=data["negative_prompt"],
            image=image,
            audio_source=MediaRef.from_json(data.get("audio_source")),
            resolution=data["resolution"],
            duration=int(data["duration"]),
            audio=bool(data["audio"]),
            shot_type=data["shot_type"],
            seed=int(data["seed"]),
            prompt_extend=bool(data["prompt_extend"]),
            watermark=bool(data["watermark"]),
            last_frame=MediaRef.from_json(data.get("last_frame")),
            first_clip=MediaRef.from_json(data.get("first_clip")),
            references=tuple(_references(data.get("references") or [])),
            template=data.get("template"),
            extra=dict(data.get("extra") or {}),
        )


def _references(items: list[dict[str, Any]]) -> list[Reference]:
    out = []
    for item in items:
        media = MediaRef.from_json(item.get("media"))
        if media is not None:
            out.append(Reference(str(item["kind"]), media))
    return out

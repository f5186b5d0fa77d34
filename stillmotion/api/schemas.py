"""Pydantic models of the wire format, for the OpenAPI document and response shaping.

Submit bodies are validated by ``stillmotion.tasks.validation`` (one set of rules for both
submit paths, with the contract's error codes); these models describe them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from stillmotion import catalog

_RESOLUTIONS = sorted(
    {r for s in catalog.MODELS.values() for r in s.resolutions}, key=lambda r: int(r[:-1])
)
_MODELS: list[JsonValue] = list(catalog.model_names())
_DURATIONS = sorted({d for s in catalog.MODELS.values() for d in s.durations})


def _choice(*values: str) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` of an optional string field that takes one of ``values``."""

    def extra(schema: dict[str, Any]) -> None:
        schema["anyOf"] = [{"type": "string", "enum": list(values)}, {"type": "null"}]

    return extra


class SubmitInput(BaseModel):
    prompt: str | None = Field(None, description="Up to 1500 characters; longer is truncated.")
    img_url: str = Field(
        description="http(s) URL or `data:{mime};base64,{data}` of the first frame."
    )
    audio_url: str | None = Field(None, description="wav/mp3, 3-30 s, <= 15 MB.")
    negative_prompt: str | None = Field(None, description="Up to 500 characters.")


class SubmitParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    resolution: str | None = Field(
        None, description="By model (`GET /v1/models`).", json_schema_extra=_choice(*_RESOLUTIONS)
    )
    duration: int | None = Field(
        None, description="Seconds, by model.", ge=_DURATIONS[0], le=_DURATIONS[-1]
    )
    audio: bool | None = Field(None, description="wan2.6-i2v-flash only: false = silent.")
    shot_type: str | None = Field(
        None, description="wan2.6 only.", json_schema_extra=_choice("single", "multi")
    )
    seed: int | None = Field(None, ge=0, le=2147483647)
    prompt_extend: bool | None = None
    watermark: bool | None = None


class SubmitBody(BaseModel):
    model: str = Field(
        description="The model (`GET /v1/models`).",
        json_schema_extra={"enum": _MODELS},
    )
    input: SubmitInput
    parameters: SubmitParameters | None = None


class SubmitOutput(BaseModel):
    task_id: str
    task_status: str


class SubmitResponse(BaseModel):
    request_id: str
    output: SubmitOutput


class TaskOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    task_id: str
    task_status: str
    submit_time: str | None = None
    scheduled_time: str | None = None
    end_time: str | None = None
    orig_prompt: str | None = None
    video_url: str | None = None
    progress: int | None = None
    code: str | None = None
    message: str | None = None


class TaskResponse(BaseModel):
    request_id: str
    output: TaskOutput
    usage: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    """Every error answer (contract 2.4)."""

    request_id: str
    code: str = Field(description="A stable DashScope error code, e.g. `InvalidParameter`.")
    message: str


class CancelResponse(BaseModel):
    request_id: str


class HealthResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str
    version: str
    database: str = Field(description="sqlite or postgresql.")
    worker: dict[str, Any] | None
    tasks: dict[str, int] = Field(description="Tasks per status.")
    routes: dict[str, str] = Field(description="The engine each model is routed to.")


class HealthError(BaseModel):
    status: str = Field(description="error")
    database: str = Field(description="Why the database did not answer.")


class ModelList(BaseModel):
    object: str
    data: list[dict[str, Any]] = Field(description="One entry per model, with its engine.")


class TaskSummary(BaseModel):
    model_config = ConfigDict(extra="allow")
    task_id: str
    task_status: str
    model: str
    submit_time: str
    end_time: str | None = None
    prompt: str
    resolution: str | None = None
    duration: int | None = None
    video_url: str | None = None
    progress: int | None = None
    code: str | None = None
    message: str | None = None


class TaskSummaryList(BaseModel):
    data: list[TaskSummary]
    total: int = Field(description="All of the key's tasks.")

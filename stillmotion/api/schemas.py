"""Pydantic models of the wire format, for the OpenAPI document and response shaping.

Submit bodies are validated by ``stillmotion.tasks.validation`` (one set of rules for both
submit paths, with the contract's error codes); these models describe them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SubmitInput(BaseModel):
    prompt: str | None = Field(None, description="Up to 1500 characters; longer is truncated.")
    img_url: str = Field(
        description="http(s) URL or `data:{mime};base64,{data}` of the first frame."
    )
    audio_url: str | None = Field(None, description="wav/mp3, 3-30 s, <= 15 MB.")
    negative_prompt: str | None = Field(None, description="Up to 500 characters.")


class SubmitParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    resolution: str | None = Field(None, description="480P, 720P or 1080P, by model.")
    duration: int | None = Field(None, description="Seconds, by model.")
    audio: bool | None = Field(None, description="wan2.6-i2v-flash only: false = silent.")
    shot_type: str | None = Field(None, description="single or multi (wan2.6).")
    seed: int | None = Field(None, ge=0, le=2147483647)
    prompt_extend: bool | None = None
    watermark: bool | None = None


class SubmitBody(BaseModel):
    model: str = Field(description="wan2.6-i2v, wan2.6-i2v-flash or wan2.5-i2v-preview.")
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
    request_id: str
    code: str
    message: str

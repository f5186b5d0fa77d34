"""Pydantic models of the wire format, for the OpenAPI document and response shaping.

Submit bodies are validated by ``stillmotion.tasks.validation`` (one set of rules for both
submit paths, with the contract's error codes); these models describe them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
)

from stillmotion import catalog
from stillmotion.domain import is_clean_text

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


class ReadyResponse(BaseModel):
    status: str = Field(description="`ready`, `draining` (SIGTERM received) or `error`.")
    database: str | None = Field(None, description="`ok`, or `error: <why>`.")
    storage: str | None = Field(None, description="`ok`, or `error: <why>`.")


class ModelList(BaseModel):
    object: str
    data: list[dict[str, Any]] = Field(
        description="One entry per model, with its engine and `price`: `{currency, price_group, "
        'per_second: {"720P": {"audio": "0.60", "silent": "0.30"}}}`, the caller\'s price '
        "when a key is sent, else the list price (with `STILLMOTION_PRICE_MULTIPLIER`)."
    )


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
    quote: str = Field(description="What the requested duration costs at the task's price.")
    cost: str | None = Field(description="What the task cost once it ended; `null` before.")
    billed_seconds: str | None = Field(
        description="The output seconds billed (three decimals) once ended; `null` before."
    )


class TaskSummaryList(BaseModel):
    data: list[TaskSummary]
    total: int = Field(description="All of the key's tasks.")


# -- money: accounts, keys, usage (routes_account.py, routes_admin.py) ---------------------

_AMOUNT = "A decimal string of the currency, e.g. `12.50`."


class LimitsOut(BaseModel):
    """What an account or key allows; `null`: no limit."""

    max_concurrent: int | None = Field(description="RUNNING tasks at once.")
    max_pending: int | None = Field(description="PENDING tasks at once.")
    submit_rate: float | None = Field(description="Submits per second (a token bucket).")
    daily_budget: str | None = Field(description="Spend per UTC day. " + _AMOUNT)


class AccountOut(BaseModel):
    id: str
    name: str
    created_time: str | None = None
    currency: str
    billing: str = Field(description="`on`: submits hold their quote; `off`: metered only.")
    balance: str = Field(description="Top-ups and adjustments less captured costs. " + _AMOUNT)
    held: str = Field(description="Reserved by open tasks' holds. " + _AMOUNT)
    available: str = Field(description="`balance - held`: what new submits may hold. " + _AMOUNT)
    price_group: str | None
    limits: LimitsOut


class CallerAccount(AccountOut):
    key_limits: LimitsOut = Field(description="The limits of the key this call used.")


class AccountList(BaseModel):
    object: str
    data: list[AccountOut]


class Movement(BaseModel):
    applied: bool = Field(description="`false`: this `ref` was used before; nothing changed.")
    account: AccountOut


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The secret's first characters, to recognise it.")
    account_id: str | None
    is_admin: bool
    created_time: str | None = None
    revoked_time: str | None = None
    limits: LimitsOut


class NewKeyOut(KeyOut):
    key: str = Field(description="The secret: shown once, stored only as a hash.")


class KeyList(BaseModel):
    object: str
    account_id: str
    data: list[KeyOut]


class LedgerEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    kind: str = Field(description="topup, adjustment, hold, capture, release or loss.")
    amount: str
    balance_delta: str
    held_delta: str
    task_id: str | None
    time: str | None
    detail: dict[str, Any] | None


class LedgerList(BaseModel):
    object: str
    account_id: str
    data: list[LedgerEntry] = Field(description="Newest first.")


class UsageRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    day: str | None = Field(None, description="With `group_by=day`: `YYYY-MM-DD` (UTC).")
    model: str | None = Field(None, description="With `group_by=model`.")
    key: str | None = Field(None, description="With `group_by=key`: the key's id.")
    tasks: int = Field(description="Tasks that ended (any final status).")
    succeeded: int
    output_seconds: str = Field(description="Billed output seconds, three decimals.")
    amount: str = Field(description="What they cost. " + _AMOUNT)


class UsageTotal(BaseModel):
    tasks: int
    succeeded: int
    output_seconds: str
    amount: str


class UsageReport(BaseModel):
    object: str
    account_id: str | None = Field(description="`null`: every account (admin only).")
    currency: str
    group_by: str
    start: str
    end: str = Field(description="The last day, included whole.")
    data: list[UsageRow]
    total: UsageTotal


# -- admin request bodies (routes_admin.py): unknown fields are refused ----------------------


def _clean_text(value: str) -> str:
    if not is_clean_text(value):
        raise ValueError("must not contain NUL characters or invalid Unicode")
    return value


def _amount_text(value: Any) -> str:
    """An amount as sent: a decimal string or a JSON number (never a boolean); its text is
    checked and converted to micros by the route (``money.to_micros``), naming the field."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError('must be a decimal number: a string such as "12.50", or a number')
    return _clean_text(value if isinstance(value, str) else str(value))


Text = Annotated[str, AfterValidator(_clean_text)]
Amount = Annotated[
    str,
    BeforeValidator(_amount_text),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}], "examples": ["12.50"]}),
]
_FORBID = ConfigDict(extra="forbid")
#: the largest ``INTEGER`` both databases store
INT_MAX = 2_147_483_647


class AccountCreate(BaseModel):
    model_config = _FORBID
    name: Text = Field(min_length=1, max_length=200)
    balance: Amount | None = Field(None, description="An opening top-up. " + _AMOUNT)
    price_group: Text | None = Field(
        None, max_length=64, description="One of `STILLMOTION_PRICE_GROUPS`."
    )


class TopUp(BaseModel):
    model_config = _FORBID
    amount: Amount = Field(description="Above 0. " + _AMOUNT)
    ref: Text | None = Field(
        None,
        min_length=1,
        max_length=48,
        description="Your id of this payment: the same `ref` again changes nothing.",
    )
    note: Text | None = Field(None, max_length=500)


class Adjustment(BaseModel):
    model_config = _FORBID
    amount: Amount = Field(description="Not 0; negative takes money off. " + _AMOUNT)
    note: Text = Field(min_length=1, max_length=500, description="Why (kept in the ledger).")
    ref: Text | None = Field(None, min_length=1, max_length=48)


class LimitsPatch(BaseModel):
    """Fields sent are set (`null` clears a limit); fields not sent stay as they are."""

    model_config = _FORBID
    max_concurrent: int | None = Field(None, ge=0, le=INT_MAX, strict=True)
    max_pending: int | None = Field(None, ge=0, le=INT_MAX, strict=True)
    submit_rate: float | None = Field(None, gt=0, le=1_000_000)
    daily_budget: Amount | None = Field(None, description=_AMOUNT)
    name: Text | None = Field(None, min_length=1, max_length=200)


class AccountPatch(LimitsPatch):
    price_group: Text | None = Field(
        None, max_length=64, description="One of `STILLMOTION_PRICE_GROUPS`; `null`: none."
    )


class KeyCreate(BaseModel):
    model_config = _FORBID
    name: Text = Field(min_length=1, max_length=200)
    admin: bool = Field(False, strict=True, description="An admin key (the `/admin/v1` API).")


# -- webhooks (docs/webhooks.md) -------------------------------------------------------------


class WebhookCreate(BaseModel):
    model_config = _FORBID
    url: Text = Field(
        min_length=1, max_length=8192, description="An http(s) URL that gets every task's end."
    )


class WebhookOut(BaseModel):
    id: str
    account_id: str
    url: str
    created_time: str | None = None


class NewWebhookOut(WebhookOut):
    secret: str = Field(
        description="The signing secret (`whsec_...`, Standard Webhooks): shown only now."
    )


class WebhookList(BaseModel):
    object: str
    account_id: str
    data: list[WebhookOut]


class CallbackSecretOut(BaseModel):
    account_id: str
    secret: str = Field(description="Signs the callbacks named by `X-Stillmotion-Callback`.")


class WebhookAttemptOut(BaseModel):
    time: str | None
    duration_ms: float
    status_code: int | None
    error: str | None


class WebhookDeliveryOut(BaseModel):
    id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    task_id: str
    account_id: str | None
    endpoint_id: str | None = Field(description="`null`: the submit's callback URL.")
    url: str
    status: str = Field(description="pending, delivered or failed.")
    created_time: str | None
    next_time: str | None = Field(description="When a pending delivery is tried next.")
    ended_time: str | None
    last_status: int | None
    last_error: str | None
    attempts: list[WebhookAttemptOut]


class WebhookDeliveryList(BaseModel):
    object: str
    data: list[WebhookDeliveryOut]

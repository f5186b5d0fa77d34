"""One typed settings object, read from ``STILLMOTION_*`` variables and an optional TOML file.

Precedence (highest first): explicit arguments (CLI flags), environment variables, the TOML
file named by ``STILLMOTION_CONFIG`` (or ``--config``), then the defaults below. Every field is
documented in docs/configuration.md; a test keeps the two in step.
"""

from __future__ import annotations

import os
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class DashScopeChannel(BaseModel):
    """One upstream DashScope account (``dashscope_channels`` entry); unset fields inherit the
    ``dashscope_*`` settings."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A unique name (logs and task state record it).")
    base_url: str | None = Field(None, description="Base URL including `/api/v1`.")
    api_keys: SecretStr | None = Field(None, description="Comma-separated API keys.")
    max_in_flight: int | None = Field(None, ge=1, description="Upstream tasks in flight at once.")
    submit_rate: float | None = Field(None, gt=0, description="Submits per second.")
    query_rate: float | None = Field(None, gt=0, description="Polls/cancels/lists per second.")
    model_map: str | dict[str, str] | None = Field(
        None, description="Model names for this channel, as `dashscope_model_map`."
    )


class OpenAIVideosChannel(BaseModel):
    """One `/v1/videos` server or frontend (``openai_videos_channels`` entry); unset fields
    inherit the ``openai_videos_*`` settings."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A unique name (logs and task state record it).")
    base_url: str | None = Field(None, description="Base URL including `/v1`.")
    api_keys: SecretStr | None = Field(None, description="Comma-separated API keys (optional).")
    max_in_flight: int | None = Field(None, ge=1, description="Videos in flight at once.")
    submit_rate: float | None = Field(None, gt=0, description="Creates per second.")
    query_rate: float | None = Field(None, gt=0, description="Polls/deletes/lists per second.")
    model_map: str | dict[str, Any] | None = Field(
        None, description="Models for this channel, as `openai_videos_model_map`."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STILLMOTION_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address `serve` listens on.")
    port: int = Field(8000, description="Port `serve` listens on.")
    data_dir: Path = Field(
        Path("stillmotion-data"),
        description="Directory for the SQLite database, stored files and the signing secret.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default `sqlite+aiosqlite:///<data_dir>/stillmotion.db`. "
        "PostgreSQL: `postgresql+asyncpg://user@host:5432/db`.",
    )
    public_url: str | None = Field(
        None, description="Base of the absolute `video_url`s; default `http://<host>:<port>`."
    )
    workers: int = Field(2, ge=0, description="Tasks the worker runs at once (0: no worker).")
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="API processes `serve` runs on its one listening socket, each a full API "
        "process (with its own worker unless `workers` is 0); more than 1 wants PostgreSQL.",
    )
    run_worker: bool = Field(True, description="Run the worker inside `serve`.")
    routes: str = Field(
        "",
        description="Which engine serves which model, e.g. "
        "`wan2.6-i2v=motion,wan2.5-i2v-preview=motion`; models not named use `motion`.",
    )
    allow_private_urls: bool = Field(
        False,
        description="Let `img_url`/`audio_url` and webhook URLs reach loopback, private and "
        "link-local addresses (local development only).",
    )
    cancel_running: bool = Field(
        False,
        description="Let `POST /task/{id}/cancel` stop RUNNING tasks too (an extension; upstream "
        "cancels PENDING tasks only). The engine stops at its next check; the task ends CANCELED.",
    )
    lease_seconds: float = Field(30.0, gt=0, description="How long a claim lasts without renewal.")
    max_attempts: int = Field(3, ge=1, description="Claims of one task before it fails.")
    poll_interval: float = Field(0.5, gt=0, description="Idle worker's seconds between claims.")
    worker_heartbeat_seconds: float = Field(
        5.0,
        gt=0,
        le=60,
        description="How often a worker renews its row in the `workers` table; a worker "
        "silent for 3 intervals is dead and its RUNNING tasks are reclaimed.",
    )
    sweep_interval_seconds: float = Field(
        300.0, gt=0, description="How often a worker sweeps `work/` and orphaned inputs."
    )
    orphan_grace_seconds: float = Field(
        600.0,
        ge=0,
        description="Age after which inputs with no task row (and stray work files) are removed.",
    )
    result_ttl_hours: float = Field(
        168.0,
        gt=0,
        description="Hours after a task ends when its result video and kept inputs are deleted "
        "(DashScope keeps 24 h); the body then says `result_expired` instead of a `video_url`.",
    )
    task_ttl_days: float = Field(
        0.0,
        ge=0,
        description="Days after a task ends when its record (events, idempotency keys, "
        "webhook deliveries) is deleted and it answers `UNKNOWN`; `0`: kept forever. Ledger "
        "entries are always kept.",
    )
    retention_batch: int = Field(
        500, ge=1, le=10_000, description="Tasks the retention sweep handles per transaction."
    )
    url_ttl_seconds: int = Field(86400, gt=0, description="Lifetime of a signed `video_url`.")
    max_body_bytes: int = Field(
        48 * 1024 * 1024, gt=0, description="Largest accepted request body (413 above it)."
    )
    fetch_timeout: float = Field(30.0, gt=0, description="Seconds allowed for one media fetch.")
    fetch_max_redirects: int = Field(5, ge=0, description="Redirects followed by a media fetch.")
    webhook_timeout: float = Field(
        10.0, gt=0, description="Seconds allowed for one webhook delivery attempt."
    )
    webhook_max_age_seconds: float = Field(
        86400.0, gt=0, description="How long after a task ends its webhooks are retried."
    )
    webhook_backoff_seconds: float = Field(
        5.0,
        gt=0,
        description="The first webhook retry's delay; later ones are 6, 24, 120, 360, 720 and "
        "1440 times it.",
    )
    key_cache_seconds: float = Field(
        5.0, ge=0, description="How long a verified API key is cached (revocation delay)."
    )
    task_cache_seconds: float = Field(
        1.0,
        ge=0,
        description="How long a query may answer an unfinished task from memory; changes made "
        "by this process show at once, those of a separate worker process within this bound.",
    )
    time_zone: str = Field(
        "UTC", description="IANA zone of the task time strings, e.g. `Asia/Shanghai`."
    )
    log_level: str = Field("info", description="Log level of the service.")
    # -- operations: logs, metrics, draining (docs/operations.md) -------------------------
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`text`: `LEVEL logger: message` lines; `json`: one JSON object per line "
        "(`time`, `level`, `logger`, `message`, and `request_id`, `task_id`, `key_id` when known).",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="When set, `GET /metrics` needs `Authorization: Bearer <token>` (401 "
        "`InvalidApiKey` otherwise); unset: open to anyone who reaches the port.",
    )
    drain_seconds: float = Field(
        0.0,
        ge=0,
        le=600,
        description="On SIGTERM, `serve` stops claiming tasks and answers `GET /readyz` 503 at "
        "once, keeps serving this many seconds (so a load balancer takes it out), then stops "
        "accepting, finishes the requests in flight and hands running tasks back.",
    )
    wan_weights_dir: Path | None = Field(
        None,
        description="Local directory of diffusers-format Wan weights for the `wan` engine "
        "(never downloaded); see docs/wan.md.",
    )
    wan_family: Literal["auto", "wan2.1-i2v-14b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b"] = Field(
        "auto",
        description="Wan family of the weights; `auto` detects it from their configs "
        "(`transformer_2` -> A14B, 48-channel transformer -> TI2V-5B, image encoder -> 2.1).",
    )
    wan_steps: int | None = Field(
        None, ge=1, description="Denoising steps; default: the family's (40, 40, 50 for 5B)."
    )
    wan_guidance: float | None = Field(
        None, ge=0, description="Guidance scale; default: the family's (5.0; 3.5 for A14B)."
    )
    wan_guidance_2: float | None = Field(
        None, ge=0, description="A14B only: guidance of the low-noise expert (default 3.5)."
    )
    wan_flow_shift: float | None = Field(
        None,
        gt=0,
        description="Scheduler flow shift; default: the family's (5.0; 3.0 for 2.1 at 480P).",
    )
    wan_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Weights dtype of the `wan` engine (its VAE always runs in fp32)."
    )
    wan_offload: Literal["none", "model", "group"] = Field(
        "none",
        description="CPU offload: `none` (all on the GPU), `model` (one model at a time) or "
        "`group` (layer groups streamed in; least GPU memory).",
    )
    wan_attention: str = Field(
        "",
        description="diffusers attention backend for the transformer(s), e.g. `_native_cudnn`, "
        "`_native_flash`, `flash`, `_flash_3`, `sage`; empty: PyTorch SDPA's choice.",
    )
    wan_device: str = Field(
        "auto", description="Torch device of the `wan` engine, e.g. `cuda:1`; `auto`: cuda or cpu."
    )
    wan_max_area: int | None = Field(
        None,
        ge=256,
        description="Cap on the `wan` output's pixel area (e.g. `921600` serves 1080P at 720P "
        "area); the tests use a tiny cap. Default: the tier's area.",
    )
    wan_compile: bool = Field(
        False,
        description="Regional `torch.compile` of the Wan transformer blocks (exact; the first "
        "task compiles for minutes).",
    )
    dashscope_base_url: str = Field(
        "https://dashscope.aliyuncs.com/api/v1",
        description="DashScope base URL including `/api/v1` (region-bound: `dashscope-intl...`, "
        "`dashscope-us...`); the `dashscope` engine relays tasks there.",
    )
    dashscope_api_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated DashScope API keys, used in turn; a key answering 401/403 "
        "leaves the rotation for 10 minutes. Never logged or returned.",
    )
    relay_limits: Literal["auto", "local", "database"] = Field(
        "auto",
        description="Where relay caps, rates and 429 blocks are kept: `local` (each worker "
        "process its own), `database` (shared by every worker process), `auto` (database on "
        "PostgreSQL, local on SQLite).",
    )
    dashscope_max_in_flight: int = Field(
        100, ge=1, description="Upstream tasks in flight at once per channel (more wait PENDING)."
    )
    dashscope_submit_rate: float = Field(
        2.0, gt=0, description="Upstream submits per second per channel (more wait PENDING)."
    )
    dashscope_query_rate: float = Field(
        20.0, gt=0, description="Upstream polls, cancels and list calls per second per channel."
    )
    models: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Models added to or overriding the shipped catalog: `[[models]]` tables in "
        "the TOML config (or a JSON list), each of the shape of `stillmotion/models.toml` "
        "(docs/models.md); a known `name` overrides that model field by field, `base` copies "
        "another first.",
    )
    dashscope_channels: list[DashScopeChannel] = Field(
        default_factory=list,
        description="Several upstream accounts: a JSON list (or TOML array of tables) of "
        "`{name, base_url, api_keys, max_in_flight, submit_rate, query_rate, model_map}`; "
        "empty: one channel from the `dashscope_*` settings.",
    )
    dashscope_model_map: str = Field(
        "",
        description="Upstream model names, e.g. `wan2.6-i2v=wan2.6-i2v-us`; unnamed models are "
        "sent under their own name.",
    )
    dashscope_task_deadline: float = Field(
        3600.0,
        gt=0,
        description="An upstream task older than this (seconds) fails with "
        "`InternalError.Timeout`.",
    )
    dashscope_poll_first: float = Field(
        3.0, gt=0, description="Seconds from an upstream submit to its first poll."
    )
    dashscope_poll_max: float = Field(
        15.0,
        gt=0,
        description="Longest interval between polls of one upstream task (they grow "
        "1.5x per poll from `dashscope_poll_first`).",
    )
    dashscope_max_poll_failures: int = Field(
        20, ge=1, description="Consecutive failed polls (with backoff) that fail a relayed task."
    )
    dashscope_request_timeout: float = Field(
        30.0, gt=0, description="Seconds allowed for one upstream API call."
    )
    dashscope_allow_private: bool = Field(
        False,
        description="Let the relay download results from loopback/private addresses (a fake or "
        "local upstream such as `stillmotion fake-dashscope`).",
    )
    # -- the openai-videos engine: a /v1/videos GPU fleet (docs/gpu-fleet.md) -----------
    openai_videos_base_url: str = Field(
        "http://127.0.0.1:8091/v1",
        description="Base URL (with `/v1`) of the `/v1/videos` server the `openai-videos` "
        "engine relays to: vLLM-Omni, SGLang Diffusion or a Dynamo frontend.",
    )
    openai_videos_api_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated keys sent as `Authorization: Bearer` (used in turn); "
        "empty: no key is sent. Never logged or returned.",
    )
    openai_videos_max_in_flight: int = Field(
        4, ge=1, description="Videos in flight at once per channel (more wait PENDING)."
    )
    openai_videos_submit_rate: float = Field(
        2.0, gt=0, description="Creates per second per channel (more wait PENDING)."
    )
    openai_videos_query_rate: float = Field(
        20.0, gt=0, description="Polls, deletes, lists and downloads per second per channel."
    )
    openai_videos_channels: list[OpenAIVideosChannel] = Field(
        default_factory=list,
        description="Several servers or frontends: a JSON list (or TOML array of tables) of "
        "`{name, base_url, api_keys, max_in_flight, submit_rate, query_rate, model_map}`; "
        "empty: one channel from the `openai_videos_*` settings.",
    )
    openai_videos_model_map: str | dict[str, Any] = Field(
        "",
        description="Our models to the server's: a TOML table or JSON object of `{model, fps, "
        'extras}`, e.g. `{"wan2.6-i2v": {"model": "Wan-AI/Wan2.2-I2V-A14B-Diffusers", '
        '"extras": {"num_inference_steps": 40}}}`, or `OURS=UPSTREAM,...`; unnamed models '
        "go up without `model`, at `openai_videos_fps`, with no extras.",
    )
    openai_videos_fps: int = Field(
        16, ge=1, le=120, description="Frame rate asked of the server when the map gives none."
    )
    openai_videos_body: Literal["form", "json"] = Field(
        "form",
        description="How a create is sent: `form` (multipart, as vLLM-Omni takes it; the "
        "frame as `image_reference`) or `json` (the frame as `input_reference`).",
    )
    openai_videos_task_deadline: float = Field(
        3600.0,
        gt=0,
        description="A video older than this (seconds) is deleted upstream and fails with "
        "`InternalError.Timeout`.",
    )
    openai_videos_poll_first: float = Field(
        5.0, gt=0, description="Seconds from a create to its first poll."
    )
    openai_videos_poll_max: float = Field(
        15.0,
        gt=0,
        description="Longest interval between polls of one video (they grow 1.5x per poll "
        "from `openai_videos_poll_first`).",
    )
    openai_videos_max_poll_failures: int = Field(
        20, ge=1, description="Consecutive failed polls (with backoff) that fail a task."
    )
    openai_videos_request_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds allowed for one call to the server (a create carries the frame).",
    )
    openai_videos_allow_private: bool = Field(
        False,
        description="Let a result URL the server hands out (`video_url`/`url`) be on a "
        "loopback/private address; `/content` on the base URL is always allowed.",
    )
    billing: Literal["off", "on"] = Field(
        "off",
        description="`on`: every submit reserves its quote from the caller's account (400 "
        "`Arrearage` when the available balance cannot cover it) and success captures the "
        "cost of what was produced; `off`: tasks are priced and metered but nothing is held "
        "or charged (docs/billing.md).",
    )
    currency: str = Field(
        "CNY", min_length=1, max_length=8, description="The one currency of every amount."
    )
    price_multiplier: Decimal = Field(
        Decimal(1), gt=0, description="Factor applied to every per-second price, e.g. `1.2`."
    )
    prices: str | dict[str, str | float | int] = Field(
        "",
        description="Per-second price overrides, `MODEL.TIER=PRICE` or `MODEL.TIER.silent=PRICE` "
        "(comma-separated; in TOML a `[prices]` table), e.g. `wan2.6-i2v.720P=0.5`; models and "
        "tiers not named keep the catalog's list price.",
    )
    price_groups: str | dict[str, str | float | int] = Field(
        "",
        description="Named price factors an account can be put in (`accounts set --price-group`)"
        ", `NAME=FACTOR` comma-separated (TOML: a `[price_groups]` table), e.g. `vip=0.8`; "
        "applied on top of `price_multiplier`.",
    )
    # -- storage and URL signing (docs/deploy.md#storage) --------------------------------
    storage_url: str | None = Field(
        None,
        description="Where inputs and results are kept: `file:///path`, or `s3://bucket/prefix` "
        "for an S3-compatible store (the `s3` extra); default `<data_dir>/files`.",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="Endpoint of a non-AWS S3-compatible store (MinIO, R2, OSS), e.g. "
        "`http://127.0.0.1:9000`; credentials come from the standard AWS variables and files.",
    )
    s3_region: str | None = Field(None, description="Region of the S3 bucket.")
    storage_public: Literal["signed", "presigned"] = Field(
        "signed",
        description="`signed`: `video_url` is our signed `/files/...` URL, streamed from the "
        "store by any API process; `presigned`: the store's presigned GET URL (s3:// only).",
    )
    signing_secret: SecretStr | None = Field(
        None,
        description="The secret that signs `/files` URLs (32+ characters), the same for every API "
        "process; default: `<data_dir>/signing.key`, created on first start.",
    )
    signing_secret_file: Path | None = Field(
        None, description="A file holding the signing secret (instead of `signing_secret`)."
    )
    config: Path | None = Field(None, description="TOML file read for any of these settings.")

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = os.environ.get("STILLMOTION_CONFIG")
        if toml:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    # -- derived values -------------------------------------------------------------------

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'stillmotion.db').resolve()}"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def route_map(self) -> dict[str, str]:
        """``routes`` parsed to ``{model: engine}``."""
        out: dict[str, str] = {}
        for part in self.routes.split(","):
            part = part.strip()
            if not part:
                continue
            model, sep, engine = part.partition("=")
            if not sep or not model.strip() or not engine.strip():
                raise ValueError(f"STILLMOTION_ROUTES entry {part!r} is not MODEL=ENGINE")
            out[model.strip()] = engine.strip()
        return out


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, an optional TOML file and explicit overrides.

    A relative ``data_dir`` written in the TOML file is relative to that file's directory, so
    every command reading the file finds the same data dir wherever it is run from.
    """
    if config_file is not None:
        os.environ["STILLMOTION_CONFIG"] = str(config_file)
    values = {k: v for k, v in overrides.items() if v is not None}
    settings = Settings(**values)
    toml = _toml_file()
    from_toml = (
        toml is not None and data_dir_origin(values.get("data_dir")) == f"data_dir in {toml}"
    )
    if toml is not None and from_toml and not settings.data_dir.is_absolute():
        settings.data_dir = toml.expanduser().parent / settings.data_dir
    return settings


DEFAULT_ORIGIN = "the default, relative to the current directory"


def data_dir_origin(flag: object = None) -> str:
    """Which setting chose the data dir (``flag``: the ``--data-dir`` value, if given)."""
    if flag is not None:
        return "--data-dir"
    if any(name.upper() == "STILLMOTION_DATA_DIR" for name in os.environ):
        return "STILLMOTION_DATA_DIR"
    toml = _toml_file()
    if toml is not None and "data_dir" in _toml_keys(toml):
        return f"data_dir in {toml}"
    return DEFAULT_ORIGIN


def _toml_file() -> Path | None:
    name = os.environ.get("STILLMOTION_CONFIG")
    return Path(name) if name else None


def _toml_keys(path: Path) -> set[str]:
    try:
        with path.expanduser().open("rb") as file:
            return set(tomllib.load(file))
    except (OSError, tomllib.TOMLDecodeError):
        return set()  # Settings() reports an unreadable file itself

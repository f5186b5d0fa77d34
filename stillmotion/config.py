"""One typed settings object, read from ``STILLMOTION_*`` variables and an optional TOML file.

Precedence (highest first): explicit arguments (CLI flags), environment variables, the TOML
file named by ``STILLMOTION_CONFIG`` (or ``--config``), then the defaults below. Every field is
documented in docs/configuration.md; a test keeps the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
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
    run_worker: bool = Field(True, description="Run the worker inside `serve`.")
    routes: str = Field(
        "",
        description="Which engine serves which model, e.g. "
        "`wan2.6-i2v=motion,wan2.5-i2v-preview=motion`; models not named use `motion`.",
    )
    allow_private_urls: bool = Field(
        False,
        description="Let `img_url`/`audio_url` reach loopback, private and link-local addresses "
        "(local development only).",
    )
    cancel_running: bool = Field(
        False,
        description="Let `POST /task/{id}/cancel` stop RUNNING tasks too (an extension; upstream "
        "cancels PENDING tasks only). The engine stops at its next check; the task ends CANCELED.",
    )
    lease_seconds: float = Field(30.0, gt=0, description="How long a claim lasts without renewal.")
    max_attempts: int = Field(3, ge=1, description="Claims of one task before it fails.")
    poll_interval: float = Field(0.5, gt=0, description="Idle worker's seconds between claims.")
    url_ttl_seconds: int = Field(86400, gt=0, description="Lifetime of a signed `video_url`.")
    max_body_bytes: int = Field(
        48 * 1024 * 1024, gt=0, description="Largest accepted request body (413 above it)."
    )
    fetch_timeout: float = Field(30.0, gt=0, description="Seconds allowed for one media fetch.")
    fetch_max_redirects: int = Field(5, ge=0, description="Redirects followed by a media fetch.")
    key_cache_seconds: float = Field(
        5.0, ge=0, description="How long a verified API key is cached (revocation delay)."
    )
    time_zone: str = Field(
        "UTC", description="IANA zone of the task time strings, e.g. `Asia/Shanghai`."
    )
    log_level: str = Field("info", description="Log level of the service.")
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
    """Settings from the environment, an optional TOML file and explicit overrides."""
    if config_file is not None:
        os.environ["STILLMOTION_CONFIG"] = str(config_file)
    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**values)

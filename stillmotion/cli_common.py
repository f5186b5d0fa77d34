"""What the admin commands share (``keys``, ``db``, ``accounts``, ``usage``, ``billing``):
settings, the data dir announced on stderr, the migrated store, and exits with a status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from sqlalchemy.engine import make_url

from stillmotion.config import DEFAULT_ORIGIN, Settings, data_dir_origin, load_settings
from stillmotion.runtime import ConfigurationError
from stillmotion.tasks.store import TaskStore

T = TypeVar("T")

err = Console(stderr=True)
PLAIN: dict[str, Any] = {"markup": False, "highlight": False, "soft_wrap": True}  # paths as-is

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]


def fail(message: str, code: int) -> NoReturn:
    """``error: message`` on stderr (as written: no markup), then exit with ``code``."""
    err.print(f"error: {message}", **PLAIN)
    raise typer.Exit(code)


def settings_or_exit(config: Path | None = None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except Exception as exc:
        err.print(f"[red]error:[/red] invalid settings: {exc}")
        raise typer.Exit(2) from None


def run_or_exit(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ConfigurationError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def db_label(settings: Settings) -> str:
    """The database's kind and place, without credentials."""
    url = make_url(settings.db_url)
    if url.get_backend_name() == "sqlite":
        return f"SQLite {url.database}"
    port = f":{url.port}" if url.port else ""
    return f"{url.get_backend_name()} at {url.host or 'localhost'}{port}/{url.database or ''}"


def admin_settings(config: Path | None, data_dir: Path | None) -> Settings:
    """Settings for the admin commands, which say on stderr which database they use. With
    the default SQLite database in the data dir they create a data dir only when it was named
    (flag, variable or config file): the implicit `./stillmotion-data` must already exist, so
    a command run from another directory fails instead of starting an empty one."""
    settings = settings_or_exit(config, data_dir=data_dir)
    if settings.database_url:
        err.print(f"database: {db_label(settings)}", **PLAIN)
        return settings
    where = settings.data_dir.resolve()
    origin = data_dir_origin(data_dir)
    exists = (where / "stillmotion.db").is_file()
    if not exists and origin == DEFAULT_ORIGIN:
        err.print(_NO_DATA_DIR.format(where=where), **PLAIN)
        raise typer.Exit(2)
    note = "" if exists else ", new"
    err.print(f"data dir: {where} (from {origin}{note})", **PLAIN)
    return settings


_NO_DATA_DIR = (
    "error: no stillmotion data dir at {where} (the default, relative to the current "
    "directory). Point at the one `serve` uses with --data-dir PATH, STILLMOTION_DATA_DIR=PATH "
    "or data_dir in the config file (--config FILE or STILLMOTION_CONFIG); a data dir named "
    "there is created if missing, the default one only by `serve` and `worker`."
)


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[TaskStore]:
    """The task store, migrated; no runtime (no engines, no files, no signing secret)."""
    store = await TaskStore.open(settings.db_url)
    try:
        await store.upgrade()
        yield store
    finally:
        await store.close()

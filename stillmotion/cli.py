"""The command line: ``serve``, ``worker``, ``keys``, ``db``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from stillmotion.cli_generate import generate
from stillmotion.config import Settings, load_settings
from stillmotion.runtime import ConfigurationError, build_engines, open_runtime
from stillmotion.tasks.keys import create_key

app = typer.Typer(
    help="stillmotion: a Bailian/DashScope-compatible image-to-video service.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.command("generate")(generate)
err = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]


def _settings(config: Path | None = None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except Exception as exc:
        err.print(f"[red]error:[/red] invalid settings: {exc}")
        raise typer.Exit(2) from None


def _run(coro: object) -> object:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except ConfigurationError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
    data_dir: DataDir = None,
    workers: Annotated[int | None, typer.Option(help="Tasks rendered at once (0: none).")] = None,
    config: ConfigFile = None,
) -> None:
    """Run the HTTP API and (unless workers=0) the worker, on the embedded defaults."""
    import uvicorn

    from stillmotion.api.app import create_app

    settings = _settings(config, host=host, port=port, data_dir=data_dir, workers=workers)
    _run(_check_start(settings))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    err.print(f"stillmotion serving on {settings.base_url} (data: {settings.data_dir.resolve()})")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


async def _check_start(settings: Settings) -> None:
    """Fail before binding the port when the routes, database or engines cannot work.

    With an in-process worker every routed engine is created (and so checked), including
    those that run only in a dedicated `stillmotion worker` (``api_process = False``).
    """
    runtime = await open_runtime(settings)
    try:
        if settings.run_worker and settings.workers > 0:
            for engine in build_engines(settings).values():
                await engine.aclose()
    finally:
        await runtime.close()


@app.command()
def worker(
    data_dir: DataDir = None,
    workers: Annotated[int | None, typer.Option(help="Tasks run at once.")] = None,
    engine: Annotated[
        list[str] | None, typer.Option(help="Engines to run (default: all routed).")
    ] = None,
    config: ConfigFile = None,
) -> None:
    """Run a worker without the HTTP API (for example a GPU worker beside `serve --workers 0`)."""
    settings = _settings(config, data_dir=data_dir, workers=workers)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    _run(_worker_main(settings, engine or None))


async def _worker_main(settings: Settings, engines: list[str] | None) -> None:
    runtime = await open_runtime(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runtime.start_worker(engines, dedicated=True)
        await stop.wait()
    finally:
        await runtime.close()


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="A label for the key.")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Make a new API key and print it (alone, on stdout). It is shown only once."""
    settings = _settings(config, data_dir=data_dir)

    async def go() -> str:
        runtime = await open_runtime(settings)
        try:
            return (await create_key(runtime.store, name)).key
        finally:
            await runtime.close()

    key = _run(go())
    sys.stdout.write(f"{key}\n")


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """List keys (id, name, prefix, state); secrets are never shown."""
    settings = _settings(config, data_dir=data_dir)

    async def go() -> list[tuple[str, str, str, str]]:
        runtime = await open_runtime(settings)
        try:
            rows = await runtime.store.list_keys()
        finally:
            await runtime.close()
        return [
            (r.id, r.name, r.prefix + "…", "revoked" if r.revoked_at else "active") for r in rows
        ]

    rows = _run(go())
    table = Table("id", "name", "prefix", "state")
    for row in rows:  # type: ignore[attr-defined]
        table.add_row(*row)
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id or prefix (from `keys list`).")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Revoke a key; requests with it then get 401 InvalidApiKey."""
    settings = _settings(config, data_dir=data_dir)

    async def go() -> bool:
        runtime = await open_runtime(settings)
        try:
            return await runtime.store.revoke_key(key_id)
        except ValueError as exc:  # an ambiguous prefix
            raise ConfigurationError(str(exc)) from None
        finally:
            await runtime.close()

    if not _run(go()):
        err.print(f"[red]error:[/red] no active key {key_id!r}")
        raise typer.Exit(1)
    err.print(f"revoked {key_id}")


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Apply the database migrations (serve and worker also do this at start)."""
    settings = _settings(config, data_dir=data_dir)

    async def go() -> None:
        runtime = await open_runtime(settings, migrate=True)
        await runtime.close()

    _run(go())
    err.print(f"database at {settings.db_url.split('@')[-1]} is up to date")


@app.command("fake-dashscope")
def fake_dashscope(
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 8001,
    key: Annotated[
        list[str] | None, typer.Option(help="An accepted API key (repeatable; default sk-fake).")
    ] = None,
    pending: Annotated[float, typer.Option(help="Seconds a task stays PENDING.")] = 2.0,
    running: Annotated[float, typer.Option(help="Seconds a task stays RUNNING.")] = 5.0,
) -> None:
    """Run a fake DashScope upstream to develop against (docs/fake-dashscope.md)."""
    from stillmotion.testing.fake_dashscope import FakeConfig, serve

    keys = {k: "ok" for k in key or ["sk-fake"]}
    config = FakeConfig(keys=keys, pending_seconds=pending, running_seconds=running)
    err.print(f"fake DashScope on http://{host}:{port}/api/v1 (keys: {len(keys)})")
    serve(host, port, config)


def main() -> None:
    app()

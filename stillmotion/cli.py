"""The command line: ``serve``, ``worker``, ``keys``, ``db``; ``accounts``, ``usage`` and
``billing`` in ``cli_accounts`` and ``cli_billing``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from stillmotion import __version__
from stillmotion.cli_accounts import register as register_accounts
from stillmotion.cli_billing import register as register_billing
from stillmotion.cli_common import (
    PLAIN,
    ConfigFile,
    DataDir,
    admin_settings,
    db_label,
    err,
    fail,
    open_store,
    run_or_exit,
    settings_or_exit,
)
from stillmotion.cli_generate import generate
from stillmotion.cli_webhooks import register as register_webhooks
from stillmotion.config import Settings
from stillmotion.logfmt import make_formatter
from stillmotion.runtime import ConfigurationError, build_engines, open_runtime, resolve_routes
from stillmotion.tasks.keys import create_key

if TYPE_CHECKING:
    import uvicorn

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
register_accounts(app)
register_billing(app)
register_webhooks(app)
log = logging.getLogger("stillmotion")

PortFile = Annotated[
    Path | None,
    typer.Option(
        "--port-file",
        envvar="STILLMOTION_PORT_FILE",
        help="Write the bound port here (atomically) once it accepts connections.",
    ),
]


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (0: any free port).")] = None,
    data_dir: DataDir = None,
    workers: Annotated[int | None, typer.Option(help="Tasks rendered at once (0: none).")] = None,
    config: ConfigFile = None,
    port_file: PortFile = None,
    processes: Annotated[
        int | None,
        typer.Option(help="API processes sharing the listening socket (STILLMOTION_PROCESSES)."),
    ] = None,
    listen_fd: Annotated[
        int | None, typer.Option("--listen-fd", hidden=True, help="(internal: a child's socket)")
    ] = None,
) -> None:
    """Run the HTTP API and (unless workers=0) the worker, on the embedded defaults."""
    import uvicorn

    from stillmotion.api.app import create_app
    from stillmotion.api.draining import DrainingServer
    from stillmotion.api.http_limits import LimitedHttpToolsProtocol

    settings = settings_or_exit(
        config, host=host, port=port, data_dir=data_dir, workers=workers, processes=processes
    )
    _setup_logging(settings)
    if listen_fd is None:  # a child of `serve --processes N` leaves these to its parent
        run_or_exit(_check_start(settings))
        if settings.allow_private_urls:
            log.warning(
                "STILLMOTION_ALLOW_PRIVATE_URLS is on: img_url and audio_url may reach loopback, "
                "private and link-local addresses (local development only)"
            )
        sock = _bind(settings.host, settings.port)  # port 0: the kernel picks a free one
    else:
        sock = socket.socket(fileno=listen_fd)  # bound (and listening) by the parent
    if listen_fd is None and settings.processes > 1:
        flags = {"--host": host, "--data-dir": data_dir, "--workers": workers, "--config": config}
        args = [f"{name}={value}" for name, value in flags.items() if value is not None]
        raise typer.Exit(_supervise(settings, sock, args, port_file))
    settings = settings.model_copy(update={"port": int(sock.getsockname()[1])})  # video_urls
    api = create_app(settings)
    server = DrainingServer(
        uvicorn.Config(
            api,
            host=settings.host,
            port=settings.port,
            log_config=None,  # our logging set-up; uvicorn's own lines only from warning up
            log_level=None,
            access_log=False,  # stillmotion.api.access_log writes one line per request
            http=LimitedHttpToolsProtocol,  # a head over 64 KB or 100 headers: 431
        ),
        api,
        settings.drain_seconds,  # SIGTERM: /readyz 503 and serving on this long, then stop
    )
    if listen_fd is not None:
        signal.signal(signal.SIGTERM, _stop_once(server))
    _run_server(server, sock, _banner(settings), port_file)


def _stop_once(server: uvicorn.Server) -> Callable[[int, FrameType | None], None]:
    """A child's SIGTERM handler outside uvicorn's own (installed while it serves): before
    that, the signal stops the server as uvicorn's would; after it, when uvicorn re-raises
    the signal it stopped on (so that a lone `serve` ends by SIGTERM, as uvicorn.run does),
    nothing happens: the child exits with status 0, and its parent can tell a clean stop
    from a crash."""

    def handler(sig: int, frame: FrameType | None) -> None:
        if not server.should_exit:
            server.handle_exit(sig, frame)

    return handler


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that the bound port (``port`` 0: any free one) is
    known before the app is made; status 3 when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        err.print(f"error: cannot listen on {host}:{port}: {exc}", **PLAIN)
        raise typer.Exit(3) from None
    return sock


RESTART_DELAY = 1.0  # seconds before a dead API process (one that had come up) is restarted
STOP_GRACE = 60.0  # seconds after drain_seconds that stopping children may take; then SIGKILL


def _supervise(
    settings: Settings, sock: socket.socket, args: list[str], port_file: Path | None
) -> int:
    """`serve --processes N`: N children, each a whole API process accepting on ``sock``
    (see :class:`_Supervisor`); the exit status of ``serve``."""
    sock.listen(2048)  # connections queue from now on, whichever child accepts them
    if settings.db_url.startswith("sqlite"):
        log.warning(
            "%d API processes on SQLite: they share one database file's write lock and only "
            "the process that took a submit wakes at once; PostgreSQL is the database for "
            "several processes (docs/deploy.md)",
            settings.processes,
        )
    signals: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda sig, frame: signals.append(sig))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        with tempfile.TemporaryDirectory(prefix="stillmotion-serve-") as scratch:
            return _Supervisor(settings, sock, args, Path(scratch), signals).run(port_file)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


class _Supervisor:
    """The children of `serve --processes N` (each `serve --listen-fd FD --processes=1`).

    They run in process groups of their own (a terminal's Ctrl-C reaches only the parent)
    and get SIGTERM if the parent dies (Linux). Every SIGTERM or SIGINT the parent gets is
    passed on to each child as a SIGTERM, so they drain and stop as one `serve` does (a
    second signal: at once); the parent waits for them (``drain_seconds`` + ``STOP_GRACE``
    at most, then SIGKILL and status 1) and logs how each one ended: a child stops with
    status 0 (see :func:`_stop_once`), and any other status makes the parent's 1. A child
    that dies after it came up (wrote its port file) is restarted after ``RESTART_DELAY``;
    one that dies before it came up stops the others, and ``serve`` exits with status 3."""

    def __init__(
        self,
        settings: Settings,
        sock: socket.socket,
        args: list[str],
        scratch: Path,
        signals: list[int],
    ) -> None:
        self.n = settings.processes
        self.stop_seconds = settings.drain_seconds + STOP_GRACE
        self.fd = sock.fileno()
        self.port = int(sock.getsockname()[1])
        self.command = [sys.executable, "-m", "stillmotion", "serve", *args, "--processes=1"]
        self.env = {k: v for k, v in os.environ.items() if k != "STILLMOTION_PORT_FILE"}
        self.scratch = scratch
        self.signals = signals  # appended to by the signal handlers
        self.forwarded = 0
        self.children: list[subprocess.Popen[bytes] | None] = [None] * self.n
        self.ready_files = [scratch / f"{slot}.port" for slot in range(self.n)]
        self.ready = [False] * self.n
        self.restart_at: list[float | None] = [None] * self.n
        self.starts = 0
        self.status = 0
        self.stop_deadline: float | None = None

    def start(self, slot: int) -> None:
        self.starts += 1
        self.ready[slot] = False
        self.ready_files[slot] = self.scratch / f"{slot}-{self.starts}.port"
        command = [*self.command, f"--listen-fd={self.fd}", f"--port-file={self.ready_files[slot]}"]
        self.children[slot] = subprocess.Popen(
            command,
            env=self.env,
            pass_fds=(self.fd,),
            process_group=0,
            preexec_fn=_die_with(os.getpid()),
        )

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [c for c in self.children if c is not None and c.poll() is None]

    def forward(self) -> None:
        """Pass each signal received since the last call on, as SIGTERM, to every child."""
        if len(self.signals) <= self.forwarded:
            return
        if self.stop_deadline is None:
            log.info("stopping %d API processes", self.n)
            self.stop_deadline = time.monotonic() + self.stop_seconds
        for _ in self.signals[self.forwarded :]:
            for child in self.alive():
                child.send_signal(signal.SIGTERM)
        self.forwarded = len(self.signals)

    def check(self, slot: int) -> bool:
        """Look after one slot; whether it has (or will have again) a live child."""
        child = self.children[slot]
        if child is None:
            at = self.restart_at[slot]
            if at is None:
                return False
            if self.stop_deadline is None and time.monotonic() >= at:
                self.restart_at[slot] = None
                self.start(slot)
            return self.stop_deadline is None
        code = child.poll()
        # a child that wrote its port file and died before the next look had come up too
        self.ready[slot] = self.ready[slot] or self.ready_files[slot].is_file()
        if code is None:
            return True
        self.children[slot] = None
        if self.stop_deadline is not None:
            if code in (0, -signal.SIGTERM):  # -SIGTERM: stopped before it could drain
                log.info("API process pid %d stopped (status %s)", child.pid, code)
            else:
                log.error("API process pid %d stopped with status %s", child.pid, code)
                self.status = self.status or 1
            return False
        if self.ready[slot]:
            log.error("API process pid %d exited with status %s; restarting it", child.pid, code)
            self.restart_at[slot] = time.monotonic() + RESTART_DELAY
            return True
        log.error(
            "API process pid %d exited with status %s before it served; stopping the others",
            child.pid,
            code,
        )
        self.status = 3
        self.signals.append(signal.SIGTERM)
        return False

    def announce(self, port_file: Path | None) -> None:
        if port_file is not None:
            _write_port_file(port_file, self.port)
        pids = ", ".join(str(c.pid) for c in self.children if c is not None)
        sys.stderr.write(f"stillmotion serve: {self.n} API processes on port {self.port} ")
        sys.stderr.write(f"(pids {pids})\n")
        sys.stderr.flush()

    def run(self, port_file: Path | None) -> int:
        try:
            for slot in range(self.n):
                self.start(slot)
            announced = False
            while True:
                self.forward()
                running = [self.check(slot) for slot in range(self.n)]
                if self.stop_deadline is not None:
                    if not any(running):
                        return self.status
                    if time.monotonic() > self.stop_deadline:
                        for child in self.alive():
                            log.error("API process pid %d did not stop; killing it", child.pid)
                        return self.status or 1
                elif not announced and all(self.ready):
                    announced = True
                    self.announce(port_file)
                time.sleep(0.05)
        finally:
            for child in self.alive():  # none left unless it timed out or failed
                child.kill()
            for left in self.children:
                if left is not None:
                    left.wait()


def _die_with(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn``: the child gets SIGTERM when ``parent`` dies (Linux), so that a
    killed `serve --processes N` leaves no API process behind."""
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the prctl
            os._exit(1)

    return preexec


def _write_port_file(path: Path, port: int) -> None:
    """``port`` and a newline in ``path``, atomically: a reader sees the whole file or none."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(f"{port}\n")
        os.replace(tmp, path)
    except OSError as exc:  # serving goes on; whoever waits for the file reads this
        log.error("cannot write the port file %s: %s", path, exc)


def _run_server(
    server: uvicorn.Server, sock: socket.socket, banner: str, port_file: Path | None
) -> None:
    """What uvicorn.run does with a server, plus the banner (and the port file) once the
    port accepts connections."""
    report = (port_file, int(sock.getsockname()[1])) if port_file is not None else None
    try:
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(_serve(server, sock, banner, report))
    except KeyboardInterrupt:  # as uvicorn.run: uvicorn re-raises a SIGINT once it has stopped
        pass
    finally:
        sock.close()
    if not server.started:
        raise typer.Exit(3)  # as uvicorn.run: start-up failed


def _setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()  # stderr
    handler.setFormatter(make_formatter(settings.log_format))  # text, or JSON lines
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for chatty in ("uvicorn.error", "alembic"):  # start-up lines: only the banner
            logging.getLogger(chatty).setLevel(logging.WARNING)


async def _serve(
    server: uvicorn.Server,
    sock: socket.socket,
    banner: str,
    port_file: tuple[Path, int] | None,
) -> None:
    """Serve on ``sock``; once it accepts connections, write the port file and the start-up
    banner (one line on stderr)."""
    announce = asyncio.create_task(_announce(server, banner, port_file))
    try:
        await server.serve(sockets=[sock])
    finally:
        announce.cancel()


async def _announce(
    server: uvicorn.Server, banner: str, port_file: tuple[Path, int] | None
) -> None:
    while not server.started:
        await asyncio.sleep(0.05)
    if port_file is not None:
        _write_port_file(*port_file)
    sys.stderr.write(banner + "\n")
    sys.stderr.flush()


def _banner(settings: Settings) -> str:
    engines = ", ".join(sorted(set(resolve_routes(settings).values())))
    worker = f"{settings.workers} at once" if settings.run_worker and settings.workers else "off"
    text = (
        f"stillmotion {__version__} serving on {settings.base_url} "
        f"(data dir: {settings.data_dir.resolve()}; database: {db_label(settings)}; "
        f"engines: {engines}; worker: {worker})"
    )
    if settings.log_format == "json":  # a JSON line too, whatever the log level
        record = logging.LogRecord(log.name, logging.INFO, __file__, 0, text, None, None)
        return make_formatter("json").format(record)
    return text


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
    settings = settings_or_exit(config, data_dir=data_dir, workers=workers)
    _setup_logging(settings)
    run_or_exit(_worker_main(settings, engine or None))


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
    account: Annotated[
        str | None,
        typer.Option(
            "--account", help="The account the key spends from (default: a new one named NAME)."
        ),
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Make it an admin key.")] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Make a new API key and print it (alone, on stdout). It is shown only once."""
    settings = admin_settings(config, data_dir)

    async def go() -> str:
        async with open_store(settings) as store:
            try:
                return (await create_key(store, name, account_id=account, is_admin=admin)).key
            except LookupError:  # create_key checks the account in its transaction
                fail(f"no account {account!r} (see `stillmotion accounts list`)", 1)

    key = run_or_exit(go())
    sys.stdout.write(f"{key}\n")


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """List keys (id, name, prefix, account, admin, state); secrets are never shown."""
    settings = admin_settings(config, data_dir)

    async def go() -> list[tuple[str, ...]]:
        async with open_store(settings) as store:
            rows = await store.list_keys()
        return [
            (r.id, r.name, r.prefix + "…", r.account_id or "", "admin" if r.is_admin else "",
             "revoked" if r.revoked_at else "active")
            for r in rows
        ]  # fmt: skip

    table = Table("id", "name", "prefix", "account", "admin", "state")
    for row in run_or_exit(go()):
        table.add_row(*row)
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id or prefix (from `keys list`).")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Revoke a key; requests with it then get 401 InvalidApiKey."""
    settings = admin_settings(config, data_dir)

    async def go() -> bool:
        async with open_store(settings) as store:
            try:
                return await store.revoke_key(key_id)
            except ValueError as exc:  # an ambiguous prefix
                raise ConfigurationError(str(exc)) from None

    if not run_or_exit(go()):
        err.print(f"[red]error:[/red] no active key {key_id!r}")
        raise typer.Exit(1)
    err.print(f"revoked {key_id}")


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Apply the database migrations (serve and worker also do this at start)."""
    settings = admin_settings(config, data_dir)

    async def go() -> None:
        async with open_store(settings):
            pass

    run_or_exit(go())
    err.print(f"database {db_label(settings)} is up to date", **PLAIN)


@app.command("fake-dashscope")
def fake_dashscope(
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port (0: any free port).")] = 8001,
    key: Annotated[
        list[str] | None, typer.Option(help="An accepted API key (repeatable; default sk-fake).")
    ] = None,
    pending: Annotated[float, typer.Option(help="Seconds a task stays PENDING.")] = 2.0,
    running: Annotated[float, typer.Option(help="Seconds a task stays RUNNING.")] = 5.0,
    port_file: PortFile = None,
) -> None:
    """Run a fake DashScope upstream to develop against (docs/fake-dashscope.md)."""
    from stillmotion.testing.fake_dashscope import FakeConfig, serve

    keys = {k: "ok" for k in key or ["sk-fake"]}
    config = FakeConfig(keys=keys, pending_seconds=pending, running_seconds=running)

    def ready(bound: int) -> None:  # once the port accepts connections
        if port_file is not None:
            _write_port_file(port_file, bound)
        err.print(f"fake DashScope on http://{host}:{bound}/api/v1 (keys: {len(keys)})", **PLAIN)

    serve(_bind(host, port), config, ready=ready)


@app.command("fake-videos")
def fake_videos(
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port (0: any free port).")] = 8002,
    key: Annotated[
        list[str] | None,
        typer.Option(help="An accepted Bearer key (repeatable; default: accept any)."),
    ] = None,
    queued: Annotated[float, typer.Option(help="Seconds a video stays queued.")] = 2.0,
    running: Annotated[float, typer.Option(help="Seconds a video stays in_progress.")] = 5.0,
    model: Annotated[
        str | None, typer.Option(help="The model it serves (when a request names none).")
    ] = None,
    port_file: PortFile = None,
) -> None:
    """Run a fake OpenAI-style /v1/videos server (as vLLM-Omni) (docs/fake-videos.md)."""
    from stillmotion.testing.fake_videos import FakeVideosConfig, serve

    config = FakeVideosConfig(keys=set(key or ()), queued_seconds=queued, running_seconds=running)
    if model:
        config.model = model
    keys = f"keys: {len(config.keys)}" if config.keys else "any key"

    def ready(bound: int) -> None:  # once the port accepts connections
        if port_file is not None:
            _write_port_file(port_file, bound)
        err.print(f"fake /v1/videos on http://{host}:{bound}/v1 ({keys})", **PLAIN)

    serve(_bind(host, port), config, ready=ready)


def main() -> None:
    app()

"""``stillmotion generate``: submit a first frame, watch the task, save the MP4.

Uses only the SDK (``stillmotion.client``), so it works against any stillmotion server and
against DashScope itself (``--server https://dashscope.aliyuncs.com/api/v1``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from stillmotion.client import (
    Client,
    InvalidParameterError,
    StillmotionError,
    SubmitOptions,
    Task,
    TaskFailed,
    WaitTimeout,
)

#: exit codes: 1 the request was refused or could not be sent, 3 the task failed, 4 timeout
EXIT_REFUSED, EXIT_FAILED, EXIT_TIMEOUT, EXIT_INTERRUPTED = 1, 3, 4, 130
OUT = Path("out.mp4")


class LiveDisplay:
    """A rich progress line on a terminal: spinner, status, bar, percentage, elapsed time."""

    def __init__(self, console: Console) -> None:
        columns = (
            SpinnerColumn(),
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(),
            TextColumn("{task.fields[pct]:>4}"),
            TimeElapsedColumn(),
        )
        self._progress = Progress(*columns, console=console, transient=False)
        self._bar = self._progress.add_task("SUBMIT", total=None, pct="")

    def update(self, task: Task) -> None:
        done = task.progress if task.progress is not None else (100 if task.succeeded else None)
        pct = f"{done}%" if done is not None else ""
        self._progress.update(self._bar, description=task.status, pct=pct)
        if done is not None:
            self._progress.update(self._bar, total=100, completed=done)

    def __enter__(self) -> LiveDisplay:
        self._progress.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if e is not None:  # the one-line reason replaces the display
            self._progress.live.transient = True
        self._progress.stop()


class LineDisplay:
    """Without a terminal (logs, CI): one line per status change."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._last = ""
        self._start = time.monotonic()

    def update(self, task: Task) -> None:
        if task.status != self._last:
            self._last = task.status
            took = time.monotonic() - self._start
            self._console.print(
                f"task {task.task_id}: {task.status} ({took:.0f} s)", soft_wrap=True
            )

    def __enter__(self) -> LineDisplay:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


def reason(exc: StillmotionError) -> str:
    """The one-line reason printed on failure."""
    if isinstance(exc, TaskFailed):
        text = f"task {exc.task.task_id} {exc.task.status}: {exc.code}: {exc.message}"
    elif isinstance(exc, WaitTimeout):
        text = f"{exc} (it goes on on the server)"
    elif isinstance(exc, InvalidParameterError) and exc.field:
        text = f"{exc.code} ({exc.field}): {exc.message}"
    else:
        text = str(exc)
    return "error: " + " ".join(text.split())


def _exit_code(exc: StillmotionError) -> int:
    if isinstance(exc, TaskFailed):
        return EXIT_FAILED
    if isinstance(exc, WaitTimeout):
        return EXIT_TIMEOUT
    return EXIT_REFUSED


def _run(
    client: Client,
    image: str,
    output: Path,
    model: str,
    timeout: float,
    quiet: bool,
    options: SubmitOptions,
) -> Task:
    console = Console(stderr=True, quiet=quiet)
    display = LiveDisplay(console) if console.is_terminal else LineDisplay(console)
    with display:
        task = client.submit(model, image, **options)
        display.update(task)
        try:
            done = client.wait(task.task_id, timeout=timeout, on_progress=display.update)
        except KeyboardInterrupt:
            _fail(f"interrupted; task {task.task_id} goes on on the server", EXIT_INTERRUPTED)
    client.download(done, output)
    console.print(f"saved {output} ({output.stat().st_size / 1e6:.1f} MB)", soft_wrap=True)
    return done


def generate(
    image: Annotated[str, typer.Argument(help="First frame: a JPEG/PNG/BMP/WEBP file or a URL.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What should happen.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to save the MP4.")] = OUT,
    model: Annotated[str, typer.Option(help="Model id (see GET /v1/models).")] = "wan2.6-i2v-flash",
    resolution: Annotated[str | None, typer.Option(help="480P, 720P or 1080P.")] = None,
    duration: Annotated[int | None, typer.Option(help="Seconds.")] = None,
    audio: Annotated[bool | None, typer.Option("--audio/--no-audio", help="Audio track.")] = None,
    audio_url: Annotated[str | None, typer.Option(help="wav/mp3 file or URL.")] = None,
    seed: Annotated[int | None, typer.Option(help="0-2147483647.")] = None,
    shot_type: Annotated[str | None, typer.Option(help="single or multi (wan2.6).")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="What to avoid.")] = None,
    server: Annotated[
        str | None, typer.Option(envvar="STILLMOTION_URL", help="Server base URL.")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None, typer.Option(envvar="STILLMOTION_API_KEY", help="API key.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the video.")] = 900.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Make a video from IMAGE and save it; prints the saved path on stdout.

    Exit status: 0 saved, 1 request refused or not sent, 3 task failed, 4 timed out."""
    if not api_key:
        _fail("error: no API key: pass --api-key or set STILLMOTION_API_KEY", EXIT_REFUSED)
    options: SubmitOptions = {
        "prompt": prompt, "negative_prompt": negative_prompt, "resolution": resolution,
        "duration": duration, "audio": audio, "audio_url": audio_url, "seed": seed,
        "shot_type": shot_type,
    }  # fmt: skip
    try:
        with Client(server, api_key, max_poll_interval=3.0) as client:
            _run(client, image, output, model, timeout, quiet, options)
    except StillmotionError as exc:
        _fail(reason(exc), _exit_code(exc))
    sys.stdout.write(f"{output}\n")


def _fail(line: str, code: int) -> NoReturn:
    sys.stderr.write(line + "\n")
    raise typer.Exit(code)

"""``stillmotion generate`` as a subprocess against a subprocess ``stillmotion serve``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
import requests

from stillmotion.media.geometry import output_size
from stillmotion.testing.images import image_bytes
from stillmotion.testing.media_server import MediaServer
from tests.servers import Server, served

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", name="served")
def served_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    yield from served(tmp_path_factory.mktemp("cli"), "cli")


@pytest.fixture(scope="module", name="idle")
def idle_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server without a worker: its tasks stay PENDING for as long as a test needs."""
    yield from served(tmp_path_factory.mktemp("idle"), "idle", workers=0)


@pytest.fixture
def frame(tmp_path: Path) -> Path:
    path = tmp_path / "frame.jpg"
    path.write_bytes(image_bytes(640, 360, "JPEG"))
    return path


def generate(
    served: tuple[Server, str], *args: str, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    srv, good = served
    env = {**os.environ, "STILLMOTION_URL": srv.base, "STILLMOTION_API_KEY": key or good}
    return subprocess.run(
        [sys.executable, "-m", "stillmotion", "generate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert stderr.rstrip("\n").endswith(lines[0]), stderr  # the reason is the last line
    return lines[0]


def test_generate_saves_a_decodable_mp4(
    served: tuple[Server, str], frame: Path, tmp_path: Path
) -> None:
    out = tmp_path / "clips" / "out.mp4"
    done = generate(
        served,
        str(frame),
        "--prompt",
        "slow pan to the right",
        "-o",
        str(out),
        "--resolution",
        "720P",
        "--duration",
        "2",
        "--no-audio",
        "--seed",
        "5",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert "SUCCEEDED" in done.stderr and "saved" in done.stderr
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        size = (stream.codec_context.width, stream.codec_context.height)
        assert size == output_size(640, 360, "720P")
        assert sum(1 for _ in container.decode(stream)) == 60
        assert len(container.streams.audio) == 0


def test_bad_key_exits_non_zero_with_one_line(
    served: tuple[Server, str], frame: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.mp4"
    done = generate(served, str(frame), "-p", "x", "-o", str(out), key="sm-wrong")
    assert done.returncode == 1
    line = _one_error_line(done.stderr)
    assert "InvalidApiKey" in line and "Invalid API-key" in line
    assert not out.exists() and done.stdout == ""


def test_invalid_duration_names_the_field(served: tuple[Server, str], frame: Path) -> None:
    done = generate(served, str(frame), "-p", "x", "--duration", "16")
    assert done.returncode == 1
    line = _one_error_line(done.stderr)
    assert "InvalidParameter" in line and "parameters.duration" in line and "2 to 15" in line


def test_failed_task_names_its_code(served: tuple[Server, str], tmp_path: Path) -> None:
    with MediaServer({}) as media:
        done = generate(
            served,
            media.url("/missing.png"),
            "-p",
            "x",
            "--duration",
            "2",
            "--resolution",
            "720P",
            "-o",
            str(tmp_path / "never.mp4"),
        )
    assert done.returncode == 3
    line = _one_error_line(done.stderr)
    assert "FAILED" in line and "BadRequest.InputDownloadFailed" in line
    assert not (tmp_path / "never.mp4").exists()


def test_unreadable_image_fails_before_sending(served: tuple[Server, str], tmp_path: Path) -> None:
    done = generate(served, str(tmp_path / "nope.png"), "-p", "x")
    assert done.returncode == 1
    assert "cannot read" in _one_error_line(done.stderr)


def _status(served: tuple[Server, str], task_id: str) -> str:
    srv, key = served
    answer = requests.get(
        f"{srv.base}/task/{task_id}", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["output"]["task_status"])


def test_timeout_exits_4_and_the_task_goes_on(
    idle: tuple[Server, str], frame: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.mp4"
    done = generate(idle, str(frame), "-p", "x", "--timeout", "1.5", "-o", str(out))
    assert done.returncode == 4, done.stderr
    line = _one_error_line(done.stderr)
    found = re.fullmatch(
        r"error: task (\S+) still PENDING after 1\.5 s \(it goes on on the server\)", line
    )
    assert found is not None, line
    assert done.stdout == "" and not out.exists()
    assert _status(idle, found.group(1)) == "PENDING"  # not canceled: it goes on


def test_ctrl_c_while_waiting_exits_130_and_the_task_goes_on(
    idle: tuple[Server, str], frame: Path, tmp_path: Path
) -> None:
    srv, key = idle
    out = tmp_path / "out.mp4"
    env = {**os.environ, "STILLMOTION_URL": srv.base, "STILLMOTION_API_KEY": key}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stillmotion", "generate", str(frame), "-p", "x", "-o", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        # without a terminal it prints one line per status: the first once the task exists
        first = proc.stderr.readline()
        found = re.match(r"task (\S+): PENDING ", first)
        assert found is not None, first + proc.stderr.read()
        time.sleep(1.0)  # at least this long: it is polling now (the task stays PENDING)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    task_id = found.group(1)
    assert stderr.rstrip("\n").splitlines()[-1] == (
        f"interrupted; task {task_id} goes on on the server"
    )
    assert stdout == "" and not out.exists()
    assert _status(idle, task_id) == "PENDING"  # not canceled: it goes on

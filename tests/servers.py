"""`stillmotion serve` as a subprocess on a free loopback port, for end-to-end tests.

The server binds port 0 itself and reports the port it got (``--port-file``), so no other
process can take the port between its choice and the bind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import requests

UP_SECONDS = 60.0  # a guard against a hang only: a loaded machine may take long to start


def wait_for_port(
    proc: subprocess.Popen[bytes],
    port_file: Path,
    output: Callable[[], str] = lambda: "",
    what: str = "serve",
) -> int:
    """The port ``proc`` wrote to ``port_file`` once it accepted connections (bounded wait);
    a failure names how the process ended and quotes its ``output``."""
    deadline = time.monotonic() + UP_SECONDS
    while not port_file.is_file():
        code = proc.poll()
        if code is not None:
            raise AssertionError(f"{what} exited with status {code} before it served:\n{output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} wrote no port in {UP_SECONDS:g} s:\n{output()}")
        time.sleep(0.05)
    text = port_file.read_text()  # written atomically: whole or absent
    assert text.strip().isdigit() and int(text) > 0, f"{what} wrote {text!r} to {port_file}"
    return int(text)


class Server:
    def __init__(self, data_dir: Path):
        self.port: int | None = None  # the port of the running server (a new one per start)
        self.port_file = data_dir.with_name(f"{data_dir.name}-serve.port")
        self.env = {
            **os.environ,
            "STILLMOTION_DATA_DIR": str(data_dir),
            "STILLMOTION_PORT": "0",
            "STILLMOTION_PORT_FILE": str(self.port_file),
            "STILLMOTION_LEASE_SECONDS": "3",
            "STILLMOTION_ALLOW_PRIVATE_URLS": "1",
            "STILLMOTION_WORKERS": "1",
            "STILLMOTION_LOG_LEVEL": "warning",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        # the server's stdout and stderr are appended here (quoted when it does not come up)
        self.log = data_dir.with_name(f"{data_dir.name}-serve.log")

    @property
    def base(self) -> str:
        assert self.port is not None, "the server is not running"
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-8000:] if self.log.is_file() else ""

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "stillmotion", *args],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=True,
        )
        return out.stdout.decode()

    def start(self) -> None:
        self.port = None
        self.port_file.unlink(missing_ok=True)  # a previous start's
        with open(self.log, "ab") as out:  # the child holds its own copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stillmotion", "serve"],
                env=self.env,
                start_new_session=True,
                stdout=out,
                stderr=out,
            )
        self.port = wait_for_port(self.proc, self.port_file, self.output)
        resp = requests.get(self.base + "/healthz", timeout=30)
        assert resp.status_code == 200, f"{resp.status_code} {resp.text}\n{self.output()}"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)  # the server and its render processes
        self.proc.wait(timeout=30)
        self.proc = None


def served(root: Path, name: str, workers: int = 1) -> Iterator[tuple[Server, str]]:
    """A started server with a fresh key ``name``; killed (with its children) afterwards."""
    srv = Server(root / "data")
    srv.env["STILLMOTION_WORKERS"] = str(workers)
    key = srv.cli("keys", "create", "--name", name).strip()
    srv.start()
    try:
        yield srv, key
    finally:
        if srv.proc is not None:
            srv.kill()

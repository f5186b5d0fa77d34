"""`stillmotion serve` as a subprocess on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, data_dir: Path):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "STILLMOTION_DATA_DIR": str(data_dir),
            "STILLMOTION_PORT": str(self.port),
            "STILLMOTION_LEASE_SECONDS": "3",
            "STILLMOTION_ALLOW_PRIVATE_URLS": "1",
            "STILLMOTION_WORKERS": "1",
            "STILLMOTION_LOG_LEVEL": "warning",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None  # set: the server's stdout and stderr are appended here

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
        out = open(self.log, "ab") if self.log is not None else None  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stillmotion", "serve"],
            env=self.env,
            start_new_session=True,
            stdout=out,
            stderr=out,
        )
        if out is not None:
            out.close()  # the child holds its own copy
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            assert self.proc.poll() is None, "serve exited early"
            time.sleep(0.1)
        raise AssertionError("serve did not come up in 60 s")

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

"""The command line as a user runs it: real `stillmotion` subprocesses in temp directories."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.servers import wait_for_port

KEY = re.compile(r"sm-[A-Za-z0-9_-]{20,}")


def run_cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``stillmotion ARGS`` in ``cwd`` with no STILLMOTION_* setting but those in ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("STILLMOTION_")}
    clean["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return subprocess.run(
        [sys.executable, "-m", "stillmotion", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def flat(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- data dir


def test_keys_refuse_to_start_a_default_data_dir_elsewhere(tmp_path: Path) -> None:
    out = run_cli(tmp_path, "keys", "create", "--name", "lost")
    assert out.returncode == 2 and out.stdout == ""
    message = flat(out.stderr)
    assert f"no stillmotion data dir at {tmp_path / 'stillmotion-data'}" in message
    for way in ("--data-dir", "STILLMOTION_DATA_DIR", "--config", "STILLMOTION_CONFIG"):
        assert way in message
    assert list(tmp_path.iterdir()) == []  # nothing created
    assert run_cli(tmp_path, "keys", "list").returncode == 2
    assert run_cli(tmp_path, "db", "upgrade").returncode == 2
    assert list(tmp_path.iterdir()) == []


def test_keys_use_the_named_data_dir_from_anywhere_and_say_which(tmp_path: Path) -> None:
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    elsewhere.mkdir()
    made = run_cli(
        tmp_path, "keys", "create", "--name", "ops", env={"STILLMOTION_DATA_DIR": "data"}
    )
    assert made.returncode == 0, made.stderr
    assert KEY.fullmatch(made.stdout.strip()) and made.stdout.count("\n") == 1  # the key alone
    assert flat(made.stderr) == f"data dir: {data} (from STILLMOTION_DATA_DIR, new)"
    listed = run_cli(elsewhere, "keys", "list", "--data-dir", str(data))
    assert listed.returncode == 0, listed.stderr
    assert "ops" in listed.stdout and made.stdout.strip() not in listed.stdout
    assert flat(listed.stderr) == f"data dir: {data} (from --data-dir)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "elsewhere"]


def test_config_file_data_dir_is_relative_to_the_file(tmp_path: Path) -> None:
    conf_dir, a, b = tmp_path / "etc", tmp_path / "a", tmp_path / "b"
    for folder in (conf_dir, a, b):
        folder.mkdir()
    config = conf_dir / "stillmotion.toml"
    config.write_text('data_dir = "state"\n')
    made = run_cli(a, "keys", "create", "--name", "from-a", "--config", str(config))
    assert made.returncode == 0, made.stderr
    assert flat(made.stderr) == f"data dir: {conf_dir / 'state'} (from data_dir in {config}, new)"
    env = {"STILLMOTION_CONFIG": str(config)}
    listed = run_cli(b, "keys", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "from-a" in listed.stdout
    assert (conf_dir / "state" / "stillmotion.db").is_file()
    assert list(a.iterdir()) == [] and list(b.iterdir()) == []


def test_revoke_and_db_upgrade_name_the_data_dir(tmp_path: Path) -> None:
    env = {"STILLMOTION_DATA_DIR": str(tmp_path / "d")}
    key = run_cli(tmp_path, "keys", "create", "--name", "x", env=env).stdout.strip()
    upgraded = run_cli(tmp_path, "db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"data dir: {tmp_path / 'd'} (from STILLMOTION_DATA_DIR)" in upgraded.stderr
    assert "is up to date" in upgraded.stderr
    revoked = run_cli(tmp_path, "keys", "revoke", key[:10], env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert (
        "revoked" in revoked.stderr
        and "revoked" in run_cli(tmp_path, "keys", "list", env=env).stdout
    )


# --------------------------------------------------------------------------- serve's output


class Serve:
    """`stillmotion serve` with its stderr in a file; stopped with SIGTERM by :meth:`stop`."""

    def __init__(self, root: Path, **env: str) -> None:
        self.base = ""  # once up: the port serve bound (port 0) and wrote to its port file
        self.port_file = root / "serve.port"
        self.log = root / "serve.log"
        settings = {
            "STILLMOTION_DATA_DIR": str(root / "data"),
            "STILLMOTION_PORT": "0",
            "STILLMOTION_PORT_FILE": str(self.port_file),
            "STILLMOTION_WORKERS": "0",
            "STILLMOTION_LOG_LEVEL": "info",
            **env,
        }
        self.key = run_cli(root, "keys", "create", "--name", "t", env=settings).stdout.strip()
        clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("STILLMOTION_")}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stillmotion", "serve"],
                cwd=root,
                env={**clean, **settings},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_up(self) -> None:
        port = wait_for_port(self.proc, self.port_file, self.log.read_text)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                requests.get(f"{self.base}/nowhere-yet", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError("serve did not come up in 60 s")

    def stop(self) -> list[str]:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)
        return self.log.read_text().splitlines()


@pytest.fixture
def serve(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Serve]:
    env: dict[str, str] = getattr(request, "param", {})
    srv = Serve(tmp_path, **env)
    try:
        yield srv
    finally:
        if srv.proc.poll() is None:
            os.killpg(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait(timeout=30)


@pytest.mark.e2e
def test_serve_prints_one_banner_and_one_line_per_request(serve: Serve) -> None:
    serve.wait_up()  # GET /nowhere-yet: 404s, one line each
    auth = {"Authorization": f"Bearer {serve.key}"}
    assert requests.get(f"{serve.base}/task/abc?x=1", headers=auth, timeout=10).status_code == 200
    signed = f"{serve.base}/files/videos/abc.mp4?Expires=1&Signature=SIGSECRET"
    assert requests.get(signed, timeout=10).status_code == 403
    lines = serve.stop()
    banners = [line for line in lines if line.startswith("stillmotion ")]
    assert len(banners) == 1, lines
    banner = banners[0]
    assert f"serving on {serve.base}" in banner and "data dir:" in banner
    assert "database: SQLite" in banner and "engines: motion" in banner
    assert not any("Uvicorn running" in line or "alembic" in line for line in lines), lines
    assert not any("ALLOW_PRIVATE" in line for line in lines)
    access = [line for line in lines if line.startswith("INFO stillmotion.access: ")]
    assert access[-2].split()[2:5] == ["GET", "/task/abc", "200"]
    assert access[-1].split()[2:5] == ["GET", "/files/videos/abc.mp4", "403"]
    assert all(
        line.startswith("INFO stillmotion.access: GET /nowhere-yet 404 ") for line in access[:-2]
    )
    assert all(re.search(r" \d+\.\d ms$", line) for line in access)
    text = "\n".join(lines)
    assert serve.key not in text and "SIGSECRET" not in text and "x=1" not in text


@pytest.mark.e2e
@pytest.mark.parametrize("serve", [{"STILLMOTION_ALLOW_PRIVATE_URLS": "1"}], indirect=True)
def test_serve_warns_when_private_urls_are_allowed(serve: Serve) -> None:
    serve.wait_up()
    lines = serve.stop()
    warnings = [line for line in lines if "STILLMOTION_ALLOW_PRIVATE_URLS" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING "), lines
    assert "local development only" in warnings[0]

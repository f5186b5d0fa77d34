"""Schemathesis against a live ``stillmotion serve`` on loopback, on SQLite and PostgreSQL.

Its four phases (the documented examples, including the seed submit; boundary coverage;
random fuzzing, valid and invalid data; stateful sequences following submit -> query ->
cancel) send a few thousand requests with a valid key and a fixed seed, and check each answer:
no 5xx, a documented status, a documented content type, a body that matches its schema.
The worker is off: the submits are accepted and stored, nothing renders. One schemathesis
worker: the run is reproducible from its seed (and CPython 3.11's ``ast.parse``, which
Hypothesis calls while describing strategies, is not safe across threads).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import requests
from sqlalchemy import make_url

from tests.servers import Server
from tests.store_fixtures import PG_ADMIN_URL

SEED = 20261201
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance," + (
    "content_type_conformance"
)
SUBMITS = ("/task/bailian/image2video", "/api/v1/services/aigc/video-generation/video-synthesis")
ST = "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"


async def _pg(sql: str) -> None:
    dsn = make_url(PG_ADMIN_URL).set(drivername="postgresql").render_as_string(False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def _database(backend: str) -> Iterator[str | None]:
    """``None`` (the data dir's SQLite file), or the URL of a fresh PostgreSQL database."""
    if backend == "sqlite":
        yield None
        return
    name = f"sm_fuzz_{secrets.token_hex(6)}"
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(False)
    finally:
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(
    params=[pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def live(backend: str, tmp_path: Path) -> Iterator[tuple[Server, str]]:
    """``stillmotion serve`` (worker off) on ``backend``, and a key."""
    with _database(backend) as url:
        srv = Server(tmp_path / "data")
        srv.env["STILLMOTION_WORKERS"] = "0"
        if url is not None:
            srv.env["STILLMOTION_DATABASE_URL"] = url
        key = srv.cli("keys", "create", "--name", "fuzz").strip()
        srv.start()
        try:
            yield srv, key
        finally:
            srv.kill()


def run_schemathesis(srv: Server, key: str, har: Path, max_examples: int) -> str:
    args = [
        *("run", f"{srv.base}/openapi.json", "--seed", str(SEED), "-n", str(max_examples)),
        *("--checks", CHECKS, "-w", "1", "--no-color", "--request-timeout", "30"),
        *("-H", f"Authorization: Bearer {key}", "--report", "har", "--report-har-path", str(har)),
    ]
    out = subprocess.run(  # in the report's folder: schemathesis keeps a cache in its cwd
        [sys.executable, "-c", ST, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=har.parent,
    )
    assert out.returncode == 0, out.stdout[-8000:] + out.stderr[-2000:]
    return out.stdout


def tally(har: Path) -> tuple[Counter[int], Counter[str], list[dict[str, Any]]]:
    """Statuses seen, accepted submits per path, and every 5xx exchange."""
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses: Counter[int] = Counter(e["response"]["status"] for e in entries)
    accepted: Counter[str] = Counter()
    for e in entries:
        path = "/" + e["request"]["url"].split("/", 3)[3].split("?")[0]
        if e["request"]["method"] == "POST" and path in SUBMITS and e["response"]["status"] == 200:
            accepted[path] += 1
    errors = [e for e in entries if e["response"]["status"] >= 500]
    return statuses, accepted, errors


def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(
    live: tuple[Server, str], backend: str, tmp_path: Path
) -> None:
    srv, key = live
    har = tmp_path / "schemathesis.har.json"
    stdout = run_schemathesis(srv, key, har, max_examples=80 if backend == "sqlite" else 25)
    statuses, accepted, errors = tally(har)
    total = sum(statuses.values())
    print(f"\n{backend}: {total} requests, statuses {dict(sorted(statuses.items()))}, "
          f"accepted submits {dict(accepted)}")  # fmt: skip
    assert errors == [], errors[:3]
    assert total >= (1200 if backend == "sqlite" else 400), stdout[-3000:]
    assert set(accepted) == set(SUBMITS), accepted  # valid submits on both paths
    assert {400, 401, 403} <= set(statuses), statuses
    assert srv.proc is not None and srv.proc.poll() is None  # still serving
    # every accepted submit made one task, and no refused one left a task behind
    listed = requests.get(
        f"{srv.base}/v1/tasks?limit=1", headers={"Authorization": f"Bearer {key}"}
    )
    assert listed.json()["total"] == sum(accepted.values())

"""``GET /healthz`` (docs/api.md): 200 with the store's figures; 503 when the database does not
answer, and 200 again once it does.

The outage is a real one: the PostgreSQL database stops taking connections and the ones the
server holds are ended (as on a database restart or failover). A SQLite file cannot be made
to stop answering a process that holds it open, so this runs on PostgreSQL only.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import make_url

from stillmotion.api.app import create_app
from stillmotion.config import Settings
from stillmotion.runtime import open_runtime
from tests.store_fixtures import _admin_dsn, pg_database

pytestmark = pytest.mark.postgres


async def _set_connectable(database: str, allowed: bool) -> None:
    """Let ``database`` take connections or not; when not, end every one it has."""
    admin = await asyncpg.connect(_admin_dsn())
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
    finally:
        await admin.close()


async def test_healthz_is_503_while_the_database_does_not_answer(tmp_path: Path) -> None:
    async with pg_database() as url:
        name = make_url(url).database
        assert name is not None
        settings = Settings(data_dir=tmp_path / "data", database_url=url, workers=0)
        runtime = await open_runtime(settings)
        try:
            transport = httpx.ASGITransport(app=create_app(runtime=runtime))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                up = await client.get("/healthz")
                assert up.status_code == 200, up.text
                assert up.json()["status"] == "ok" and up.json()["database"] == "postgresql"

                await _set_connectable(name, False)
                try:
                    down = await client.get("/healthz")
                finally:
                    await _set_connectable(name, True)
                assert down.status_code == 503, down.text
                body = down.json()
                assert set(body) == {"status", "database"}  # HealthError, not an error body
                assert body["status"] == "error"
                assert 0 < len(body["database"]) <= 200  # the driver's reason, cut short

                again = await client.get("/healthz")
                assert again.status_code == 200, again.text
                assert again.json()["status"] == "ok"
        finally:
            await runtime.close()

"""The access log middleware in the app: one line per request, nothing secret in it."""

from __future__ import annotations

import logging

import httpx
import pytest

from stillmotion.api.access_log import MAX_PATH_CHARS, log_path

LOGGER = "stillmotion.access"


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def test_one_line_per_request_without_query_or_key(
    client: httpx.AsyncClient, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    await client.get("/healthz")
    await client.get("/files/videos/a.mp4?Expires=1&Signature=SIGSECRET")
    await client.post("/task/bailian/image2video", content=b"{", headers=auth)
    lines = _lines(caplog)
    assert [line.rsplit(" ", 2)[0] for line in lines] == [
        "GET /healthz 200",
        "GET /files/videos/a.mp4 403",
        "POST /task/bailian/image2video 400",
    ]
    assert all(float(line.split()[-2]) >= 0 and line.endswith(" ms") for line in lines)
    text = "\n".join(lines)
    assert "SIGSECRET" not in text and auth["Authorization"].split()[1] not in text


async def test_silent_and_transparent_when_info_is_off(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert (await client.get("/healthz")).status_code == 200
    assert _lines(caplog) == []


def test_paths_cannot_forge_or_flood_lines() -> None:
    forged = {"type": "http", "raw_path": b"/task/x\nINFO stillmotion.access: GET / 200"}
    assert "\n" not in log_path(forged) and "\\n" in log_path(forged)
    long = {"type": "http", "raw_path": b"/" + b"a" * 10_000 + b"?Signature=s"}
    assert len(log_path(long)) == MAX_PATH_CHARS + 1
    assert log_path({"type": "http", "path": "/p", "raw_path": b"/p?Signature=s"}) == "/p"
    assert log_path({"type": "http", "path": "/from-path"}) == "/from-path"

"""The web playground: its static files and ``GET /v1/tasks`` in-process, then the page end to
end in headless Chromium against a subprocess ``stillmotion serve``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from stillmotion.media.geometry import output_size
from stillmotion.runtime import Runtime
from stillmotion.tasks.keys import create_key
from stillmotion.testing.images import image_bytes
from tests.conftest import poll, seed_body
from tests.servers import Server, served

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}


def artifacts() -> Path:
    path = Path(os.environ.get("STILLMOTION_ARTIFACTS") or ROOT / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- in-process: static files and the task list ----------------------------------------


@pytest.mark.parametrize(
    ("path", "media", "marker"),
    [
        ("/", "text/html", 'id="generate-form"'),
        ("/web/app.js", "text/javascript", "function outputSize"),
        ("/web/style.css", "text/css", ".layout"),
    ],
)
async def test_static_files_are_served(
    client: httpx.AsyncClient, path: str, media: str, marker: str
) -> None:
    resp = await client.get(path)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith(media)
    assert "connect-src 'self'" in resp.headers["content-security-policy"]
    assert marker in resp.text


async def test_unknown_static_file_is_a_json_404(client: httpx.AsyncClient) -> None:
    for path in ("/web/secret.py", "/web/..%2Fapi%2Fapp.py", "/web/"):
        resp = await client.get(path)
        assert resp.status_code == 404, path
        assert resp.json()["code"] == "NotFound"


async def test_task_list_is_per_key_newest_first_and_paged(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    ids = []
    for prompt in ("first", "second", "third"):
        body = seed_body()
        body["input"]["prompt"] = prompt
        resp = await client.post("/task/bailian/image2video", json=body, headers=auth)
        ids.append(resp.json()["output"]["task_id"])
    page = (await client.get("/v1/tasks?limit=2", headers=auth)).json()
    assert page["total"] == 3
    assert [t["task_id"] for t in page["data"]] == ids[:0:-1]
    first = page["data"][0]
    assert first["prompt"] == "third" and first["model"] == "wan2.6-i2v-flash"
    assert first["task_status"] == "PENDING" and first["submit_time"] and first["end_time"] is None
    assert (first["resolution"], first["duration"]) == ("720P", 2)
    rest = (await client.get("/v1/tasks?limit=2&offset=2", headers=auth)).json()
    assert [t["task_id"] for t in rest["data"]] == ids[:1] and rest["total"] == 3
    other = await create_key(runtime.store, "other")
    mine = await client.get("/v1/tasks", headers={"Authorization": f"Bearer {other.key}"})
    assert mine.json() == {"data": [], "total": 0}


async def test_task_list_shows_video_url_and_failure_code(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    await runtime.start_worker()
    ok = await client.post("/task/bailian/image2video", json=seed_body(), headers=auth)
    ok_id = ok.json()["output"]["task_id"]
    bad = seed_body("http://127.0.0.1:9/missing.png")
    bad_id = (await client.post("/task/bailian/image2video", json=bad, headers=auth)).json()
    for task_id in (ok_id, bad_id["output"]["task_id"]):
        await poll(client, task_id, auth, timeout=120)
    items = {t["task_id"]: t for t in (await client.get("/v1/tasks", headers=auth)).json()["data"]}
    done = items[ok_id]
    assert done["task_status"] == "SUCCEEDED" and done["end_time"]
    assert done["video_url"].startswith(runtime.settings.base_url + "/files/videos/")
    failed = items[bad_id["output"]["task_id"]]
    assert failed["task_status"] == "FAILED" and "video_url" not in failed
    assert failed["code"] == "BadRequest.InputDownloadFailed" and failed["message"]


async def test_task_list_needs_a_key_and_checks_its_query(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    resp = await client.get("/v1/tasks")
    assert resp.status_code == 401 and resp.json()["code"] == "InvalidApiKey"
    for query, name in (("limit=0", "limit"), ("limit=101", "limit"), ("offset=-1", "offset")):
        resp = await client.get(f"/v1/tasks?{query}", headers=auth)
        assert resp.status_code == 400, query
        body = resp.json()
        assert body["code"] == "InvalidParameter" and body["message"].startswith(name)


# -- the page in headless Chromium -------------------------------------------------------


@pytest.fixture(scope="module", name="served")
def served_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    yield from served(tmp_path_factory.mktemp("web"), "web")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser: Browser, base: str, **context: Any) -> tuple[Page, list[str]]:
    """A fresh page on the playground, and the list its uncaught script errors go to."""
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(base + "/")
    page.wait_for_selector("#model option", state="attached")  # the catalog loaded
    return page, problems


PLAYABLE = (
    "() => { const v = document.getElementById('video');"
    " return !v.hidden && v.readyState >= 3 && v.duration > 0; }"
)


def _save_key(page: Page, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#save-key")
    page.wait_for_function("() => document.getElementById('save-key').textContent === 'Saved'")


def _pick_image(page: Page, tmp_path: Path, width: int, height: int) -> None:
    path = tmp_path / f"frame-{width}x{height}.jpg"
    path.write_bytes(image_bytes(width, height, "JPEG"))
    page.set_input_files("#image-input", str(path))
    page.wait_for_selector("#output-size")


def _set_range(page: Page, selector: str, value: int) -> None:
    page.eval_on_selector(
        selector,
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }",
        str(value),
    )


def test_playground_end_to_end(
    served: tuple[Server, str], browser: Browser, tmp_path: Path
) -> None:
    srv, key = served
    page, problems = _page(browser, srv.base, viewport={"width": 1280, "height": 900})
    _save_key(page, key)
    _pick_image(page, tmp_path, 480, 320)
    page.click("#resolutions label:has-text('720P')")
    w, h = output_size(480, 320, "720P")
    assert page.text_content("#output-size") == f"{w}×{h}"
    page.click("#resolutions label:has-text('1080P')")
    w, h = output_size(480, 320, "1080P")
    assert page.text_content("#output-size") == f"{w}×{h}"
    page.click("#resolutions label:has-text('720P')")
    page.fill("#prompt", "The camera slowly pushes in on the garden")
    _set_range(page, "#duration", 2)
    assert page.text_content("#duration-out") == "2 s"
    page.click("#submit")
    page.wait_for_function(PLAYABLE, timeout=150_000)
    assert abs(page.eval_on_selector("#video", "v => v.duration") - 2.0) < 0.2
    assert page.text_content("#status") == "succeeded"
    assert page.eval_on_selector("#progress-bar", "b => b.style.width") == "100%"
    assert "/files/videos/" in (page.get_attribute("#download", "href") or "")
    page.wait_for_selector("#tasks li.open .pill[data-status='SUCCEEDED']")
    page.screenshot(
        path=str(artifacts() / "playground-desktop.png"), full_page=True, animations="disabled"
    )
    task_id = page.text_content("#task-id")
    page.reload()  # the key stays in localStorage; the task reopens from the list
    page.wait_for_selector("#forget-key", state="visible")
    page.click(f"#tasks li[data-task-id='{task_id}'] button")
    page.wait_for_function(PLAYABLE, timeout=30_000)
    assert page.text_content("#status") == "succeeded"
    assert problems == []


def test_playground_errors_sit_next_to_their_fields(
    served: tuple[Server, str], browser: Browser, tmp_path: Path
) -> None:
    srv, key = served
    page, problems = _page(browser, srv.base, viewport=PHONE, is_mobile=True, has_touch=True)
    page.click("#submit")
    assert "API key" in (page.text_content("[data-error-for='key']") or "")
    _save_key(page, "sm-not-a-key")
    page.wait_for_selector("[data-error-for='key']:has-text('Invalid API-key')")
    _save_key(page, key)
    _pick_image(page, tmp_path, 320, 480)
    page.click("#advanced summary")
    page.fill("#seed", "-1")
    page.click("#submit")
    page.wait_for_selector("[data-error-for='seed']:has-text('parameters.seed')")
    assert page.is_visible("[data-error-for='seed']")
    assert page.text_content("[data-error-for='general']") == ""
    page.fill("#seed", "")
    page.select_option("#model", "wan2.5-i2v-preview")
    assert page.is_hidden("#audio-toggle") and page.is_hidden("#shot-field")
    assert page.eval_on_selector_all("input[name='duration']", "xs => xs.map(x => x.value)") == [
        "5",
        "10",
    ]
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow} px on a phone"
    page.screenshot(
        path=str(artifacts() / "playground-phone.png"), full_page=True, animations="disabled"
    )
    assert problems == []

"""The web playground: its static files and ``GET /v1/tasks`` in-process, then the page end to
end in headless Chromium against a subprocess ``stillmotion serve``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from stillmotion.catalog import MODELS
from stillmotion.config import Settings
from stillmotion.media.geometry import output_size
from stillmotion.money import PriceList, cost_micros, format_micros, to_micros
from stillmotion.runtime import Runtime
from stillmotion.tasks.keys import create_key
from stillmotion.tasks.store import TaskStore
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
VIP = "0.5"  # the billed server's price group factor


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


async def _billing_keys(data_dir: Path) -> dict[str, str]:
    """Keys of two accounts: ``rich`` (100 CNY, price group vip) and ``poor`` (1 CNY, and
    ``max_concurrent=0``: its tasks stay PENDING, so their quote and hold stay visible)."""
    store = await TaskStore.open(Settings(data_dir=data_dir).db_url)
    try:
        await store.upgrade()
        rich = await store.accounts.create("rich", to_micros("100"), price_group="vip")
        poor = await store.accounts.create("poor", to_micros("1.00"))
        assert await store.accounts.set(poor, max_concurrent=0)
        return {
            "rich": (await create_key(store, "rich", account_id=rich)).key,
            "poor": (await create_key(store, "poor", account_id=poor)).key,
        }
    finally:
        await store.close()


@pytest.fixture(scope="module")
def billed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    """A server with billing on and a price group ``vip``, and the keys of its accounts."""
    data_dir = tmp_path_factory.mktemp("billed") / "data"
    data_dir.mkdir()
    srv = Server(data_dir)
    srv.env.update(STILLMOTION_BILLING="on", STILLMOTION_PRICE_GROUPS=f"vip={VIP}")
    # in a thread of its own: Playwright's sync API keeps an event loop running on this one
    with ThreadPoolExecutor(1) as pool:
        keys = pool.submit(asyncio.run, _billing_keys(data_dir)).result()
    srv.start()
    try:
        yield srv, keys
    finally:
        if srv.proc is not None:
            srv.kill()


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


def _quote(model: str, res: str, audio: bool, seconds: int, group: str | None = None) -> str:
    """What the service quotes, from the catalog's prices (the billed server's vip group)."""
    prices = PriceList(groups={"vip": Decimal(VIP)})
    per = prices.price(MODELS[model], res, audio, group)
    return format_micros(cost_micros(per, seconds * 1000))


def _per_second(model: str, res: str, audio: bool, group: str | None = None) -> str:
    prices = PriceList(groups={"vip": Decimal(VIP)})
    return format_micros(prices.price(MODELS[model], res, audio, group))


def _wait_text(page: Page, selector: str, text: str, timeout: float = 30_000) -> None:
    """Wait until ``selector``'s text is exactly ``text`` (a clear failure if it never is)."""
    try:
        page.wait_for_function(
            "([s, t]) => { const el = document.querySelector(s);"
            " return el !== null && el.textContent === t; }",
            arg=[selector, text],
            timeout=timeout,
        )
    except Exception:
        got = (
            page.eval_on_selector(selector, "el => el.textContent")
            if page.query_selector(selector)
            else None
        )
        raise AssertionError(f"{selector}: {got!r}, expected {text!r}") from None


def _api(srv: Server, key: str, path: str) -> Any:
    resp = httpx.get(srv.base + path, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


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
    # billing is off: the finished task still shows what it cost (nothing was charged)
    item = _api(srv, key, "/v1/tasks")["data"][0]
    assert item["cost"] is not None
    _wait_text(page, "#tasks li.open .cost", f"cost {format_micros(to_micros(item['cost']))} CNY")
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


# -- money: balance, price preview, cost, Arrearage ---------------------------------------


def test_price_preview_follows_the_form(served: tuple[Server, str], browser: Browser) -> None:
    srv, key = served
    page, problems = _page(browser, srv.base, viewport={"width": 1280, "height": 900})
    flash = "wan2.6-i2v-flash"
    # no key yet: the list price of the defaults (1080P, 5 s, with audio)
    _wait_text(page, "#price-total", f"{_quote(flash, '1080P', True, 5)} CNY")
    assert page.text_content("#price") == (
        f"This video: 5 s × {_per_second(flash, '1080P', True)} = "
        f"{_quote(flash, '1080P', True, 5)} CNY"
    )
    _save_key(page, key)  # billing off: the balance line says so, the price is not charged
    page.wait_for_selector("#account[data-billing='off']")
    assert page.text_content("#balance") == "0.00 CNY"
    assert "billing off" in (page.text_content("#account") or "")
    page.wait_for_selector("#price:has-text('not charged: billing off')")
    seen = set()
    steps = [
        (lambda: page.click("#resolutions label:has-text('720P')"), flash, "720P", True, 5),
        (lambda: _set_range(page, "#duration", 7), flash, "720P", True, 7),
        (lambda: page.click("#audio-toggle"), flash, "720P", False, 7),
        (lambda: page.click("#resolutions label:has-text('1080P')"), flash, "1080P", False, 7),
        (lambda: page.select_option("#model", "wan2.6-i2v"), "wan2.6-i2v", "1080P", True, 5),
        (lambda: page.select_option("#model", "wan2.5-i2v-preview"),
         "wan2.5-i2v-preview", "1080P", True, 5),
        (lambda: page.click("#duration-control label:has-text('10 s')"),
         "wan2.5-i2v-preview", "1080P", True, 10),
        (lambda: page.click("#resolutions label:has-text('480P')"),
         "wan2.5-i2v-preview", "480P", True, 10),
    ]  # fmt: skip
    for act, model, res, audio, seconds in steps:
        act()
        want = f"{_quote(model, res, audio, seconds)} CNY"
        _wait_text(page, "#price-total", want)
        text = page.text_content("#price") or ""
        assert text.startswith(
            f"This video: {seconds} s × {_per_second(model, res, audio)} = {want}"
        ), text
        seen.add(want)
    assert len(seen) >= 6, seen  # the amounts really changed with the form
    assert problems == []


def test_balance_effective_price_and_cost(
    billed: tuple[Server, dict[str, str]], browser: Browser, tmp_path: Path
) -> None:
    srv, keys = billed
    key, flash = keys["rich"], "wan2.6-i2v-flash"
    page, problems = _page(browser, srv.base, viewport={"width": 1280, "height": 900})
    _save_key(page, key)
    _wait_text(page, "#account", "Available: 100.00 CNY")
    assert page.text_content("#balance") == "100.00 CNY"
    # the catalog is fetched again with the key: the vip account's price, not the list price
    _wait_text(page, "#price-total", f"{_quote(flash, '1080P', True, 5, 'vip')} CNY")
    assert _quote(flash, "1080P", True, 5, "vip") != _quote(flash, "1080P", True, 5)
    _pick_image(page, tmp_path, 480, 320)
    page.click("#resolutions label:has-text('720P')")
    _set_range(page, "#duration", 2)
    quote = _quote(flash, "720P", True, 2, "vip")
    assert page.text_content("#price") == (
        f"This video: 2 s × {_per_second(flash, '720P', True, 'vip')} = {quote} CNY"
    )
    page.click("#submit")
    page.wait_for_function(PLAYABLE, timeout=150_000)
    task_id = page.text_content("#task-id")
    item = next(t for t in _api(srv, key, "/v1/tasks")["data"] if t["task_id"] == task_id)
    assert item["task_status"] == "SUCCEEDED" and item["quote"] is not None
    assert to_micros(item["quote"]) == to_micros(quote)
    cost = to_micros(item["cost"])
    price = to_micros(_per_second(flash, "720P", True, "vip"))
    billed_ms = int(Decimal(str(item["billed_seconds"])) * 1000)
    assert cost == cost_micros(price, billed_ms) and cost > 0
    _wait_text(
        page, f"#tasks li[data-task-id='{task_id}'] .cost", f"cost {format_micros(cost)} CNY"
    )
    # the hold became the charge: the balance went down by the cost, nothing is held
    account = _api(srv, key, "/v1/account")
    assert to_micros(account["available"]) == to_micros("100") - cost
    _wait_text(page, "#account", f"Available: {format_micros(to_micros('100') - cost)} CNY")
    assert problems == []


def test_arrearage_sits_next_to_the_submit_button(
    billed: tuple[Server, dict[str, str]], browser: Browser, tmp_path: Path
) -> None:
    srv, keys = billed
    key, flash = keys["poor"], "wan2.6-i2v-flash"
    page, problems = _page(browser, srv.base, viewport=PHONE, is_mobile=True, has_touch=True)
    _save_key(page, key)
    _wait_text(page, "#account", "Available: 1.00 CNY")
    _pick_image(page, tmp_path, 320, 480)
    big = _quote(flash, "1080P", True, 5)  # the defaults: more than the balance
    assert to_micros(big) > to_micros("1.00")
    _wait_text(page, "#price-total", f"{big} CNY")
    page.wait_for_selector("#price.short:has-text('more than the 1.00 CNY available')")
    page.click("#submit")
    page.wait_for_selector("#submit-error[data-code='Arrearage']")
    message = page.text_content("#submit-error") or ""
    assert "Insufficient balance" in message and big in message, message
    assert page.is_visible("#submit-error")
    assert page.text_content("[data-error-for='general']") == ""
    # next to the button: the same box, right above it
    assert page.evaluate(
        "document.getElementById('submit-error').parentElement"
        " === document.getElementById('submit').parentElement"
    )
    err_box, button = (
        page.locator("#submit-error").bounding_box(),
        page.locator("#submit").bounding_box(),
    )
    assert err_box and button and 0 <= button["y"] - (err_box["y"] + err_box["height"]) <= 24
    # refused: no task was made, nothing was held
    assert _api(srv, key, "/v1/tasks") == {"data": [], "total": 0}
    assert page.locator("#tasks li").count() == 0 and page.text_content("#task-id") == ""
    assert to_micros(_api(srv, key, "/v1/account")["held"]) == 0
    # a task the balance covers: accepted, the error goes, the quote is held
    page.click("#resolutions label:has-text('720P')")
    _set_range(page, "#duration", 2)
    small = _quote(flash, "720P", True, 2)
    _wait_text(page, "#price-total", f"{small} CNY")
    assert page.eval_on_selector("#price", "p => p.classList.contains('short')") is False
    page.click("#submit")
    page.wait_for_function("() => document.getElementById('task-id').textContent !== ''")
    task_id = page.text_content("#task-id")
    assert page.text_content("#submit-error") == ""
    left = format_micros(to_micros("1.00") - to_micros(small))
    _wait_text(page, "#account", f"Available: {left} CNY (held {small})")
    # the account may run nothing (max_concurrent 0): the task waits, showing its quote
    _wait_text(page, f"#tasks li[data-task-id='{task_id}'] .cost", f"quote {small} CNY")
    assert page.get_attribute(f"#tasks li[data-task-id='{task_id}'] .pill", "data-status") == (
        "PENDING"
    )
    assert problems == []

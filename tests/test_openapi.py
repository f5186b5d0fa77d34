"""The OpenAPI document is complete and valid, and ``/docs`` and ``/redoc`` work offline:
in-process through the ASGI app, then Swagger UI and ReDoc in headless Chromium against a
subprocess ``stillmotion serve`` that may load nothing from another origin."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate
from playwright.sync_api import Browser, Route, sync_playwright

from stillmotion.api.app import create_app
from stillmotion.config import Settings
from tests.servers import Server, served
from tests.test_playground import CHROMIUM, CHROMIUM_ARGS

METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return create_app(Settings()).openapi()


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield method, path, op


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def schema_of(doc: dict[str, Any], op: dict[str, Any], status: int) -> dict[str, Any]:
    """The JSON schema of ``op``'s ``status`` answer, standalone (components inlined by ref)."""
    content = op["responses"][str(status)]["content"]["application/json"]
    return {**content["schema"], "components": doc["components"]}


# -- the document ------------------------------------------------------------------------


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    found = list(refs(doc))
    assert "#/components/schemas/SubmitBody" in found
    for ref in found:
        resolve(doc, ref)
    # and the body's own references reach the input and parameters models
    body = resolve(doc, "#/components/schemas/SubmitBody")
    assert {resolve(doc, r)["title"] for r in refs(body)} == {"SubmitInput", "SubmitParameters"}


def test_document_passes_the_openapi_validator(doc: dict[str, Any]) -> None:
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema


def test_no_422_is_documented(doc: dict[str, Any]) -> None:
    for method, path, op in operations(doc):
        assert "422" not in op["responses"], (method, path)
        assert "400" in op["responses"] or path in (
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/models",
        ), (method, path)
        assert "500" in op["responses"], (method, path)
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_bearer_scheme_is_declared(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert schemes == {"bearerAuth": {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}}
    secured = {(m, p) for m, p, op in operations(doc) if op.get("security")}
    assert ("post", "/task/bailian/image2video") in secured
    assert ("get", "/healthz") not in secured
    for method, path, op in operations(doc):
        assert ("401" in op["responses"]) == ((method, path) in secured), (method, path)


def test_native_submit_documents_the_async_header(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/api/v1/services/aigc/video-generation/video-synthesis"]["post"]
    (header,) = [p for p in op["parameters"] if p["in"] == "header"]
    assert header["name"].lower() == "x-dashscope-async"
    assert header["required"] is True and header["schema"]["enum"] == ["enable"]


# -- the document against the app -------------------------------------------------------


def _request_args(op: dict[str, Any], path: str) -> tuple[str, dict[str, str]]:
    url = path.replace("{task_id}", "00000000-0000-0000-0000-000000000000")
    url = url.replace("{key}", "videos/x.mp4")
    headers = {
        p["name"]: p["schema"]["enum"][0]
        for p in op.get("parameters", [])
        if p["in"] == "header" and p.get("required")
    }
    return url, headers


async def test_security_matches_what_the_routes_ask(
    client: httpx.AsyncClient, doc: dict[str, Any], auth: dict[str, str]
) -> None:
    """An operation documented as secured answers 401 without a key, and only those do."""
    for method, path, op in operations(doc):
        url, headers = _request_args(op, path)
        resp = await client.request(method, url, headers=headers)
        assert (resp.status_code == 401) == bool(op.get("security")), (method, path, resp.text)
        assert str(resp.status_code) in op["responses"], (method, path, resp.status_code)
        if resp.status_code == 401:
            jsonschema.validate(resp.json(), schema_of(doc, op, 401))
            resp = await client.request(method, url, headers={**headers, **auth})
            assert resp.status_code != 401, (method, path)
            assert str(resp.status_code) in op["responses"], (method, path, resp.status_code)


@pytest.mark.parametrize(
    "path", ["/task/bailian/image2video", "/api/v1/services/aigc/video-generation/video-synthesis"]
)
async def test_the_seed_example_is_accepted(
    client: httpx.AsyncClient, doc: dict[str, Any], auth: dict[str, str], path: str
) -> None:
    op = doc["paths"][path]["post"]
    content = op["requestBody"]["content"]["application/json"]
    body = content["examples"]["seed"]["value"]
    assert body["model"] == "wan2.6-i2v-flash"
    assert body["parameters"] == {
        "resolution": "720P",
        "duration": 5,
        "prompt_extend": True,
        "audio": True,
    }
    jsonschema.validate(body, {**content["schema"], "components": doc["components"]})
    _, headers = _request_args(op, path)
    resp = await client.post(path, json=body, headers={**headers, **auth})
    assert resp.status_code == 200, resp.text
    jsonschema.validate(resp.json(), schema_of(doc, op, 200))
    task = (await client.get(f"/task/{resp.json()['output']['task_id']}", headers=auth)).json()
    assert task["output"]["task_status"] == "PENDING"


async def test_error_answers_match_their_documented_schema(
    client: httpx.AsyncClient, doc: dict[str, Any], auth: dict[str, str], settings: Settings
) -> None:
    submit = "/task/bailian/image2video"
    native = "/api/v1/services/aigc/video-generation/video-synthesis"
    too_big = b"x" * (settings.max_body_bytes + 1)
    cases = [
        ("post", submit, {"content": b"{"}, 400),
        ("post", submit, {"content": too_big}, 413),
        ("post", native, {"json": {"model": "wan2.6-i2v"}}, 403),
        ("get", "/v1/tasks", {"params": {"limit": "0"}}, 400),
        ("get", "/api/v1/tasks", {"params": {"page_size": "1000"}}, 400),
        ("get", "/files/videos/x.mp4", {"params": {"Expires": "1", "Signature": "0"}}, 403),
        # a non-ASCII signature was a 500 (hmac.compare_digest raises on it); found by fuzzing
        ("get", "/files/videos/x.mp4", {"params": {"Expires": "9" * 14, "Signature": "¢"}}, 403),
    ]
    for method, path, kwargs, status in cases:
        op = doc["paths"][path.replace("videos/x.mp4", "{key}")][method]
        resp = await client.request(method, path, headers=auth, **kwargs)
        assert resp.status_code == status, (path, resp.text)
        jsonschema.validate(resp.json(), schema_of(doc, op, status))


# -- the docs pages, offline --------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.mark.parametrize(
    ("page", "assets"),
    [("/docs", {"swagger-ui-bundle.js", "swagger-ui.css"}), ("/redoc", {"redoc.standalone.js"})],
)
async def test_docs_pages_load_only_their_own_files(
    client: httpx.AsyncClient, page: str, assets: set[str]
) -> None:
    resp = await client.get(page)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert "//" not in resp.text, "an absolute or protocol-relative URL"
    assert "default-src 'self'" in resp.headers["content-security-policy"]
    parser = _Links()
    parser.feed(resp.text)
    base = str(client.base_url) + page
    urls = [urljoin(base, u) for u in parser.urls]
    assert {Path(urlsplit(u).path).name for u in urls} >= assets
    assert "/openapi.json" in resp.text
    for url in urls:
        assert urlsplit(url).netloc == urlsplit(base).netloc, url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        kind = asset.headers["content-type"]
        if url.endswith(".js"):
            assert "javascript" in kind and len(asset.content) > 100_000, url
        elif url.endswith(".css"):
            assert kind.startswith("text/css") and len(asset.content) > 10_000, url


# -- in a browser, against `stillmotion serve`, with every other origin blocked -------------


@pytest.fixture(scope="module", name="served")
def served_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    yield from served(tmp_path_factory.mktemp("docs"), "docs", workers=0)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _offline_page(browser: Browser, base: str, path: str) -> tuple[Any, list[str], list[str]]:
    """A page that may reach ``base`` only; the other URLs it tried, and its script errors."""
    page = browser.new_context().new_page()
    page.set_default_timeout(30_000)
    blocked: list[str] = []
    problems: list[str] = []

    def gate(route: Route) -> None:
        if route.request.url.startswith(base + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", gate)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(base + path)
    return page, blocked, problems


def test_swagger_ui_renders_every_operation_offline(
    served: tuple[Server, str], browser: Browser, doc: dict[str, Any]
) -> None:
    srv, _ = served
    page, blocked, problems = _offline_page(browser, srv.base, "/docs")
    count = len(list(operations(doc)))
    page.wait_for_function(f"() => document.querySelectorAll('.opblock').length === {count}")
    paths = page.eval_on_selector_all(
        ".opblock-summary-path", "els => els.map(e => e.dataset.path)"
    )
    assert set(paths) == set(doc["paths"])
    assert page.locator("button.authorize").count() == 1  # the bearer scheme's Authorize button
    assert page.locator(".opblock .authorization__btn").count() == sum(
        1 for *_, op in operations(doc) if op.get("security")
    )
    assert blocked == [] and problems == []
    page.context.close()


def test_swagger_ui_submits_the_seed_example_with_a_key(
    served: tuple[Server, str], browser: Browser
) -> None:
    """Authorize with a key, then "Try it out" / "Execute" on the submit: the example as it is
    creates a task, through the page's own fetch (the CSP allows its origin)."""
    srv, key = served
    page, blocked, problems = _offline_page(browser, srv.base, "/docs")
    page.click("button.authorize")
    page.fill(".auth-container input", key)
    page.click(".auth-btn-wrapper button.authorize")
    page.click(".auth-btn-wrapper button.btn-done")
    op = page.locator("#operations-bailian-submit_task_bailian_image2video_post")
    op.locator(".opblock-summary").click()
    op.locator("button.try-out__btn").click()
    op.locator("button.execute").click()
    status = op.locator(".live-responses-table tr.response .response-col_status").first
    status.wait_for()
    assert status.inner_text().strip() == "200"
    answer = op.locator(".live-responses-table .highlight-code").first.inner_text()
    assert '"task_status": "PENDING"' in answer
    assert blocked == [] and problems == []
    page.context.close()


def test_redoc_renders_every_operation_offline(
    served: tuple[Server, str], browser: Browser, doc: dict[str, Any]
) -> None:
    srv, _ = served
    page, blocked, problems = _offline_page(browser, srv.base, "/redoc")
    count = len(list(operations(doc)))
    page.wait_for_function(
        "n => document.querySelectorAll(\"[data-section-id^='operation/']\").length === n",
        arg=count,
    )
    ids = page.eval_on_selector_all(
        "[data-section-id^='operation/']", "els => els.map(e => e.dataset.sectionId)"
    )
    assert {i.removeprefix("operation/") for i in ids} == {
        op["operationId"] for *_, op in operations(doc)
    }
    assert "stillmotion" in page.locator("h1").first.inner_text()
    assert blocked == [] and problems == []
    page.context.close()

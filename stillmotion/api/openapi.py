"""The OpenAPI document (``/openapi.json``) and the offline ``/docs`` and ``/redoc`` pages.

FastAPI builds the paths from the routes; this module adds what it cannot see: the submit
body (read raw by the handlers, so it is declared in the decorators' ``openapi_extra``), the
bearer security scheme, the seed request as the submit example, and the error answers. The
validation 422 FastAPI documents is dropped: this server answers 400 ``InvalidParameter``.

Swagger UI and ReDoc are served from the files the ``fastapi-offline`` package ships, under
``/docs/static``: the pages load nothing from another origin.
"""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from stillmotion.api.schemas import ErrorResponse, SubmitBody

BEARER = "bearerAuth"
#: ``openapi_extra`` of a route that needs ``Authorization: Bearer <key>``
SECURED: dict[str, Any] = {"security": [{BEARER: []}]}
STATIC_URL = "/docs/static"
STATIC_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
NATIVE_SUBMIT = "/api/v1/services/aigc/video-generation/video-synthesis"
#: the docs pages reach their own origin only (ReDoc's bundle would load its logo from a CDN)
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
ASYNC_HEADER = "x-dashscope-async"

#: the document's tags, in the order the docs pages show them
TAGS: list[dict[str, Any]] = [
    {"name": "bailian", "description": "The reseller-shaped task API: submit, query, cancel."},
    {"name": "dashscope", "description": "The same service under DashScope's own paths."},
    {
        "name": "videos",
        "description": "The OpenAI-style videos API (`client.videos` of the `openai` SDK): the "
        "same tasks; errors in OpenAI's shape.",
    },
    {"name": "account", "description": "The caller's account: balance, limits and usage."},
    {"name": "web", "description": "The web playground's task list."},
    {"name": "files", "description": "Signed downloads of results."},
    {"name": "system", "description": "Health and the model catalog with its prices."},
    {
        "name": "admin",
        "description": "The operator's API (an admin key only: `stillmotion keys create "
        "--admin`, or a key made here with `admin: true`): accounts, top-ups and adjustments, "
        "limits, keys, the ledger, and usage of any account. An ordinary key is 403 "
        "`AccessDenied`.",
    },
]

ERRORS = {
    400: "`InvalidParameter` (or a more precise 400 code): a body, path or query value breaks "
    "the rules; the message names the field.",
    401: "`InvalidApiKey`: no `Authorization: Bearer <key>`, or an unknown or revoked key.",
    403: "`AccessDenied`.",
    404: "`NotFound`: no such route (for example an id containing `/`).",
    410: "`ResultExpired`: the result was deleted after `STILLMOTION_RESULT_TTL_HOURS`.",
    413: "`BadRequest.TooLarge`: the body is over `STILLMOTION_MAX_BODY_BYTES`, or a data: URI "
    "image (audio) over 20 MB (15 MB).",
    415: "`BadRequest.UnsupportedFileFormat`: a data: URI is not a supported image or audio file.",
    500: "`InternalError`: an unexpected error (details only in the server log).",
    503: "The service or the database is not available.",
}


def error_responses(
    *statuses: int, notes: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route decorator: each status with the error body's schema, and
    its description from ``notes`` or :data:`ERRORS`."""
    notes = notes or {}
    return {
        status: {"model": ErrorResponse, "description": notes.get(status, ERRORS[status])}
        for status in statuses
    }


@functools.cache
def example_image_uri() -> str:
    """A small, valid first frame (480x320 JPEG) as a data: URI, for the submit example."""
    buf = io.BytesIO()
    Image.new("RGB", (480, 320), (70, 110, 160)).save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def seed_request() -> dict[str, Any]:
    """The seed request of the README's Quickstart, with a real (small) image."""
    return {
        "model": "wan2.6-i2v-flash",
        "input": {
            "prompt": "A quiet harbour at dawn, the camera slowly pushes in",
            "img_url": example_image_uri(),
        },
        "parameters": {"resolution": "720P", "duration": 5, "prompt_extend": True, "audio": True},
    }


def submit_extra() -> dict[str, Any]:
    """``openapi_extra`` of both submit routes: the JSON body, its example, the key."""
    example = {"summary": "The seed request (README Quickstart)", "value": seed_request()}
    body = {
        "schema": {"$ref": "#/components/schemas/SubmitBody"},
        "examples": {"seed": example},
    }
    return {"requestBody": {"content": {"application/json": body}, "required": True}, **SECURED}


def submit_schemas() -> dict[str, Any]:
    """``SubmitBody`` and the models it refers to, for ``components.schemas``."""
    schema = SubmitBody.model_json_schema(ref_template="#/components/schemas/{model}")
    defs: dict[str, Any] = schema.pop("$defs", {})
    return {**defs, "SubmitBody": schema}


def build_document(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(submit_schemas())
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from `stillmotion keys create --name NAME`.",
        }
    }
    _drop_422(doc)
    _require_async_header(doc)
    return doc


def _drop_422(doc: dict[str, Any]) -> None:
    """Request validation errors are 400 ``InvalidParameter`` here, never 422."""
    for operations in doc["paths"].values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = doc["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _require_async_header(doc: dict[str, Any]) -> None:
    """The native submit answers 403 without ``X-DashScope-Async: enable``: say so."""
    for param in doc["paths"][NATIVE_SUBMIT]["post"].get("parameters", []):
        if param["in"] == "header" and param["name"].lower() == ASYNC_HEADER:
            param["required"] = True
            param["schema"] = {"type": "string", "enum": ["enable"]}
            param["example"] = "enable"


def install(app: FastAPI) -> None:
    """Serve the document (built once) and the offline Swagger UI and ReDoc pages."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return swagger_page(app, request.scope.get("root_path", ""))

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return redoc_page(app, request.scope.get("root_path", ""))


def swagger_page(app: FastAPI, root: str) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
        # no validator badge: its default sends the document to validator.swagger.io
        swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
    )
    return _confined(page)


def redoc_page(app: FastAPI, root: str) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
        with_google_fonts=False,
    )
    return _confined(page)


def _confined(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page

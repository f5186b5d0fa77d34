"""The one error-to-HTTP mapping: every error answer is ``{request_id, code, message}``, except
on the OpenAI-style routes (``/v1/videos``), whose answers take OpenAI's error shape
``{"error": {message, type, param, code}}`` with the same DashScope ``code`` (and the request
id in the ``x-request-id`` header, where the ``openai`` SDK reads it)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stillmotion.api.responses import JSONResponse
from stillmotion.errors import ServiceError, TooLarge
from stillmotion.ids import uuid4_text

log = logging.getLogger("stillmotion.api")

_HTTP_CODES = {
    400: "InvalidParameter",
    401: "InvalidApiKey",
    403: "AccessDenied",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "BadRequest.TooLarge",
    415: "BadRequest.UnsupportedFileFormat",
}


#: the path prefix of the routes whose errors take OpenAI's shape (``routes_videos.py``)
OPENAI_PREFIX = "/v1/videos"
#: OpenAI's error ``type`` by HTTP status; other 4xx are ``invalid_request_error``
_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def openai_shaped(scope: Scope) -> bool:
    """Whether the request's errors answer in OpenAI's shape (its path is under ``/v1/videos``)."""
    path = str(scope.get("path", ""))
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def openai_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return _OPENAI_TYPES.get(status, "invalid_request_error")


def openai_error_body(code: str, message: str, status: int, param: str | None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": openai_type(status), "param": param, "code": code}
    }


def _state(request: Request) -> dict[str, Any]:
    """The request's state dict (what ``request.state`` wraps), read without the wrapper: the
    hot routes touch it on every request."""
    state: dict[str, Any] = request.scope.setdefault("state", {})
    return state


def request_id(request: Request) -> str:
    state = _state(request)
    rid = state.get("request_id")
    if rid is None:
        rid = state["request_id"] = uuid4_text()
    return str(rid)


def error_body(rid: str, code: str, message: str) -> dict[str, Any]:
    return {"request_id": rid, "code": code, "message": message}


def error_response(
    rid: str,
    code: str,
    message: str,
    status: int,
    headers: dict[str, str] | None = None,
    *,
    openai: bool = False,
    param: str | None = None,
) -> JSONResponse:
    """The error answer; ``openai``: in OpenAI's shape (``param``: the request field at fault)."""
    if openai:
        headers = {**(headers or {}), "x-request-id": rid}
        body = openai_error_body(code, message, status, param)
        return JSONResponse(body, status_code=status, headers=headers)
    return JSONResponse(error_body(rid, code, message), status_code=status, headers=headers)


def _answer(
    request: Request,
    code: str,
    message: str,
    status: int,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> JSONResponse:
    shaped = openai_shaped(request.scope)
    rid = request_id(request)
    return error_response(rid, code, message, status, headers, openai=shaped, param=param)


async def no_retry_on_error(request: Request) -> None:
    """Route dependency for submit routes: their 5xx answers carry ``x-should-retry: false``
    (contract 4.4), so a client that retries server errors (the 2.x SDK) does not resend a
    request that may already have created a task."""
    _state(request)["no_retry"] = True


def _retry_headers(
    request: Request, status: int, headers: dict[str, str] | None
) -> dict[str, str] | None:
    if status < 500 or not _state(request).get("no_retry", False):
        return headers
    return {**(headers or {}), "x-should-retry": "false"}


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers = _retry_headers(request, exc.status, getattr(exc, "headers", None))
    # ``param``: set by the OpenAI-style routes on the errors they can name a field for
    param = getattr(exc, "param", None)
    return _answer(request, exc.code, exc.message, exc.status, headers, param)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(
        exc.status_code, "InternalError" if exc.status_code >= 500 else "BadRequest"
    )
    message = str(exc.detail) if exc.detail else code
    headers = _retry_headers(request, exc.status_code, None)
    return _answer(request, code, message, exc.status_code, headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts, params = [], []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        params.append(loc)
    param = params[0] if params and params[0] else None
    return _answer(request, "InvalidParameter", "; ".join(parts), 400, param=param)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up before its request body arrived: nothing was created and no one
    is listening, so there is nothing to log as an error or to answer."""
    log.debug("client disconnected during request %s", request_id(request))
    return Response(status_code=400)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in request %s", request_id(request))
    headers = _retry_headers(request, 500, None)
    return _answer(request, "InternalError", "An internal error occurred.", 500, headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)


class BodyLimitMiddleware:
    """Answers 413 ``BadRequest.TooLarge`` for bodies over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise TooLarge(self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"Request body is larger than {self.max_bytes // 2**20} MB."

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            str(uuid.uuid4()),
            TooLarge.code,
            self._message(),
            413,
            {"Connection": "close"},
            openai=openai_shaped(scope),
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None

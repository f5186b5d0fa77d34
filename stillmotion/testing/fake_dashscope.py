"""A fake DashScope upstream (the Wan video-synthesis task API) over real HTTP.

    with FakeDashScopeServer() as fake:          # 127.0.0.1, a free port, its own thread
        base = fake.base_url                     # "http://127.0.0.1:PORT/api/v1"
        fake.state.add_fault(Fault("submit", status=429, retry_after=1))
        len(fake.state.submits)                  # every submit that reached it

or ``stillmotion fake-dashscope --port 8001``. Behaviour, prompt directives and the
``/_control`` endpoint are documented in docs/fake-dashscope.md.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from stillmotion.testing.fake_dashscope_state import (
    SUBMIT_ID_HEADER,
    FakeConfig,
    FakeState,
    Fault,
    prompt_directives,
)
from stillmotion.testing.fake_dashscope_views import (
    Views,
    check_body,
    error,
    list_page,
    result_file,
)
from stillmotion.testing.loopback import DropResponse, LoopbackServer, serve_foreground

__all__ = ["FakeConfig", "FakeDashScopeServer", "FakeState", "Fault", "create_fake_app"]

SUBMIT_PATH = "/api/v1/services/aigc/video-generation/video-synthesis"
#: the first-and-last-frame (kf2v) models' own submit path (contract 2.1)
KF2V_PATH = "/api/v1/services/aigc/image2video/video-synthesis"
CANCEL_REFUSED = "Failed to cancel the task, please confirm if the task is in PENDING status."
SYNC_REFUSED = "current user api does not support synchronous calls"


def _fault_response(fault: Fault) -> JSONResponse:
    status = fault.status or 500
    default = "Throttling.RateQuota" if status == 429 else "InternalError"
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = f"{fault.retry_after:g}"
    message = fault.message or f"scripted HTTP {status}"
    return error(status, fault.code or default, message, **headers)


class _Api:
    """The fake's route handlers over one :class:`FakeState`."""

    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.views = Views(state)

    async def gate(self, request: Request, op: str) -> Response | None:
        """Count, authenticate and apply a scripted fault; a response ends the request."""
        answer = await self._gate(request, op)
        with self.state.lock:
            self.state.requests[op] += 1
            status = answer.status_code if answer is not None else 200
            self.state.log.append((self.state.clock(), op, status))
        return answer

    async def _gate(self, request: Request, op: str) -> Response | None:
        state = self.state
        key, key_state = state.key_state(request.headers.get("authorization"))
        if key_state == "missing":
            return error(401, "InvalidApiKey", "No API-key provided.")
        if key_state == "invalid":
            return error(401, "InvalidApiKey", "Invalid API-key provided.")
        if key_state == "denied":
            return error(403, "AccessDenied", "Access denied.")
        request.state.key = key
        request.state.drop = False
        fault = state.take_fault(op)
        if fault is not None:
            await asyncio.sleep(fault.delay)
            if fault.status is not None:
                return _fault_response(fault)
            request.state.drop = fault.drop and op == "submit"
        return None

    async def submit(self, request: Request) -> Any:
        return await self._submit(request, SUBMIT_PATH)

    async def submit_kf2v(self, request: Request) -> Any:
        return await self._submit(request, KF2V_PATH)

    async def _submit(self, request: Request, path: str) -> Any:
        if (answer := await self.gate(request, "submit")) is not None:
            return answer
        if request.headers.get("x-dashscope-async", "").lower() != "enable":
            return error(403, "AccessDenied", SYNC_REFUSED)
        try:
            body = await request.json()
        except ValueError:
            return error(400, "InvalidParameter", "The request body is not valid JSON.")
        if refusal := _check_submit(body, kf2v_path=path == KF2V_PATH):
            return refusal
        directives = prompt_directives(body)
        if directives.get("error"):
            status = int(directives["error"] or 500)
            return error(status, "InternalError", f"scripted HTTP {status}")
        submit_id = request.headers.get(SUBMIT_ID_HEADER)
        task = self.state.submit(request.state.key, body, submit_id, path=path)
        await asyncio.sleep(float(directives.get("slow") or 0))
        if "drop" in directives or request.state.drop:
            return DropResponse(b'{"request_id": "')
        output = {"task_id": task.task_id, "task_status": "PENDING"}
        return {"request_id": task.request_id, "output": output}

    async def get_task(self, task_id: str, request: Request) -> Any:
        if (answer := await self.gate(request, "get")) is not None:
            return answer
        task = self.state.get(task_id)
        if task is None:
            output = {"task_id": task_id, "task_status": "UNKNOWN"}
            return {"request_id": str(uuid.uuid4()), "output": output}
        return self.views.task(task, str(request.base_url).rstrip("/"))

    async def cancel(self, task_id: str, request: Request) -> Any:
        if (answer := await self.gate(request, "cancel")) is not None:
            return answer
        if not self.state.cancel(task_id):
            return error(400, "UnsupportedOperation", CANCEL_REFUSED)
        return {"request_id": str(uuid.uuid4())}

    async def list_tasks(self, request: Request) -> Any:
        if (answer := await self.gate(request, "list")) is not None:
            return answer
        return list_page(self.state, self.views, dict(request.query_params))

    async def result(self, task_id: str, request: Request) -> Response:
        with self.state.lock:
            self.state.requests["result"] += 1
        fault = self.state.take_fault("result")
        if fault is not None:
            await asyncio.sleep(fault.delay)
            if fault.status is not None:
                return _fault_response(fault)
        return await result_file(self.state, task_id, request)

    async def control(self, request: Request) -> Any:
        try:
            return self.state.control(await request.json())
        except (TypeError, ValueError) as exc:
            return error(400, "InvalidParameter", str(exc))

    async def stats(self) -> Any:
        return self.state.stats()


def _check_submit(body: Any, *, kf2v_path: bool) -> JSONResponse | None:
    if not isinstance(body, dict) or not body.get("model"):
        return error(400, "BadRequest.EmptyModel", "Required parameter 'model' missing.")
    inp = body.get("input")
    if not isinstance(inp, dict):
        return error(400, "BadRequest.EmptyInput", "Required parameter 'input' missing.")
    refusal = check_body(str(body["model"]), inp, kf2v_path=kf2v_path)
    return error(400, "InvalidParameter", refusal) if refusal else None


def create_fake_app(state: FakeState | None = None) -> FastAPI:
    """The fake's ASGI app; ``app.state.fake`` is its :class:`FakeState`."""
    api = _Api(state or FakeState())
    app = FastAPI(title="fake DashScope", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.fake = api.state
    routes: list[tuple[str, str, Any]] = [
        ("POST", SUBMIT_PATH, api.submit),
        ("POST", KF2V_PATH, api.submit_kf2v),
        ("GET", "/api/v1/tasks/{task_id}", api.get_task),
        ("GET", "/api/v1/tasks/{task_id}/", api.get_task),
        ("POST", "/api/v1/tasks/{task_id}/cancel", api.cancel),
        ("GET", "/api/v1/tasks", api.list_tasks),
        ("GET", "/api/v1/tasks/", api.list_tasks),
        ("GET", "/results/{task_id}.mp4", api.result),
        ("POST", "/_control", api.control),
        ("GET", "/_control", api.stats),
    ]
    for method, path, handler in routes:
        app.add_api_route(path, handler, methods=[method])
    return app


class FakeDashScopeServer(LoopbackServer):
    """The fake on ``host`` (a free port unless given), served by uvicorn in a thread."""

    name = "fake DashScope server"

    def __init__(
        self,
        config: FakeConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.state = FakeState(config)
        super().__init__(create_fake_app(self.state), host=host, port=port)

    @property
    def base_url(self) -> str:
        """What a client uses as its DashScope base (with ``/api/v1``)."""
        return f"{self.root_url}/api/v1"


def serve(
    sock: socket.socket, config: FakeConfig, *, ready: Callable[[int], None] | None = None
) -> None:
    """Run the fake in the foreground on the bound ``sock`` (the ``stillmotion fake-dashscope``
    command); ``ready`` is called with its port once it accepts connections."""
    serve_foreground(create_fake_app(FakeState(config)), sock, ready=ready)

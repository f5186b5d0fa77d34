"""The FastAPI application: routers, the one error mapping, the lifespan."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from stillmotion import __version__
from stillmotion.api import (
    openapi,
    routes_account,
    routes_admin,
    routes_bailian,
    routes_dashscope,
    routes_files,
    routes_ops,
    routes_system,
    routes_videos,
    routes_web,
)
from stillmotion.api.access_log import AccessLogMiddleware
from stillmotion.api.errors import BodyLimitMiddleware, install_error_handlers
from stillmotion.api.responses import JSONResponse
from stillmotion.config import Settings
from stillmotion.runtime import Runtime, open_runtime

DESCRIPTION = """Bailian / DashScope first-frame image-to-video task API.

Submit with `POST /task/bailian/image2video`, poll `GET /task/{task_id}`, download
`output.video_url`. The same service answers the DashScope-native paths under `/api/v1`.
Authenticate with `Authorization: Bearer <key>` (`stillmotion keys create --name NAME`;
in Swagger UI: **Authorize**). Every error is `{request_id, code, message}`, except under
`/v1/videos` (the OpenAI-style videos API), where it is OpenAI's `{"error": {message, type,
param, code}}`.
"""


#: Young-generation threshold while serving (CPython's default is 700): a request makes a few
#: hundred short-lived containers, and collecting less often lets more of them die first
#: instead of being promoted and walked again by the older generations.
GC_YOUNG_THRESHOLD = 10_000


def freeze_startup_objects() -> None:
    """Move everything start-up made (modules, the app, the catalog: ~120k objects) out of
    the garbage collector's sight. Otherwise every full collection walks all of it, a 60 ms
    stall of the event loop that showed up as the API's p99 latency under load."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def begin_draining(app: FastAPI) -> None:
    """The first step of a graceful stop (SIGTERM): ``GET /readyz`` answers 503 from now on
    and the in-process worker stops claiming. Serving goes on; what is in flight finishes,
    then the lifespan's end hands running tasks back. Idempotent."""
    app.state.draining = True
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    if runtime is not None and runtime.worker is not None:
        runtime.worker.drain()


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the app. With ``runtime`` given the caller owns it; otherwise the lifespan opens
    one from ``settings`` (and starts the worker when ``settings.run_worker``)."""
    settings = settings or (runtime.settings if runtime else Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            yield
            return
        rt = await open_runtime(settings)
        app.state.runtime = rt
        if settings.run_worker and settings.workers > 0:
            await rt.start_worker()
        freeze_startup_objects()
        try:
            yield
        finally:
            begin_draining(app)  # already, when `serve` got SIGTERM
            await rt.close()

    app = FastAPI(
        title="stillmotion",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=JSONResponse,
        docs_url=None,  # served by openapi.install(), from packaged files instead of a CDN
        redoc_url=None,
        openapi_tags=openapi.TAGS,
    )
    if runtime is not None:
        app.state.runtime = runtime
    install_error_handlers(app)
    # The hot routes sit on the app itself: FastAPI matches the routes of an included
    # router twice per request (once to pick the router, once inside it).
    app.router.routes.extend(routes_bailian.router.routes)
    app.include_router(routes_dashscope.router)
    app.include_router(routes_files.router)
    app.include_router(routes_system.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_web.router)
    app.include_router(routes_account.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_videos.router)
    openapi.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLogMiddleware)  # outermost of ours: it sees 413s too

    return app

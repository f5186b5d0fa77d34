"""A small Python client for stillmotion and DashScope image-to-video.

    from stillmotion.client import Client

    with Client("http://127.0.0.1:8000", api_key="sm-...") as sm:
        task = sm.submit("wan2.6-i2v-flash", image="cat.jpg", prompt="the camera pushes in")
        done = sm.wait(task.task_id, on_progress=lambda t: print(t.status, t.progress))
        sm.download(done, "cat.mp4")

The same client talks to DashScope itself with a base URL ending in ``/api/v1``. It depends
on httpx and the standard library only, and imports nothing else of stillmotion.
"""

from stillmotion.client._client import AsyncClient, Client
from stillmotion.client._core import DEFAULT_BASE_URL, SubmitOptions
from stillmotion.client._errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    InvalidInputError,
    InvalidParameterError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    StillmotionError,
    TaskFailed,
    UnsupportedOperationError,
    WaitTimeout,
)
from stillmotion.client._task import TERMINAL, Task

__all__ = [
    "DEFAULT_BASE_URL",
    "TERMINAL",
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "InvalidInputError",
    "InvalidParameterError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "StillmotionError",
    "SubmitOptions",
    "Task",
    "TaskFailed",
    "UnsupportedOperationError",
    "WaitTimeout",
]

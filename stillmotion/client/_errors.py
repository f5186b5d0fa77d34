"""The SDK's exceptions: one small hierarchy under :class:`StillmotionError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stillmotion.client._task import Task


class StillmotionError(Exception):
    """Base class of every error the SDK raises."""


class InvalidInputError(StillmotionError, ValueError):
    """A local argument is unusable before anything is sent (unreadable file, unknown format)."""


class APIConnectionError(StillmotionError):
    """The server could not be reached, or the connection broke (DNS, refused, timeout)."""


class APIError(StillmotionError):
    """The server answered with an error body ``{request_id, code, message}``."""

    def __init__(self, code: str, message: str, request_id: str | None, status: int) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.status = status


class AuthenticationError(APIError):
    """401: no key, or the key is unknown or revoked (``InvalidApiKey``)."""


class PermissionDeniedError(APIError):
    """403: ``AccessDenied`` (for example an expired download signature)."""


class NotFoundError(APIError):
    """404: no such route (the base URL is probably wrong)."""


class InvalidParameterError(APIError):
    """400/413/415: the request was refused; ``message`` names the field, e.g.
    ``parameters.duration``, and the allowed values."""

    @property
    def field(self) -> str | None:
        """The field the message names (``parameters.duration``, ``input.img_url``...)."""
        head = self.message.split(":", 1)[0].split(" ", 1)[0]
        if head.startswith(("input.", "parameters.")) or head == "model":
            return head
        return None


class UnsupportedOperationError(APIError):
    """400 ``UnsupportedOperation``: e.g. cancelling a task that is no longer PENDING."""


class RateLimitError(APIError):
    """429 ``Throttling``."""


class ServerError(APIError):
    """5xx: ``InternalError``, ``ModelUnavailable``..."""


class TaskFailed(StillmotionError):
    """A task ended without a video: FAILED (``code`` from the task), CANCELED or UNKNOWN."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.code = task.code or _STATUS_CODES.get(task.status, task.status)
        self.message = task.message or f"task {task.task_id} is {task.status}"
        super().__init__(f"{self.code}: {self.message}")


class WaitTimeout(StillmotionError):
    """``wait`` gave up; the task goes on on the server (``task`` is the last state seen)."""

    def __init__(self, task: Task, timeout: float) -> None:
        self.task = task
        self.timeout = timeout
        super().__init__(f"task {task.task_id} still {task.status} after {timeout:g} s")


_STATUS_CODES = {"CANCELED": "TaskCanceled", "UNKNOWN": "TaskNotFound"}

"""The error hierarchy. Each error carries a DashScope ``code`` and an HTTP ``status``.

This module imports nothing from the package. ``stillmotion.api.errors`` is the one place
that turns these into ``{request_id, code, message}`` responses.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: an error with a stable DashScope code and an HTTP status."""

    code: str = "InternalError"
    status: int = 500
    #: extra response headers (``Retry-After``, ``x-should-retry``)
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class InvalidParameter(ServiceError):
    code = "InvalidParameter"
    status = 400


class EmptyInput(InvalidParameter):
    code = "BadRequest.EmptyInput"


class EmptyModel(InvalidParameter):
    code = "BadRequest.EmptyModel"


class InvalidURL(InvalidParameter):
    code = "InvalidURL"


class UnsupportedOperation(ServiceError):
    code = "UnsupportedOperation"
    status = 400


class InvalidApiKey(ServiceError):
    code = "InvalidApiKey"
    status = 401


class AccessDenied(ServiceError):
    code = "AccessDenied"
    status = 403


class NotFound(ServiceError):
    code = "NotFound"
    status = 404


class ResultExpired(ServiceError):
    """A result deleted by retention (``STILLMOTION_RESULT_TTL_HOURS``)."""

    code = "ResultExpired"
    status = 410


class TooLarge(ServiceError):
    code = "BadRequest.TooLarge"
    status = 413


class InputDownloadFailed(ServiceError):
    """A media URL could not be fetched (also used as a task-level failure code)."""

    code = "BadRequest.InputDownloadFailed"
    status = 415


class UnsupportedFileFormat(ServiceError):
    code = "BadRequest.UnsupportedFileFormat"
    status = 415


class Throttling(ServiceError):
    code = "Throttling"
    status = 429


class RateQuota(Throttling):
    """A submit over the account's or key's submit rate (``Retry-After`` says when)."""

    code = "Throttling.RateQuota"


class AllocationQuota(Throttling):
    """A submit over a PENDING cap or a daily budget."""

    code = "Throttling.AllocationQuota"


class Arrearage(ServiceError):
    """The account's available balance does not cover the task's quote. Not retryable: the
    same request fails the same way until the account is topped up."""

    code = "Arrearage"
    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.headers = {"x-should-retry": "false"}


class InternalError(ServiceError):
    code = "InternalError"
    status = 500


class ModelUnavailable(ServiceError):
    code = "ModelUnavailable"
    status = 503


class LeaseLost(ServiceError):
    """The worker's claim on a task was taken over; its result must be dropped."""

    code = "InternalError.LeaseLost"
    status = 500


class EngineError(ServiceError):
    """Raised by engines. ``retryable`` tells the worker whether another attempt may help."""

    code = "InternalError.Algo"
    status = 500
    retryable = False


class RetryableEngineError(EngineError):
    retryable = True


class PermanentEngineError(EngineError):
    retryable = False


class EngineCanceled(EngineError):
    """The engine stopped because its cancel signal was set."""

    code = "Canceled"


class EngineDeferred(EngineError):
    """The engine cannot start the task now (e.g. an upstream channel is at capacity): put it
    back in the queue for ``delay`` seconds without spending an attempt."""

    code = "Deferred"
    retryable = True

    def __init__(self, message: str, delay: float = 1.0):
        super().__init__(message)
        self.delay = delay

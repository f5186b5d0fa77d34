"""Log context and the JSON log format (``STILLMOTION_LOG_FORMAT=json``).

One JSON object per line: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
``message``, and ``request_id``, ``task_id``, ``key_id`` when the record carries them (as
``extra=``) or the running code set them in the context variables below (the worker sets
``task_id`` for the task it runs). ``exc_info`` becomes ``exception`` (the traceback text).

Nothing here adds a secret: the fields are the record's own message and those three ids. The
code that logs never puts an API key, an ``Authorization`` header or a URL signature in a
message (tests/test_ops.py checks the lines a served request makes).

Imports nothing of stillmotion.
"""

from __future__ import annotations

import contextvars
import logging
import time
from typing import Any

import orjson

CONTEXT_FIELDS = ("request_id", "task_id", "key_id")

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "stillmotion_request_id", default=None
)
TASK_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "stillmotion_task_id", default=None
)
KEY_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "stillmotion_key_id", default=None
)
_VARS = {"request_id": REQUEST_ID, "task_id": TASK_ID, "key_id": KEY_ID}

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON (no newline inside: ``orjson`` escapes them)."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z"
        line: dict[str, Any] = {
            "time": stamp,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None) or _VARS[name].get()
            if value is not None:
                line[name] = str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line).decode()


def make_formatter(log_format: str) -> logging.Formatter:
    """``json``: :class:`JsonFormatter`; anything else: the plain text line."""
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)

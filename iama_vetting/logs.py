"""Structured logging: JSON lines in production, readable text in development.

RequestContextMiddleware (iama_vetting.middleware) fills `request_context`
for the duration of a request; RequestContextFilter copies it onto every
record, so any log line written while serving a request names that request,
and masks the capability tokens of the request's path wherever the line
repeats them (Django's "Forbidden (CSRF …): <path>", "Internal Server Error: <path>").
Fields a caller passes with `extra=` are kept as top-level JSON keys.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# Neither format writes the caller's file and line, thread names or
# multiprocessing's process names: spare every record (one per request at
# least) looking them up. Walking the stack for the caller alone was a third
# of the access line's cost. (The logging HOWTO's "Optimization" section.)
logging._srcfile = None
logging.logThreads = False
logging.logMultiprocessing = False

CONTEXT_FIELDS = ("request_id", "user_id", "client_ip", "method", "path")
request_context: ContextVar[dict[str, Any] | None] = ContextVar("request_context", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
# Django passes the request object itself as `request`: its repr repeats the
# full URL, query string included, so it is left out.
_STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "request",
    *CONTEXT_FIELDS,
}


# Signed status links and reset tokens are far longer; a shorter value (a
# uidb64) is no secret, and replacing it wherever it occurs would garble the line.
_MIN_SECRET_LENGTH = 16
_exception_formatter = logging.Formatter()


def _mask_url_secrets(record: logging.LogRecord, secrets: list[tuple[str, str]]) -> None:
    """Replace the request's capability tokens wherever the record repeats them."""
    secrets = [(name, value) for name, value in secrets if len(value) >= _MIN_SECRET_LENGTH]
    if not secrets:
        return

    def masked(text: str) -> str:
        for name, value in secrets:
            text = text.replace(value, f"<{name}>")
        return text

    try:
        message = record.getMessage()
    except Exception:  # A bad format string is logging's to report, when it formats.
        return
    if (new_message := masked(message)) != message:
        record.msg, record.args = new_message, ()
    if record.exc_info:
        record.exc_text = masked(record.exc_text or _exception_formatter.formatException(record.exc_info))


def escape_control_characters(value: str) -> str:
    """Make a client-supplied value safe for a log line: no newlines or terminal escapes."""
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in value
    )


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = request_context.get() or {}
        for field in CONTEXT_FIELDS:
            if not hasattr(record, field):
                setattr(record, field, context.get(field))
        _mask_url_secrets(record, context.get("url_secrets", []))
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            entry[field] = getattr(record, field, None)
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            # exc_text is the traceback RequestContextFilter has masked, when it had to.
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("{asctime} {levelname} {name} [{request_id}] {message}", style="{")

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        return super().format(record)

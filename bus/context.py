"""Correlation context and structured JSON logs.

The ids of the message being handled live in contextvars so that every log
line and every message enqueued while handling it carries them without being
passed through every function.  ``bus.correlation.CorrelationMiddleware``
sets them for dramatiq actors; anything else (the relay, the CLI, a webhook
handler) can use ``correlation_scope``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

correlation_id: ContextVar[str | None] = ContextVar("coexist_correlation_id", default=None)
causation_id: ContextVar[str | None] = ContextVar("coexist_causation_id", default=None)
#: Id of the message currently being handled; the causation id of what it causes.
message_id: ContextVar[str | None] = ContextVar("coexist_message_id", default=None)


@contextlib.contextmanager
def correlation_scope(
    *, correlation: str | None, message: str | None = None, causation: str | None = None
) -> Iterator[None]:
    """Set the correlation context for the duration of a block, then restore it."""
    tokens = (
        correlation_id.set(correlation),
        message_id.set(message),
        causation_id.set(causation),
    )
    try:
        yield
    finally:
        correlation_id.reset(tokens[0])
        message_id.reset(tokens[1])
        causation_id.reset(tokens[2])


def current_ids() -> dict[str, str | None]:
    """The correlation context as a dict (for logs and diagnostics)."""
    return {
        "correlation_id": correlation_id.get(),
        "causation_id": causation_id.get(),
        "message_id": message_id.get(),
    }


# Credentials can reach a log line through an exception message or a URL
# formatted by a library; these patterns blank them out before writing.
_SECRET_PATTERNS = (
    # scheme://user:password@host -> scheme://user:***@host
    (re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)[^@\s]+(?P<post>@)"),
     r"\g<pre>***\g<post>"),
    # Authorization: Bearer xyz / token=xyz / password=xyz
    (re.compile(r"(?i)(?P<pre>\bbearer\s+)[A-Za-z0-9._~+/=\-]+"), r"\g<pre>***"),
    (re.compile(r"(?i)(?P<pre>\b(?:password|passwd|pwd|token|secret|api[_-]?key)\s*[=:]\s*)"
                r"[^\s,;&\"']+"), r"\g<pre>***"),
)


def redact(text: str) -> str:
    """``text`` with credentials in URLs, bearer tokens and key=value secrets masked."""
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, correlation ids, extras.

    Extra attributes passed with ``logger.info(..., extra={...})`` are included
    when JSON-serialisable (else as their ``repr``).  Every string is passed
    through ``redact`` so a password in a URL or exception never reaches a log.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name, value in current_ids().items():
            if value is not None:
                out[name] = value
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key.startswith("_") or key in out:
                continue
            out[key] = _jsonable(value)
        if record.exc_info:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def _jsonable(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    try:
        return json.loads(redact(json.dumps(value, default=str)))
    except (TypeError, ValueError):
        return redact(repr(value))


def configure_logging(level: int | str = logging.INFO, stream=None) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as JSON lines; idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_coexist_json", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    handler._coexist_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler

"""Correlation context and structured JSON logs.

The ids of the message being handled live in contextvars so that every log
line and every message enqueued while handling it carries them without being
passed through every function.  ``bus.correlation.CorrelationMiddleware``
sets them for dramatiq actors; anything else (the relay, the CLI, a webhook
handler) can use ``correlation_scope``.

``configure_logging`` also keeps the logs worth alerting on: one line per state
change, not one per attempt (``RepeatLimiter``), libraries that narrate every
request or connection attempt held to their warnings (``QUIET_LOGGERS``), and
dramatiq's consumer connection errors, which it retries by itself, as WARNING
instead of CRITICAL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
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


#: Library loggers held to a level above their chatter, and why.
QUIET_LOGGERS: dict[str, int] = {
    # One INFO line per HTTP request: the router polls the cloud feed 5 times a second.
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    # 6-8 ERROR lines per failed connection attempt and 15 INFO lines per connection; the
    # error reaches its caller (dramatiq's consumer, the outbox relay, the dead-letter
    # drain), which reports it once.
    "pika": logging.CRITICAL,
    # "Context impl SQLiteImpl." each time a process checks its schema revision.
    "alembic": logging.WARNING,
}

#: Records whose level says more than they mean: dramatiq's consumers log CRITICAL on every
#: broker connection loss although they reconnect by themselves.
DOWNGRADED: dict[tuple[str, str], int] = {
    ("dramatiq.worker.ConsumerThread", "Consumer encountered a connection error: %s"):
        logging.WARNING,
}

#: A record repeated within this window is counted, not written (the window doubles up
#: to ``REPEAT_MAX_WINDOW_S`` while the repeats go on).
REPEAT_FIRST_WINDOW_S = 10.0
REPEAT_MAX_WINDOW_S = 900.0


def _family(logger_name: str) -> str:
    """``dramatiq.worker.ConsumerThread(coexist.command.DQ)`` -> ``...ConsumerThread``:
    the same failure seen by every consumer of a process is one thing."""
    return logger_name.split("(", 1)[0]


class RepeatLimiter(logging.Filter):
    """One line per state change, not per attempt: the first record with a given logger
    family and text passes; identical ones within a window are counted instead, and the
    first after the window passes with "(repeated N times in the last W s)", the window
    doubling each time up to ``max_window_s``.  A record that stops repeating for two
    windows starts afresh.  Repeats lose their traceback (the first carried it).

    Also applies ``DOWNGRADED``.  Records that differ (another message id, another
    feed) are never merged: per-message business lines all pass.
    """

    def __init__(self, *, first_window_s: float = REPEAT_FIRST_WINDOW_S,
                 max_window_s: float = REPEAT_MAX_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.first_window_s = first_window_s
        self.max_window_s = max_window_s
        self.clock = clock
        self._lock = threading.Lock()
        #: key -> [window_s, window ends at, suppressed count, last seen at]
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        family = _family(record.name)
        level = DOWNGRADED.get((family, str(record.msg)))
        if level is not None and record.levelno > level:
            record.levelno, record.levelname = level, logging.getLevelName(level)
        key = (family, record.levelno, record.getMessage())
        now = self.clock()
        with self._lock:
            state = self._seen.get(key)
            if state is None or now - state[3] > 2 * state[0]:
                self._seen[key] = [self.first_window_s, now + self.first_window_s, 0, now]
                self._forget_old(now)
                return True
            state[3] = now
            if now < state[1]:
                state[2] += 1
                return False
            suppressed, window = int(state[2]), state[0]
            state[0] = min(2 * window, self.max_window_s)
            state[1], state[2] = now + state[0], 0
        if suppressed:
            times = "once" if suppressed == 1 else f"{suppressed} times"
            record.msg = f"{record.getMessage()} (repeated {times} in the last {window:.0f} s)"
            record.args = ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True

    def _forget_old(self, now: float) -> None:
        if len(self._seen) > 1000:
            for k in [k for k, s in self._seen.items() if now - s[3] > 2 * s[0]]:
                del self._seen[k]


def configure_logging(level: int | str = logging.INFO, stream=None) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as JSON lines; idempotent.

    ``QUIET_LOGGERS`` are raised to their level (unless ``level`` is finer, for
    debugging: ``--log-level DEBUG`` shows everything) and a ``RepeatLimiter`` keeps
    one line per state change.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_coexist_json", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(RepeatLimiter())
    handler._coexist_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    debugging = root.getEffectiveLevel() <= logging.DEBUG
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.NOTSET if debugging else quiet)
    return handler

"""Opening the sources ``trace`` and ``status`` read, without creating or changing any.

The parts come from the composition root (``workers.bootstrap.App``), which never
creates a database for a report: a legacy database that is not there is
*unavailable*, never created empty; the cloud ERP is read only when
``COEXIST_CLOUD_URL`` is configured.  Each source's outcome is a ``SourceNote``,
shown with the report, so a missing source is said, not hidden.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, inspect

from workers.config import redact_url

OK = "ok"
UNAVAILABLE = "unavailable"
NOT_CONFIGURED = "not configured"

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class SourceNote:
    """What became of one source: ``ok``, ``unavailable`` or ``not configured``."""

    name: str
    state: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """``--since``: a duration back from now (``30m``, ``2h``, ``7d``, ``90s``) or an
    ISO 8601 time (UTC when no offset is given).  ValueError naming the value otherwise."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        now = now or datetime.now(UTC)
        return now - timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: expected a duration (30m, 2h, 7d) or an ISO 8601 "
                         "time (2026-11-27T14:00Z)") from None
    return utc(value)


def utc(value: Any) -> datetime | None:
    """A timezone-aware UTC datetime (SQLite returns naive ones, or text from MIN/MAX)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def has_table(engine: Engine, name: str) -> bool:
    return inspect(engine).has_table(name)


def legacy_source(app) -> tuple[Engine | None, SourceNote]:
    """The app's legacy database if it exists with its change log (never created)."""
    from workers.errors import SetupError

    name = "legacy change log"
    try:
        engine = app.legacy_engine
    except SetupError as exc:
        return None, SourceNote(name, UNAVAILABLE, f"{exc.problem}{exc.where()}")
    return engine, SourceNote(name, OK, redact_url(app.settings.legacy_url))


def cloud_source(app):
    """A cloud ERP client for a report (short timeouts, one retry), or ``None`` and why."""
    from workers.errors import SetupError

    name = "cloud change feed"
    if not app.settings.cloud_url:
        return None, SourceNote(name, NOT_CONFIGURED, "COEXIST_CLOUD_URL is not set")
    try:
        cloud = app.cloud_probe()
    except SetupError as exc:
        return None, SourceNote(name, UNAVAILABLE, f"{exc.problem}{exc.where()}")
    return cloud, SourceNote(name, OK, redact_url(app.settings.cloud_url))


def one_line(exc: BaseException, url: str | None = None) -> str:
    from bus.context import redact

    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    if url:
        text = text.replace(url, redact_url(url))
    return redact(text)


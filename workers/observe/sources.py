"""Opening the sources ``trace`` and ``status`` read, without creating or changing any.

The state database is opened as every CLI command opens it.  The legacy ERP's
database is opened only if it exists (a SQLite file that is not there is
*unavailable*, never created empty), and the cloud ERP only when
``COEXIST_CLOUD_URL`` is configured.  Each source's outcome is a
``SourceNote``, shown with the report, so a missing source is said, not hidden.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url

from workers.config import Settings, redact_url

#: Seconds a cloud ERP request may take in ``trace``/``status`` (a report, not a sync).
CLOUD_PROBE_TIMEOUT_S = 5.0

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


def open_legacy_engine(settings: Settings) -> tuple[Engine | None, SourceNote]:
    """An engine on the legacy ERP's database if it exists and has a change log."""
    name = "legacy change log"
    try:
        url = make_url(settings.legacy_url)
    except Exception as exc:  # noqa: BLE001 - a bad URL is reported like a missing source
        return None, SourceNote(name, UNAVAILABLE, f"bad COEXIST_LEGACY_URL: {exc}")
    if url.get_backend_name() == "sqlite":
        path = url.database
        if not path or path == ":memory:" or not Path(path).is_file():
            return None, SourceNote(name, UNAVAILABLE, f"no legacy database at {path or '-'}")
    try:
        from workers.legacy_erp.schema import create_legacy_engine

        engine = create_legacy_engine(settings.legacy_url)
        if not has_table(engine, "CHGLOG"):
            engine.dispose()
            return None, SourceNote(name, UNAVAILABLE, "the legacy database has no CHGLOG "
                                                       "table (run `coexist legacy init`)")
    except Exception as exc:  # noqa: BLE001 - unreachable server: say so, go on
        return None, SourceNote(name, UNAVAILABLE, one_line(exc, settings.legacy_url))
    return engine, SourceNote(name, OK, redact_url(settings.legacy_url))


def open_cloud(settings: Settings):
    """A ``CloudErp`` with short timeouts and one retry, or ``None`` with the reason."""
    name = "cloud change feed"
    if not settings.cloud_url:
        return None, SourceNote(name, NOT_CONFIGURED, "COEXIST_CLOUD_URL is not set")
    from workers.cloud_erp import CloudErp

    try:
        cloud = CloudErp(settings.cloud_url, token=settings.cloud_token,
                         timeout_s=CLOUD_PROBE_TIMEOUT_S, attempts=2, max_backoff_s=0.5)
    except Exception as exc:  # noqa: BLE001
        return None, SourceNote(name, UNAVAILABLE, one_line(exc, settings.cloud_url))
    return cloud, SourceNote(name, OK, redact_url(settings.cloud_url))


def one_line(exc: BaseException, url: str | None = None) -> str:
    from bus.context import redact

    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    if url:
        text = text.replace(url, redact_url(url))
    return redact(text)


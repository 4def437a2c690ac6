"""Configuration and connection failures, and the one place that turns any failure into
one line for a person.

``SetupError`` names the setting, the target (credentials hidden) and what went wrong;
the composition root raises it when a part cannot be opened.  ``explain(exc, settings)``
is what the CLI's edge (``workers.cli.CoexistGroup``) shows for any exception that
reaches it, with its exit code: configuration and connection problems are exit 2, a bug
is exit 3 and says to run again with ``--debug`` for the traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from bus.errors import BusError

# workers.config is imported where it is used: this module is on the path of every
# command, ``--help`` included, and the configuration pulls in the domain's models.

#: Exit codes every command keeps (README "Exit codes").
EXIT_OK = 0
EXIT_ATTENTION = 1
EXIT_SETUP = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130


class SetupError(Exception):
    """A part of coexist cannot be opened or reached as configured (exit 2)."""

    def __init__(self, part: str, setting: str | None, target: str | None, problem: str,
                 hint: str | None = None) -> None:
        self.part, self.setting, self.target = part, setting, target
        self.problem, self.hint = problem, hint
        super().__init__(f"{part}{self.where()}: {self.detail()}")

    def where(self) -> str:
        """`` (SETTING=target)``, the target's credentials hidden."""
        from workers.config import redact_url

        if self.setting:
            return f" ({self.setting}={redact_url(self.target)})"
        return f" ({redact_url(self.target)})" if self.target else ""

    def detail(self) -> str:
        return self.problem + (f"; {self.hint}" if self.hint else "")


def first_line(exc: BaseException) -> str:
    """The exception's type and first line of message, credentials masked."""
    from bus.context import redact

    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    source = orig if isinstance(orig, BaseException) else exc
    lines = str(source).strip().splitlines()
    text = lines[0].strip() if lines else ""
    return redact(f"{type(source).__name__}: {text}" if text else type(source).__name__)


@contextlib.contextmanager
def opening(part: str, setting: str | None, target: str | None,
            hint: str | None = None) -> Iterator[None]:
    """Turn any failure while opening ``part`` into a ``SetupError`` naming ``setting``."""
    from workers.config import ConfigError

    try:
        yield
    except (SetupError, ConfigError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the driver raises, one line
        raise SetupError(part, setting, target, first_line(exc), hint) from exc


# Module prefix of an exception -> (part, setting, Settings attribute of the target).
_BY_MODULE: tuple[tuple[str, tuple[str, str, str]], ...] = (
    ("redis", ("Redis", "COEXIST_REDIS_URL", "redis_url")),
    ("pika", ("broker", "COEXIST_BROKER_URL", "broker_url")),
    ("dramatiq", ("broker", "COEXIST_BROKER_URL", "broker_url")),
    ("httpx", ("cloud ERP", "COEXIST_CLOUD_URL", "cloud_url")),
    ("httpcore", ("cloud ERP", "COEXIST_CLOUD_URL", "cloud_url")),
)


def explain(exc: BaseException, settings: Any = None) -> tuple[str, int]:
    """(one line for a person, exit code) for an exception that reached the CLI's edge."""
    from workers.config import ConfigError

    if isinstance(exc, SetupError | ConfigError):
        return str(exc), EXIT_SETUP
    if isinstance(exc, BusError):
        return first_line(exc).split(": ", 1)[-1], EXIT_SETUP
    module = type(exc).__module__ or ""
    for prefix, (part, setting, attr) in _BY_MODULE:
        if module == prefix or module.startswith(prefix + "."):
            target = getattr(settings, attr, None) if settings is not None else None
            return str(SetupError(part, setting, target, first_line(exc))), EXIT_SETUP
    if module.startswith("sqlalchemy") or module.startswith(("sqlite3", "psycopg")):
        return f"database error: {first_line(exc)}", EXIT_SETUP
    if isinstance(exc, ConnectionError | TimeoutError):
        return f"connection failed: {first_line(exc)}", EXIT_SETUP
    if isinstance(exc, OSError):
        return f"{first_line(exc)}", EXIT_SETUP
    return (f"internal error: {first_line(exc)} (a bug: run again with --debug for the "
            "traceback and report it)", EXIT_BUG)

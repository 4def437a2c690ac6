"""Settings from the environment.  Credentials live only here, never in code or logs.

Every setting has an embedded default, so a single machine runs with no
RabbitMQ, Redis or PostgreSQL: state and the legacy ERP in SQLite files under
``COEXIST_HOME``, the embedded SQLite broker, flags in SQLite.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    #: Directory for the embedded default's files (SQLite databases, EDI folders).
    home: Path
    #: SQL database for coexist's own state (xref, outbox, inbox, audit, exceptions).
    state_url: str
    #: The legacy reference ERP's database.
    legacy_url: str
    #: AMQP URL; ``None`` selects the embedded SQLite broker.
    broker_url: str | None
    #: ``classic`` on one node, ``quorum`` for clusters.
    queue_type: str
    #: Redis URL; ``None`` keeps flags in SQL and rate limits in-process.
    redis_url: str | None
    #: Key prefix for everything coexist stores in Redis.
    redis_prefix: str
    #: Base URL of the cloud ERP API; ``None`` lets the demo start the simulator.
    cloud_url: str | None
    #: Bearer token for the cloud ERP API (from the environment only).
    cloud_token: str | None = field(repr=False, default=None)

    @classmethod
    def from_env(cls) -> Settings:
        load_env_file(os.environ.get("COEXIST_ENV_FILE"))
        home = Path(_env("COEXIST_HOME", "var")).resolve()
        return cls(
            home=home,
            state_url=_env("COEXIST_STATE_URL", f"sqlite:///{home / 'state.db'}"),
            legacy_url=_env("COEXIST_LEGACY_URL", f"sqlite:///{home / 'legacy.db'}"),
            broker_url=_env("COEXIST_BROKER_URL"),
            queue_type=_env("COEXIST_QUEUE_TYPE", "classic"),
            redis_url=_env("COEXIST_REDIS_URL"),
            redis_prefix=_env("COEXIST_REDIS_PREFIX", "coexist:"),
            cloud_url=_env("COEXIST_CLOUD_URL"),
            cloud_token=_env("COEXIST_CLOUD_TOKEN"),
        )

    def ensure_home(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home


def load_env_file(path: str | None) -> None:
    """Read ``KEY=VALUE`` lines from ``path`` into the environment (existing variables win).

    How supervisord programs get their settings and credentials without putting them on a
    command line or in the supervisord file.  Blank lines and ``#`` comments are skipped.
    """
    if not path:
        return
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"COEXIST_ENV_FILE {path}: {exc.strerror}") from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"COEXIST_ENV_FILE {path} line {n}: expected KEY=VALUE")
        os.environ.setdefault(key.strip(), value.strip().strip('"').strip("'"))


def redact_url(url: str | None) -> str:
    """A URL safe to log: the password is replaced by ``***``."""
    if not url:
        return "-"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))

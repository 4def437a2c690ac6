"""Schema revisions of coexist's databases: upgrade, read, and refuse to run on old ones.

Two targets (``migrations/``): ``state`` (coexist's state database: bus and state
tables) and ``legacy`` (what coexist installs into the legacy ERP: ``CHGLOG``, the
side tables; its capture triggers are replaced by the caller's ``after`` step, see
``workers.legacy_erp.schema.upgrade_legacy_schema``).

* ``upgrade(engine, target)`` brings a database to the code's head revision, under a
  lock, in one transaction: two processes upgrading together never both run DDL
  (PostgreSQL: an advisory lock; SQLite: ``BEGIN IMMEDIATE``).  A state database
  made by coexist 0.1.0 (every table, no revision) is adopted: stamped with the
  baseline, then upgraded.
* ``require_current(engine, target)`` is what every process and state-writing
  command runs at start instead of creating tables: it raises ``SchemaNotCurrent``
  (one line naming ``coexist db upgrade``) unless the database is at the head.
* ``prepare_state(engine, url, create_if_new=...)``: the embedded default's first
  start (``coexist run``, ``coexist demo``) upgrades a *new, empty* SQLite state
  database; every other database must be upgraded on purpose.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import make_url

from bus.errors import BusError
from migrations import LOCATIONS

log = logging.getLogger(__name__)

STATE = "state"
LEGACY = "legacy"
TARGETS = (STATE, LEGACY)

#: Version table of each target (the legacy one follows the legacy ERP's naming habits).
VERSION_TABLES = {STATE: "alembic_version", LEGACY: "XCOEXREV"}

#: Revision that describes coexist 0.1.0's state schema (made by ``create_all``, unversioned).
STATE_BASELINE = "0001"
#: Tables of a 0.1.0 state database: all present and no version table means "adopt".
STATE_TABLES_0_1_0 = frozenset({
    "outbox", "outbox_lease", "inbox", "applied_version", "exception_record",
    "cdc_checkpoint", "xref", "flag_audit", "record_route", "reconcile_run",
    "reconcile_finding",
})
#: Revision of the legacy side as coexist 0.1.0 installed it.
LEGACY_BASELINE = "0001"
LEGACY_TABLES_0_1_0 = frozenset({"CHGLOG", "XCOEXVER", "XCOEXIDM", "XCOEXTXN", "XCOEXWRT"})

#: PostgreSQL advisory lock keys of migrations start here (apart from the change log's).
MIGRATION_LOCK_BASE = 0x434F_4D00_0000

_ADOPTABLE = {STATE: (STATE_BASELINE, STATE_TABLES_0_1_0),
              LEGACY: (LEGACY_BASELINE, LEGACY_TABLES_0_1_0)}


class SchemaNotCurrent(BusError):
    """A database is not at the revision this code needs; the message names the command."""


@dataclass(frozen=True)
class Revision:
    """Where one database stands: its revision (``None``: none recorded) and the head."""

    target: str
    current: str | None
    head: str
    #: No revision recorded, but coexist 0.1.0's tables are there (``upgrade`` adopts them).
    unversioned_tables: bool = False

    @property
    def is_current(self) -> bool:
        return self.current == self.head


def _config(target: str) -> Config:
    if target not in TARGETS:
        raise ValueError(f"unknown migration target {target!r} (one of {', '.join(TARGETS)})")
    config = Config(ini_section=target)
    config.set_main_option("script_location", str(LOCATIONS[target]))
    return config


@cache
def _scripts(target: str) -> ScriptDirectory:
    return ScriptDirectory.from_config(_config(target))


def head(target: str = STATE) -> str:
    """The revision this code needs (``migrations/<target>/versions``' one head)."""
    heads = _scripts(target).get_heads()
    if len(heads) != 1:  # pragma: no cover - two revisions with the same parent: merge them
        raise RuntimeError(f"{target} migrations have {len(heads)} heads: {heads}")
    return heads[0]


def current(conn: Connection, target: str = STATE) -> str | None:
    """The revision recorded in the database (``None`` when there is none)."""
    ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLES[target]})
    return ctx.get_current_revision()


def revision(engine: Engine, target: str = STATE) -> Revision:
    """Where ``engine``'s database stands against this code's head revision."""
    with engine.connect() as conn:
        rev = current(conn, target)
        unversioned = rev is None and bool(_tables(conn) & _ADOPTABLE[target][1])
    return Revision(target, rev, head(target), unversioned)


# ----------------------------------------------------------------------- upgrade


@contextmanager
def _locked(engine: Engine, target: str) -> Iterator[Connection]:
    """One transaction holding the migration lock of ``target`` in this database."""
    own = None
    if engine.dialect.name == "sqlite" and target == LEGACY:
        # The legacy engine begins deferred transactions; the state engine's
        # BEGIN IMMEDIATE takes SQLite's write lock up front.
        from workers.db import create_state_engine

        own = engine = create_state_engine(engine.url.render_as_string(hide_password=False))
    try:
        with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE
            if conn.dialect.name == "postgresql":
                schema = conn.execute(text("SELECT current_schema()")).scalar_one()
                name = f"coexist.migrate.{target}.{schema}"
                key = MIGRATION_LOCK_BASE + zlib.crc32(name.encode())
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
            yield conn
    finally:
        if own is not None:
            own.dispose()


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _adopt_unversioned(conn: Connection, target: str) -> str | None:
    """Stamp a database that coexist 0.1.0 built (every table, no revision) with the
    baseline; raise on a database that holds only some of those tables."""
    baseline, tables = _ADOPTABLE[target]
    present = _tables(conn) & tables
    if not present:
        return None
    missing = sorted(tables - present)
    if missing:
        raise SchemaNotCurrent(
            f"the {target} database has some of coexist's tables but no schema revision "
            f"and lacks {', '.join(missing)}: it was not made by a coexist release; "
            "restore it from a backup or move it aside"
        )
    from alembic import command

    config = _config(target)
    config.attributes["connection"] = conn
    command.stamp(config, baseline)
    log.info("adopted an unversioned %s database (coexist 0.1.0) at revision %s",
             target, baseline)
    return baseline


def _upgrade_on(conn: Connection, target: str, to: str,
                after: Callable[[Connection], None] | None = None) -> tuple[str | None, str]:
    from alembic import command

    before = current(conn, target)
    if before is None:
        _adopt_unversioned(conn, target)
    elif before not in {s.revision for s in _scripts(target).walk_revisions()}:
        raise SchemaNotCurrent(
            f"the {target} database is at revision {before}, which this coexist does not "
            f"know (its newest is {head(target)}): it was upgraded by a newer coexist"
        )
    config = _config(target)
    config.attributes["connection"] = conn
    command.upgrade(config, to)
    if after is not None:
        after(conn)
    return before, current(conn, target) or ""


def upgrade(engine: Engine, target: str = STATE, to: str = "head", *,
            after: Callable[[Connection], None] | None = None) -> tuple[str | None, str]:
    """Upgrade ``engine``'s database to revision ``to``; returns (before, after).

    ``after(conn)`` runs in the same transaction, under the same lock, once the
    revisions are applied: the legacy side replaces its capture triggers there
    (``workers.legacy_erp.schema.upgrade_legacy_schema``).
    """
    with _locked(engine, target) as conn:
        return _upgrade_on(conn, target, to, after)


# ------------------------------------------------------------------- at start


def _command(target: str) -> str:
    return "coexist db upgrade" + (" --legacy" if target == LEGACY else "")


def check(rev: Revision, where: str) -> None:
    """Raise ``SchemaNotCurrent`` unless ``rev`` is the head; one line for the user."""
    if rev.is_current:
        return
    cmd = _command(rev.target)
    if rev.current is None and rev.unversioned_tables:
        raise SchemaNotCurrent(
            f"{where} was made by coexist 0.1.0 (no schema revision; this coexist needs "
            f"{rev.head}): run `{cmd}`")
    if rev.current is None:
        raise SchemaNotCurrent(f"{where} has no coexist schema: run `{cmd}`")
    known = {s.revision for s in _scripts(rev.target).walk_revisions()}
    if rev.current not in known:
        raise SchemaNotCurrent(
            f"{where} is at schema revision {rev.current}, newer than this coexist "
            f"({rev.head}): run the coexist that upgraded it")
    raise SchemaNotCurrent(
        f"{where} is at schema revision {rev.current}, this coexist needs {rev.head}: "
        f"run `{cmd}`")


def require_current(engine: Engine, target: str = STATE, *, where: str | None = None) -> None:
    """Refuse (``SchemaNotCurrent``) a database that is not at the code's head revision."""
    from workers.config import redact_url

    where = where or f"the {target} database {redact_url(str(engine.url))}"
    check(revision(engine, target), where)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (``None`` for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def prepare_state(engine: Engine, *, create_if_new: bool = False) -> None:
    """At a process's start: require the state database's head revision.

    ``create_if_new`` (the embedded default's first start) upgrades a SQLite state
    database that has no tables at all, under the migration lock, so several
    processes starting together on a fresh ``COEXIST_HOME`` create it once.  An
    existing database is never upgraded here, only by ``coexist db upgrade``.
    """
    path = sqlite_path(engine.url.render_as_string(hide_password=False))
    if path is not None and not path.exists() and not create_if_new:
        # Connecting would create an empty file; a wrong COEXIST_HOME must not look new.
        raise SchemaNotCurrent(f"no state database at {path}: run `coexist db upgrade` "
                               "(or `coexist run`, which creates a new embedded one)")
    if create_if_new and engine.dialect.name == "sqlite":
        with _locked(engine, STATE) as conn:
            if not _tables(conn):
                log.info("new state database: creating its schema (revision %s)", head(STATE))
                _upgrade_on(conn, STATE, "head")
                return
    require_current(engine, STATE)

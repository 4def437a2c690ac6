"""The legacy reference ERP's database: engine, schema, change capture.

``create_legacy_schema(engine)`` creates the legacy tables of all seven domains
(``coexistence.legacy.models``), coexist's change log and side tables
(``workers.legacy_erp.capture``) and the capture triggers, on SQLite (a file,
the default) or PostgreSQL (by URL; a ``search_path`` in the URL selects a
schema).  It is idempotent.
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event

from bus.db import SQLITE_BUSY_TIMEOUT_MS
from coexistence.legacy import LEGACY_METADATA, LEGACY_TABLES
from workers.legacy_erp.capture import CapturedTable, install_capture

__all__ = ["captured_tables", "create_legacy_engine", "create_legacy_schema", "translator",
           "upgrade_legacy_schema"]


def translator(domain: str):
    """The legacy translator module of ``domain`` (``coexistence.translate.legacy``)."""
    from coexistence.canonical import model_for
    from coexistence.translate.legacy import LEGACY_TRANSLATORS

    model_for(domain)  # an unknown domain is a TranslationError naming it
    return LEGACY_TRANSLATORS[domain]


def captured_tables() -> list[CapturedTable]:
    """One ``CapturedTable`` per legacy table: header tables and their line tables.

    The change-log key of every table is the header's business key columns
    (``KEY_COLUMNS`` of the domain's translator), so that a line change is
    logged as a change of its document and the key decodes to the canonical key.
    """
    specs: list[CapturedTable] = []
    for domain, (header, child) in LEGACY_TABLES.items():
        keys = tuple(translator(domain).KEY_COLUMNS)
        header_name = header.__tablename__
        specs.append(CapturedTable(header_name, domain, keys))
        if child is not None:
            missing = [k for k in keys if k not in child.__table__.c]
            if missing:  # pragma: no cover - a schema/translator mismatch
                raise ValueError(f"{child.__tablename__} lacks header key columns {missing}")
            specs.append(CapturedTable(child.__tablename__, domain, keys, header=header_name,
                                       header_key_columns=keys))
    return specs


def key_decoders() -> dict[str, object]:
    """Domain -> the translator's legacy-key -> canonical-key function."""
    return {domain: translator(domain).canonical_key for domain in LEGACY_TABLES}


def create_legacy_engine(url: str, **kwargs) -> Engine:
    """An engine on the legacy database.

    SQLite: WAL (the change-log reader never blocks writers), a busy timeout,
    and *deferred* transactions, so that reads never take the write lock;
    every write transaction of ours begins with a write, so it waits for the
    lock up front instead of failing on a read-to-write upgrade.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def create_legacy_schema(engine: Engine) -> None:
    """Create the legacy tables (the reference ERP's own), then coexist's part of it
    (:func:`upgrade_legacy_schema`); idempotent."""
    LEGACY_METADATA.create_all(engine)
    upgrade_legacy_schema(engine)


def upgrade_legacy_schema(engine: Engine) -> tuple[str | None, str]:
    """Bring coexist's change log and side tables to the code's revision (migrations in
    ``migrations/legacy``), then replace the capture triggers on every captured table:
    they are generated from :func:`captured_tables`, so they are not revisions."""
    from workers.migrate import LEGACY, upgrade

    return upgrade(engine, LEGACY,
                   after=lambda conn: install_capture(conn, captured_tables()))

"""What both environments' ``env.py`` do: run migrations on the connection that
``workers.migrate`` hands over (already inside a transaction that holds the
migration lock), or on ``-x url=...`` / ``sqlalchemy.url`` when the ``alembic``
command line runs them (developers: ``alembic -n state revision --autogenerate``).
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import MetaData

#: Parts of the change log whose shape differs per dialect and is built by code
#: (``workers.legacy_erp.capture.install_change_log``, run by legacy revision 0002): on
#: SQLite ``POS`` is a virtual column of ``SEQ``; on PostgreSQL ``TXID``, ``POS`` and their
#: indexes are added to the table.  Autogenerate does not compare them (it would see an
#: INTEGER for a BIGINT, or an unknown column); the revisions and tests that build them do.
DIALECT_MANAGED = frozenset({"CHGLOG.POS", "CHGLOG.TXID", "CHGLOG_POS", "CHGLOG_UNPOS"})


def only_known_tables(metadata: MetaData | list[MetaData]):
    """An ``include_object`` hook that ignores tables the metadata does not declare.

    The legacy database holds the legacy ERP's own tables and a PostgreSQL schema may
    hold other applications' tables: autogenerate must never propose to drop them.
    """
    metadatas = metadata if isinstance(metadata, list) else [metadata]
    known = {t for m in metadatas for t in m.tables}

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "table":
            return name in known
        table = getattr(obj, "table", None)
        if table is None or table.name not in known:
            return table is None
        return f"{table.name}.{name}" not in DIALECT_MANAGED and name not in DIALECT_MANAGED

    return include


def compare_options(metadata: MetaData | list[MetaData]) -> dict[str, Any]:
    """How autogenerate (and the models-versus-migrations test) compares a database with
    ``metadata``: types too, only coexist's own tables, not the dialect-managed parts."""
    return {"compare_type": True, "include_object": only_known_tables(metadata)}


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Write SQLModel's column types as the plain SQLAlchemy types they emit, so a revision
    never imports sqlmodel (AutoString is a VARCHAR, UTCDateTime a timezone-aware
    DATETIME); alembic renders everything else itself."""
    if type_ == "type":
        name = type(obj).__name__
        if name == "AutoString":
            length = getattr(obj, "length", None) or getattr(obj.impl, "length", None)
            return f"sa.String(length={length})" if length else "sa.String()"
        if name == "UTCDateTime":
            return "sa.DateTime(timezone=True)"
    return False


def run(metadata: MetaData | list[MetaData], *, version_table: str) -> None:
    config = context.config
    options: dict[str, Any] = {
        "target_metadata": metadata,
        "version_table": version_table,
        **compare_options(metadata),
        "render_as_batch": True,  # SQLite cannot ALTER most things: batch operations copy
        "render_item": render_item,
    }
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url")
    if not url:
        raise SystemExit("pass the database: alembic -n NAME -x url=sqlite:///var/dev.db ...")
    if config.config_ini_section == "legacy":
        from workers.legacy_erp.schema import create_legacy_engine as make_engine
    else:
        from workers.db import create_state_engine as make_engine
    engine = make_engine(url)
    with engine.begin() as conn:
        context.configure(connection=conn, **options)
        context.run_migrations()
    engine.dispose()

"""Change capture for the legacy ERP: the change-log table and its triggers.

Every insert, update and delete on a captured table appends one row to
``CHGLOG`` from a database trigger (SQLite and PostgreSQL), so that changes made
by *anyone* - coexist, a person at a green screen, a nightly batch job - are
captured, in the same transaction as the change itself.

``CHGLOG`` columns (legacy habits: fixed-width upper-case names):

* ``SEQ``      the row's number, in the order rows were written (not committed);
* ``TABNAME``  the table that changed;
* ``CHGKEY``   the *header* key of the affected record (key columns joined with
  ``KEY_SEPARATOR``), so a change of an order line is a change of its order;
* ``OP``       ``I`` / ``U`` / ``D`` on that table;
* ``CHGTS``    UTC time of the change, epoch milliseconds;
* ``LCHGUSER`` the header's last-change user: ``COEXIST`` for coexist's writes,
  a person's user id otherwise (how echoes are told apart from people's writes);
* ``POS``      the change's *position*: the feed's cursor and the change's
  version (below); ``NULL`` on PostgreSQL until the feed has numbered the row.

Commit order.  A reader that checkpoints cursor ``N`` must never later see a
change with a cursor below ``N`` commit: that change would be skipped for good.
SQLite has a single writer, so sequence order is commit order and ``POS`` is
simply ``SEQ`` (a virtual column).  PostgreSQL hands out ``SEQ`` values to
concurrent transactions that commit in another order, so there ``SEQ`` is not a
cursor.  Instead, as PgQ's ticker does with transaction snapshots, the
*reader* numbers what has become visible: each row also records its
transaction (``TXID``, ``pg_current_xact_id()``), inserted with ``POS`` NULL, and
``XCHG_ASSIGN(n)`` (one statement, in autocommit) gives up to ``n`` committed,
unpositioned rows the next positions, in ``(TXID, SEQ)`` order, after the
high-water mark kept in ``XCOEXPOS``, whose row lock serializes the numbering.
A statement only sees committed rows, so a transaction that commits late is
numbered late, after every position a reader may already have checkpointed:
nothing is skipped, and legacy writers are never serialized (only the numbering
is, and it touches coexist's own table).  Positions are final once assigned, so
re-reading yields the same changes with the same cursors.

A position is also a valid version: a change positioned later was committed
after every change positioned before it was visible, so the router's read of
the record's state for it includes them all.  ``SEQ`` order would not be: two
transactions changing different lines of one order commit in either order.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateTable

from coexistence.ports import COEXIST_WRITER

#: Metadata of the tables coexist adds to the legacy database (change log, versions).
CAPTURE_METADATA = MetaData()

#: Joins the columns of a composite header key in ``CHGLOG.CHGKEY``.
KEY_SEPARATOR = "|"

#: Writer recorded when a child row changes and its header (with the last-change
#: user) cannot be found: treated as a person's write, never as an echo.
UNKNOWN_WRITER = "?"

CHGLOG = Table(
    "CHGLOG",
    CAPTURE_METADATA,
    # AUTOINCREMENT on SQLite: a sequence value is never reused, even after the
    # highest row is deleted (log pruning), so cursors stay strictly monotonic.
    Column("SEQ", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("TABNAME", String(10), nullable=False),
    Column("CHGKEY", String(120), nullable=False),
    Column("OP", String(1), nullable=False),
    Column("CHGTS", BigInteger, nullable=False),
    Column("LCHGUSER", String(10), nullable=False),
    # The cursor (see the module docstring); created per dialect by install_capture.
    Column("POS", BigInteger),
    sqlite_autoincrement=True,
)

#: A record's latest change (who made its current state, its revision), read by key
#: before every routed write (``LegacyErp.get_current``); legacy revision 0003.
Index("CHGLOG_KEY", CHGLOG.c.CHGKEY, CHGLOG.c.SEQ)

#: Last source version coexist applied per record (a tombstone survives a delete).
XCOEXVER = Table(
    "XCOEXVER",
    CAPTURE_METADATA,
    Column("DOMAIN", String(12), primary_key=True),
    Column("RECKEY", String(60), primary_key=True),
    Column("SRCVER", BigInteger, nullable=False),
)

#: Idempotency keys of coexist's writes with their first result.
XCOEXIDM = Table(
    "XCOEXIDM",
    CAPTURE_METADATA,
    Column("IDEMKEY", String(200), primary_key=True),
    #: sha256 of the write (operation, domain, key, version, payload).
    Column("FPRINT", String(64), nullable=False),
    Column("DOMAIN", String(12), nullable=False),
    Column("RECKEY", String(60), nullable=False),
    #: ``A`` applied / ``S`` stale.
    Column("RESULT", String(1), nullable=False),
    Column("SRCVER", BigInteger, nullable=False),
    Column("CURVER", BigInteger, nullable=False),
    Column("CRTTS", BigInteger, nullable=False),
)
Index("XCOEXIDM_CRTTS", XCOEXIDM.c.CRTTS)


#: Marks coexist's own write transactions: a row naming the writer, inserted
#: first thing and deleted before commit, so only that transaction ever sees it
#: (MVCC on PostgreSQL, one writer on SQLite).  The triggers attribute changes
#: made while it is present to that writer - including deletes, which carry no
#: audit columns.
XCOEXTXN = Table("XCOEXTXN", CAPTURE_METADATA, Column("WRITER", String(10), nullable=False))

#: Every change user coexist writes under (``COEXIST_WRITER``, channel command
#: writers).  A change outside coexist's transactions whose audit column still
#: names one of them is a person's delete or unstamped update: never an echo.
XCOEXWRT = Table("XCOEXWRT", CAPTURE_METADATA, Column("WRITER", String(10), primary_key=True))

#: Longest change user the legacy ERP stores (``LCHGUSER`` is CHAR(10)).
WRITER_WIDTH = 10


@dataclass(frozen=True)
class CapturedTable:
    """How changes of one legacy table map to a record of a domain.

    ``key_columns`` are this table's columns holding the header key; for a
    child table (``header`` set) they are matched, in order, to the header's
    ``header_key_columns`` to find the header's last-change user.
    """

    table: str
    domain: str
    key_columns: tuple[str, ...]
    header: str | None = None
    header_key_columns: tuple[str, ...] = ()
    #: The last-change-user column of the header (``None``: the table has none).
    user_column: str | None = "LCHGUSER"

    @property
    def is_header(self) -> bool:
        return self.header is None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _key_expr(spec: CapturedTable, row: str, dialect: str) -> str:
    sep = KEY_SEPARATOR.replace("'", "''")
    # Trailing CHAR padding is dropped (as PostgreSQL's bpchar::text does anyway),
    # so the key reads the same on both databases.
    if dialect == "postgresql":
        parts = [f"COALESCE(rtrim({row}.{_q(c)}::text), '')" for c in spec.key_columns]
    else:
        parts = [f"COALESCE(RTRIM(CAST({row}.{_q(c)} AS TEXT)), '')" for c in spec.key_columns]
    return f" || '{sep}' || ".join(parts)


def _user_expr(spec: CapturedTable, row: str) -> str:
    """Who made the change: coexist when its transaction marker is present, else
    the header's last-change user - unless that still names coexist, because a
    person's delete, or an update that did not stamp the audit columns, must
    never pass for coexist's echo."""
    if spec.user_column is None:
        base = "NULL"
    elif spec.is_header:
        base = f"{row}.{_q(spec.user_column)}"
    else:
        join = " AND ".join(
            f"h.{_q(hc)} = {row}.{_q(c)}"
            for hc, c in zip(spec.header_key_columns, spec.key_columns, strict=True)
        )
        base = (f"(SELECT h.{_q(spec.user_column)} FROM {_q(spec.header or '')} h "
                f"WHERE {join})")
    return (
        f"COALESCE((SELECT x.\"WRITER\" FROM \"XCOEXTXN\" x LIMIT 1), "
        f"CASE WHEN RTRIM({base}) IN (SELECT w.\"WRITER\" FROM \"XCOEXWRT\" w) "
        f"THEN '{UNKNOWN_WRITER}' ELSE COALESCE(RTRIM({base}), '{UNKNOWN_WRITER}') END)"
    )


_SQLITE_NOW_MS = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
_PG_NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
_INSERT = 'INSERT INTO "CHGLOG" ("TABNAME", "CHGKEY", "OP", "CHGTS", "LCHGUSER")'


def sqlite_trigger_ddl(spec: CapturedTable) -> list[str]:
    """DDL of the three SQLite triggers capturing ``spec.table`` (idempotent)."""
    t, name = _q(spec.table), spec.table.replace("'", "''")

    def values(row: str, op: str) -> str:
        return (f"VALUES ('{name}', {_key_expr(spec, row, 'sqlite')}, '{op}', "
                f"{_SQLITE_NOW_MS}, {_user_expr(spec, row)})")

    old_key, new_key = _key_expr(spec, "OLD", "sqlite"), _key_expr(spec, "NEW", "sqlite")
    # Dropped and created again, so that re-running the schema upgrades them.
    drops = [f'DROP TRIGGER IF EXISTS "XCHG_{spec.table}_{op}"' for op in "IUD"]
    return [
        *drops,
        f'CREATE TRIGGER "XCHG_{spec.table}_I" AFTER INSERT ON {t} '
        f"BEGIN {_INSERT} {values('NEW', 'I')}; END",
        # A key change is the deletion of the old record and a change of the new one.
        f'CREATE TRIGGER "XCHG_{spec.table}_U" AFTER UPDATE ON {t} BEGIN '
        f"{_INSERT} SELECT '{name}', {old_key}, 'D', {_SQLITE_NOW_MS}, {_user_expr(spec, 'NEW')} "
        f"WHERE ({old_key}) IS NOT ({new_key}); "
        f"{_INSERT} {values('NEW', 'U')}; END",
        f'CREATE TRIGGER "XCHG_{spec.table}_D" AFTER DELETE ON {t} '
        f"BEGIN {_INSERT} {values('OLD', 'D')}; END",
    ]


def pg_trigger_ddl(spec: CapturedTable) -> list[str]:
    """DDL of the PostgreSQL trigger function and trigger capturing ``spec.table`` (idempotent).

    Also drops the statement trigger of the serialized scheme this replaced, so
    re-running the schema on an older change log upgrades it.
    """
    t, name = _q(spec.table), spec.table.replace("'", "''")
    fn = _q(f"XCHG_{spec.table}")
    old_key, new_key = _key_expr(spec, "OLD", "postgresql"), _key_expr(spec, "NEW", "postgresql")

    def insert(row: str, key: str, op: str) -> str:
        return f"{_INSERT} VALUES ('{name}', {key}, {op}, {_PG_NOW_MS}, {_user_expr(spec, row)});"

    log_deleted = insert("OLD", old_key, "'D'")
    # The old key of a key change is deleted by whoever made the update.
    log_key_moved = insert("NEW", old_key, "'D'")
    log_new = insert("NEW", new_key, "left(TG_OP, 1)")
    return [
        f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql "
        f"SET search_path FROM CURRENT AS $fn$ BEGIN "
        f"IF TG_OP = 'DELETE' THEN {log_deleted} RETURN NULL; END IF; "
        f"IF TG_OP = 'UPDATE' AND ({old_key}) IS DISTINCT FROM ({new_key}) THEN "
        f"{log_key_moved} END IF; "
        f"{log_new} RETURN NULL; END $fn$",
        f'DROP TRIGGER IF EXISTS "XCHG_{spec.table}_R" ON {t}',
        f'CREATE TRIGGER "XCHG_{spec.table}_R" AFTER INSERT OR UPDATE OR DELETE ON {t} '
        f"FOR EACH ROW EXECUTE FUNCTION {fn}()",
        f'DROP TRIGGER IF EXISTS "XCHG_{spec.table}_S" ON {t}',
    ]


#: Numbers up to ``max_rows`` committed, unpositioned change-log rows after the
#: high-water mark (see the module docstring); returns how many it numbered.
#: The row lock on ``XCOEXPOS`` is taken before the rows are chosen, and every
#: statement of a function sees what committed before it started, so a second
#: caller waits for the first and then sees its numbers.
_PG_ASSIGN_DDL = """
CREATE OR REPLACE FUNCTION "XCHG_ASSIGN"(max_rows integer) RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT AS $fn$
DECLARE base bigint; n integer;
BEGIN
  PERFORM 1 FROM "CHGLOG" WHERE "POS" IS NULL LIMIT 1;
  IF NOT FOUND THEN RETURN 0; END IF;
  SELECT "LASTPOS" INTO base FROM "XCOEXPOS" FOR UPDATE;
  UPDATE "CHGLOG" c SET "POS" = base + t.rn
    FROM (SELECT "SEQ", row_number() OVER (ORDER BY "TXID", "SEQ") AS rn
            FROM "CHGLOG" WHERE "POS" IS NULL ORDER BY "TXID", "SEQ" LIMIT max_rows) t
   WHERE c."SEQ" = t."SEQ";
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n > 0 THEN UPDATE "XCOEXPOS" SET "LASTPOS" = base + n; END IF;
  RETURN n;
END $fn$
"""


def _serialized_scheme_lock_key(conn: Connection) -> int:
    """The advisory lock every writer took under the scheme positions replaced (one
    per schema); an upgrade takes it to wait out writers still running under it."""
    schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    return 0x434F_0000_0000 + zlib.crc32(f"coexist.CHGLOG.{schema}".encode())


def _install_pg_change_log(conn: Connection) -> None:
    """``CHGLOG`` with ``TXID`` and ``POS``, ``XCOEXPOS``, ``XCHG_ASSIGN``; upgrades a
    change log of the serialized scheme in place (idempotent)."""
    serialized = conn.execute(text(
        "SELECT to_regprocedure('\"XCHG_LOCK\"()') IS NOT NULL")).scalar_one()
    if serialized:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                     {"k": _serialized_scheme_lock_key(conn)})
    CHGLOG.create(conn, checkfirst=True)
    txid = ("pg_current_xact_id()::text::bigint"
            if conn.dialect.server_version_info >= (13,) else "txid_current()")
    conn.exec_driver_sql('ALTER TABLE "CHGLOG" ADD COLUMN IF NOT EXISTS "POS" bigint, '
                         'ADD COLUMN IF NOT EXISTS "TXID" bigint')
    conn.exec_driver_sql(f'ALTER TABLE "CHGLOG" ALTER COLUMN "TXID" SET DEFAULT ({txid})')
    conn.exec_driver_sql('CREATE UNIQUE INDEX IF NOT EXISTS "CHGLOG_POS" ON "CHGLOG" ("POS")')
    conn.exec_driver_sql('CREATE INDEX IF NOT EXISTS "CHGLOG_UNPOS" ON "CHGLOG" ("TXID", "SEQ") '
                         'WHERE "POS" IS NULL')
    first = conn.execute(text("SELECT to_regclass('\"XCOEXPOS\"') IS NULL")).scalar_one()
    conn.exec_driver_sql('CREATE TABLE IF NOT EXISTS "XCOEXPOS" ("ONE" smallint PRIMARY KEY '
                         'CHECK ("ONE" = 1), "LASTPOS" bigint NOT NULL)')
    if first:
        # Every row logged so far predates positions: written while writers were
        # serialized (SEQ order was commit order), so SEQ is its position, and
        # new positions start above every SEQ ever handed out - above every
        # checkpoint a consumer holds.
        conn.exec_driver_sql('UPDATE "CHGLOG" SET "POS" = "SEQ" WHERE "POS" IS NULL')
        conn.exec_driver_sql(
            'INSERT INTO "XCOEXPOS" VALUES (1, GREATEST('
            "COALESCE(pg_sequence_last_value(pg_get_serial_sequence('\"CHGLOG\"', 'SEQ')"
            "::regclass), 0), "
            'COALESCE((SELECT max("POS") FROM "CHGLOG"), 0)))')
    conn.exec_driver_sql(_PG_ASSIGN_DDL)


def install_change_log(conn: Connection) -> None:
    """``CHGLOG`` with its cursor column as this module describes it, in ``conn``'s
    transaction (idempotent; upgrades a change log of the serialized scheme in place).
    What a schema migration of the legacy side runs; the triggers are separate."""
    if conn.dialect.name == "postgresql":
        _install_pg_change_log(conn)
    else:
        _install_sqlite_change_log(conn)


def _install_sqlite_change_log(conn: Connection) -> None:
    """``CHGLOG`` with ``POS`` as a virtual column equal to ``SEQ`` (idempotent)."""
    base = Table("CHGLOG", MetaData(), *(c._copy() for c in CHGLOG.c if c.name != "POS"),
                 sqlite_autoincrement=True)
    conn.execute(CreateTable(base, if_not_exists=True))
    columns = {row[1] for row in conn.exec_driver_sql('PRAGMA table_xinfo("CHGLOG")')}
    if "POS" not in columns:
        conn.exec_driver_sql('ALTER TABLE "CHGLOG" ADD COLUMN "POS" INTEGER '
                             'GENERATED ALWAYS AS ("SEQ") VIRTUAL')


@contextmanager
def coexist_transaction(conn: Connection, writer: str = COEXIST_WRITER) -> Iterator[None]:
    """Mark the writes made inside as coexist's, by ``writer``, in ``conn``'s transaction.

    If the block raises, the caller's transaction must roll back (the marker
    with it).  ``writer`` must be registered (:func:`register_writer`) for
    people's later writes to its rows never to pass for it.
    """
    conn.execute(XCOEXTXN.insert().values(WRITER=writer))
    yield
    conn.execute(XCOEXTXN.delete())


def check_writer(writer: str) -> str:
    """``writer`` if the legacy ERP can store it exactly as a change user, else ValueError."""
    if not writer or len(writer) > WRITER_WIDTH or writer != writer.upper().strip() \
            or not writer.isascii():
        raise ValueError(f"writer {writer!r}: the legacy change user is at most {WRITER_WIDTH} "
                         "upper-case ASCII characters")
    return writer


def register_writer(conn: Connection, writer: str) -> None:
    """Record ``writer`` as one of coexist's change users (idempotent)."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(dialect_insert(XCOEXWRT).values(WRITER=check_writer(writer))
                 .on_conflict_do_nothing())


def install_capture(bind: Engine | Connection, tables: Iterable[CapturedTable]) -> None:
    """Create ``CHGLOG``, the side tables and the triggers on ``tables``.

    Idempotent, and an upgrade: run on a change log of an older coexist, it
    brings it to this scheme in place, keeping every consumer's checkpoint valid.
    ``bind`` is an engine (one transaction of its own) or a connection inside the
    caller's transaction (``workers.migrate`` replaces the triggers under its lock).
    """
    tables = list(tables)
    with bind.begin() if isinstance(bind, Engine) else nullcontext(bind) as conn:
        dialect = conn.dialect.name
        if dialect not in ("postgresql", "sqlite"):  # pragma: no cover - configuration error
            raise ValueError(f"legacy ERP supports SQLite and PostgreSQL, not {dialect}")
        install_change_log(conn)
        CAPTURE_METADATA.create_all(conn, tables=[t for t in CAPTURE_METADATA.sorted_tables
                                                  if t is not CHGLOG])
        register_writer(conn, COEXIST_WRITER)
        for spec in tables:
            ddl = pg_trigger_ddl(spec) if dialect == "postgresql" else sqlite_trigger_ddl(spec)
            for stmt in ddl:
                conn.exec_driver_sql(stmt)
        if dialect == "postgresql":
            conn.exec_driver_sql('DROP FUNCTION IF EXISTS "XCHG_LOCK"()')

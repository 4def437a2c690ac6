"""Reading the legacy change log (``CHGLOG``) as a ``coexistence.ports.ChangeFeed``.

The feed yields ``Change`` entries in cursor order after a cursor (``SEQ`` on
SQLite, the position ``POS`` on PostgreSQL, which a read first assigns to the
rows committed since: see ``workers.legacy_erp.capture``).  The cursor that was
fully handled is kept as a durable checkpoint in coexist's *state* database
(``workers.checkpoints``), not in the legacy database, and advanced in the same
state transaction as the consumer's effects (the router's capture batch:
``workers.router.capture.CaptureLoop``).
Reading changes nothing a consumer sees (positions, once assigned, are final),
so a crash between a read and the commit of its checkpoint simply re-reads the
same changes with the same cursors; the effects of the first attempt
were rolled back with that checkpoint, so nothing is skipped or done twice.

Consecutive log rows for the same record by the same writer (an order header
and its lines rewritten in one go) are coalesced into one ``Change`` carrying
the last row's cursor as its cursor and version: the consumer reads the record's
current state anyway, and one change per record write is what it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError

from bus.errors import TechnicalError
from coexistence.errors import TranslationError
from coexistence.ports import Change
from workers.legacy_erp.capture import CHGLOG, CapturedTable

__all__ = ["ChangeLogNotUpgraded", "KeyDecoder", "LegacyChangeFeed", "UnknownChangeLogTable"]

#: Turns a legacy header key in its string form (key columns without padding,
#: joined by ``KEY_SEPARATOR``) into the canonical key of the record.
KeyDecoder = Callable[[str], str]

#: The page query per dialect (sqlite3's ``qmark``, psycopg's ``format`` paramstyle):
#: plain driver SQL skips per-row result processing.
_READ_SQL = {
    dialect: f'SELECT "{col}", "TABNAME", "CHGKEY", "OP", "CHGTS", "LCHGUSER" FROM "CHGLOG" '
             f'WHERE "{col}" > {mark} ORDER BY "{col}" LIMIT {mark}'
    for dialect, col, mark in (("sqlite", "SEQ", "?"), ("postgresql", "POS", "%s"))
}

#: Change-log rows a read numbers at most per call of ``XCHG_ASSIGN`` (PostgreSQL):
#: a backlog is numbered ahead of reading in steps of this, each one short statement.
ASSIGN_ROWS = 10_000

#: SQLSTATEs of a change log that predates positions (no ``XCHG_ASSIGN``, no ``POS``).
_NOT_UPGRADED = {"42883", "42703"}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class UnknownChangeLogTable(TechnicalError):
    """A change-log row names a table the feed was not configured for.

    Technical, not business: the row is not bad data but a deployment that
    captures more tables than this coexist knows; the feed stops on it rather
    than skip it, and resumes once coexist is configured for the table.
    """


class ChangeLogNotUpgraded(TechnicalError):
    """The PostgreSQL change log was installed by an older coexist (no positions yet).

    Technical: nothing is wrong with the changes; ``coexist legacy init`` upgrades
    the change log in place (idempotent, checkpoints stay valid) and the feed
    resumes.
    """


class LegacyChangeFeed:
    """``ChangeFeed`` over the legacy ``CHGLOG`` table (SQLite or PostgreSQL)."""

    def __init__(
        self,
        engine: Engine,
        tables: Iterable[CapturedTable],
        key_decoders: Mapping[str, KeyDecoder],
    ) -> None:
        """``key_decoders`` maps each domain to its legacy-key -> canonical-key function."""
        self.engine = engine
        self._tables = {t.table: t for t in tables}
        self._decoders = dict(key_decoders)
        missing = {t.domain for t in self._tables.values()} - set(self._decoders)
        if missing:
            raise ValueError(f"no key decoder for domains {sorted(missing)}")

    def read(self, after: int, limit: int) -> list[Change]:
        """Up to ``limit`` changes with ``cursor > after``, in cursor order."""
        if limit <= 0:
            return []
        changes: list[Change] = []
        # One row more than asked: coalescing can merge rows, and the extra row
        # tells whether the last change of the batch is complete.  A change cut
        # off at the end of the batch is read again next time (the checkpoint
        # stops before its rows), so a batch never ends in half a change.
        page = limit + 1
        sql = _READ_SQL[self.engine.dialect.name]
        if self.engine.dialect.name == "postgresql":
            self.assign(max(page, ASSIGN_ROWS))
        # The driver's own cursor: plain tuples, no per-row result processing
        # (a third of the cost of a read otherwise).  Returning the connection
        # to the pool rolls back whatever read transaction the driver opened.
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            while True:
                cursor.execute(sql, (after, page))
                rows = cursor.fetchall()
                if not rows:
                    break
                self._append(changes, rows)
                after = rows[-1][0]
                if len(changes) > limit or len(rows) < page:
                    break
            cursor.close()
        finally:
            raw.close()
        return changes[:limit]

    def iter_changes(self, after: int, batch_size: int = 1000) -> Iterator[list[Change]]:
        """Batches of changes after ``after`` until the log is exhausted (no checkpoint)."""
        while True:
            batch = self.read(after, batch_size)
            if not batch:
                return
            yield batch
            after = batch[-1].cursor

    def assign(self, max_rows: int = ASSIGN_ROWS) -> int:
        """Number up to ``max_rows`` committed rows that have no position yet (PostgreSQL;
        SQLite's rows are numbered as they are written).  Returns how many it numbered.

        One statement in autocommit, so that a process paused in it holds the
        numbering lock no longer than the statement runs.
        """
        if self.engine.dialect.name != "postgresql":
            return 0
        try:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                return int(conn.exec_driver_sql('SELECT "XCHG_ASSIGN"(%s)',
                                                (max_rows,)).scalar_one())
        except DBAPIError as exc:
            _raise_if_not_upgraded(exc.orig)
            raise

    def prune(self, upto: int) -> int:
        """Delete change-log rows with a cursor ``<= upto``; returns how many.

        Pass the lowest checkpoint of every consumer of the feed.  Cursors are
        never reused after a prune (AUTOINCREMENT on SQLite, the high-water mark
        of positions on PostgreSQL), so they stay strictly increasing.
        """
        column = CHGLOG.c.POS if self.engine.dialect.name == "postgresql" else CHGLOG.c.SEQ
        with self.engine.begin() as conn:
            return conn.execute(CHGLOG.delete().where(upto >= column)).rowcount

    def last_cursor(self) -> int:
        """The cursor of the last committed change (0 when there is none).

        On PostgreSQL every committed row is numbered first, so the result is a
        cursor that every change committed before the call is at or below.
        """
        if self.engine.dialect.name == "postgresql":
            while self.assign(ASSIGN_ROWS) == ASSIGN_ROWS:
                pass
            with self.engine.connect() as conn:
                return int(conn.exec_driver_sql('SELECT "LASTPOS" FROM "XCOEXPOS"').scalar() or 0)
        with self.engine.connect() as conn:
            return int(conn.execute(select(CHGLOG.c.SEQ).order_by(CHGLOG.c.SEQ.desc())
                                    .limit(1)).scalar() or 0)

    def _append(self, out: list[Change], rows) -> None:
        """Turn change-log rows into changes at the end of ``out``, coalescing."""
        tables, decoders = self._tables, self._decoders
        keys: dict[tuple[str, str], tuple[str, str, bool]] = {}
        last = out[-1] if out else None
        prev = (last.domain, last.key, last.writer) if last else None
        last_ms, last_at = None, _EPOCH
        for seq, tabname, raw_key, op, ts_ms, user in rows:
            known = keys.get((tabname, raw_key))
            if known is None:
                spec = tables.get(tabname)
                if spec is None:
                    raise UnknownChangeLogTable(
                        f"CHGLOG cursor {seq}: table {tabname!r} is not captured by this feed "
                        f"(known: {', '.join(sorted(tables))})"
                    )
                try:
                    key = decoders[spec.domain](raw_key)
                except TranslationError:
                    # A key typed by hand that no canonical key maps to (CUSTNO
                    # "ABC"): passed on as it is, so that the consumer's read of
                    # it raises the TranslationError naming it (a business
                    # exception) instead of the row blocking the whole feed.
                    key = raw_key
                known = (spec.domain, key, spec.header is None)
                keys[(tabname, raw_key)] = known
            domain, key, is_header = known
            if ts_ms != last_ms:  # rows of one statement share their time
                last_ms = ts_ms
                last_at = datetime.fromtimestamp(ts_ms / 1000, UTC) if ts_ms is not None else _EPOCH
            # Only the deletion of a header deletes the record; a line's insert,
            # update or delete is a change of its header record.
            kind = "delete" if op == "D" and is_header else "upsert"
            change = Change(seq, domain, key, kind, user, last_at, seq)  # type: ignore[arg-type]
            ident = (domain, key, user)
            if ident == prev:
                out[-1] = change
            else:
                out.append(change)
                prev = ident


def _raise_if_not_upgraded(exc: BaseException) -> None:
    if getattr(exc, "sqlstate", None) in _NOT_UPGRADED:
        raise ChangeLogNotUpgraded(
            "the legacy change log was installed by an older coexist and has no commit-order "
            "positions: run `coexist legacy init` against the legacy database (upgrades it "
            f"in place, keeps checkpoints): {str(exc).splitlines()[0]}") from None

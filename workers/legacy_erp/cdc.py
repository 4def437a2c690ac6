"""Reading the legacy change log (``CHGLOG``) as a ``coexistence.ports.ChangeFeed``.

The feed yields ``Change`` entries in ``SEQ`` order after a cursor; the cursor
that was fully handled is kept as a durable checkpoint in coexist's *state*
database (``workers.checkpoints``), not in the legacy database, and advanced in
the same state transaction as the consumer's effects (see :func:`consume_batch`).
Reading is side-effect free, so a crash between a read and the commit of its
checkpoint simply re-reads the same changes; the effects of the first attempt
were rolled back with that checkpoint, so nothing is skipped or done twice.

Consecutive log rows for the same record by the same writer (an order header
and its lines rewritten in one go) are coalesced into one ``Change`` carrying
the last row's ``SEQ`` as cursor and version: the consumer reads the record's
current state anyway, and one change per record write is what it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime

from sqlalchemy import Engine, bindparam, select
from sqlalchemy.orm import Session

from bus.errors import TechnicalError
from coexistence.ports import Change, ChangeFeed
from workers import checkpoints
from workers.legacy_erp.capture import CHGLOG, CapturedTable

__all__ = ["KeyDecoder", "LegacyChangeFeed", "UnknownChangeLogTable", "consume_batch"]

#: Turns a legacy header key in its string form (key columns without padding,
#: joined by ``KEY_SEPARATOR``) into the canonical key of the record.
KeyDecoder = Callable[[str], str]

_READ = (
    select(CHGLOG.c.SEQ, CHGLOG.c.TABNAME, CHGLOG.c.CHGKEY, CHGLOG.c.OP, CHGLOG.c.CHGTS,
           CHGLOG.c.LCHGUSER)
    .where(bindparam("after") < CHGLOG.c.SEQ)
    .order_by(CHGLOG.c.SEQ)
    .limit(bindparam("limit"))
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class UnknownChangeLogTable(TechnicalError):
    """A change-log row names a table the feed was not configured for.

    Technical, not business: the row is not bad data but a deployment that
    captures more tables than this coexist knows; the feed stops on it rather
    than skip it, and resumes once coexist is configured for the table.
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
        with self.engine.connect() as conn:
            # Coalescing can turn ``limit`` rows into fewer changes: read on until
            # the batch is full or the log is exhausted, then cut the batch at
            # ``limit`` changes (the rows of a cut-off change are read again next
            # time, since the checkpoint stops before them).
            while len(changes) <= limit:
                rows = conn.execute(_READ, {"after": after, "limit": limit}).all()
                if not rows:
                    break
                changes = self._coalesce(changes, self._changes(rows))
                after = rows[-1][0]
                if len(rows) < limit:
                    break
        return changes[:limit]

    @staticmethod
    def _coalesce(head: list[Change], tail: list[Change]) -> list[Change]:
        if head and tail and (head[-1].domain, head[-1].key, head[-1].writer) == (
            tail[0].domain, tail[0].key, tail[0].writer
        ):
            return head[:-1] + tail
        return head + tail

    def iter_changes(self, after: int, batch_size: int = 1000) -> Iterator[list[Change]]:
        """Batches of changes after ``after`` until the log is exhausted (no checkpoint)."""
        while True:
            batch = self.read(after, batch_size)
            if not batch:
                return
            yield batch
            after = batch[-1].cursor

    def last_cursor(self) -> int:
        """The highest ``SEQ`` in the change log (0 when empty)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(CHGLOG.c.SEQ).order_by(CHGLOG.c.SEQ.desc())
                                    .limit(1)).scalar() or 0)

    def _changes(self, rows) -> list[Change]:
        out: list[Change] = []
        tables, decoders = self._tables, self._decoders
        key_cache: dict[tuple[str, str], tuple[str, str]] = {}
        prev: tuple[str, str, str] | None = None
        for seq, tabname, raw_key, op, ts_ms, user in rows:
            cached = key_cache.get((tabname, raw_key))
            if cached is None:
                spec = tables.get(tabname)
                if spec is None:
                    raise UnknownChangeLogTable(
                        f"CHGLOG SEQ {seq}: table {tabname!r} is not captured by this feed "
                        f"(known: {', '.join(sorted(tables))})"
                    )
                cached = (spec.domain, decoders[spec.domain](raw_key))
                key_cache[(tabname, raw_key)] = cached
            domain, key = cached
            # Only the deletion of a header deletes the record; a line's insert,
            # update or delete is a change of its header record.
            kind = "delete" if op == "D" and tables[tabname].header is None else "upsert"
            at = datetime.fromtimestamp(ts_ms / 1000, UTC) if ts_ms is not None else _EPOCH
            ident = (domain, key, user)
            change = Change(seq, domain, key, kind, user, at, seq)  # type: ignore[arg-type]
            if ident == prev:
                out[-1] = change
            else:
                out.append(change)
                prev = ident
        return out


def consume_batch(
    feed: ChangeFeed,
    state_engine: Engine,
    feed_name: str,
    handle: Callable[[Session, list[Change]], None],
    *,
    limit: int = 500,
) -> int:
    """Handle one batch of changes after ``feed_name``'s durable checkpoint.

    ``handle(session, changes)`` applies the changes' effects in ``session``
    (coexist's state database); the checkpoint is advanced in the same
    transaction and both commit together.  If anything fails before the commit
    both roll back and the next call yields the same changes again.  Returns the
    number of changes handled (0: the feed is drained).
    """
    after = checkpoints.get(state_engine, feed_name)
    changes = feed.read(after, limit)
    if not changes:
        return 0
    with Session(state_engine) as session:
        handle(session, changes)
        # ``expected`` makes a concurrent consumer that handled the same batch
        # first turn this transaction's duplicate effects into a rollback.
        checkpoints.advance(session, feed_name, changes[-1].cursor, expected=after)
        session.commit()
    return len(changes)

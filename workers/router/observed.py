"""What coexist last observed of each ERP record: who made its state, and how it was judged.

``observed_revision`` keeps, per (system, domain, key), the last state coexist saw
of the record in that ERP:

* capture upserts it in its batch transaction for every change it decides
  (``note`` + ``flush``), classified ``echo`` (coexist's own write), ``sor_edit``
  (a person's change in the record's SoR), ``channel`` (a channel command's
  write in the SoR) or ``stray`` (a person's change in the system that was not
  the SoR);
* the writers upsert it after an applied write (``record_write``), classified
  ``coexist``, with the revision the target answered, and in the same
  transaction link the ids of a record they created (the xref).

``workers.router.handlers.apply_write`` reads it when the target's current state
was made by someone else than coexist and the target is the SoR now: only an
edit that capture observed as a ``stray`` may be overwritten; anything else (an
SoR edit, a channel write, an edit not captured yet) is a ``SwitchConflict``.
The target's current state and the observation are matched on (writer, time of
the change): both ERPs' change feeds and their current-state reads carry the
same change time (legacy ``CHGTS``, cloud ``lastModifiedDateTime``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field

from coexistence.ports import Applied, Change, Current
from coexistence.router import routed_version
from workers.bulk_sql import executemany
from workers.db import StateTable

ECHO = "echo"
SOR_EDIT = "sor_edit"
STRAY = "stray"
CHANNEL = "channel"
COEXIST = "coexist"
CLASSIFICATIONS = (ECHO, SOR_EDIT, STRAY, CHANNEL, COEXIST)


class ObservedRevision(StateTable, table=True):
    __tablename__ = "observed_revision"

    system: str = Field(primary_key=True, max_length=16)
    domain: str = Field(primary_key=True, max_length=32)
    key: str = Field(primary_key=True, max_length=256)
    #: The system's own identity of the state (feed version / ETag / change-log SEQ).
    revision: str = Field(max_length=128)
    writer: str = Field(max_length=64)
    classification: str = Field(max_length=16)
    #: Flag version of the domain when coexist judged the change.
    flag_version: int = Field(sa_type=BigInteger)
    #: The change's routed version (flag version << 40 | its source version), or the
    #: version of coexist's write: orders an SoR edit against a delayed write.
    version: int = Field(default=0, sa_type=BigInteger)
    #: When the change was made in the system (its change time), UTC.
    changed_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    #: When coexist observed it.
    at: datetime = Field(default_factory=lambda: datetime.now(UTC),
                         sa_type=DateTime(timezone=True))


_T = ObservedRevision.__table__


@dataclass(frozen=True, slots=True)
class Observation:
    system: str
    domain: str
    key: str
    revision: str
    writer: str
    classification: str
    flag_version: int
    changed_at: datetime | None
    version: int = 0

    def made(self, current: Current) -> bool:
        """Is ``current`` the state this observation saw (same writer, same change time)?"""
        if current.writer != self.writer or current.at is None or self.changed_at is None:
            return False
        return _utc(current.at) == _utc(self.changed_at)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _upsert(conn, rows: list[dict]) -> None:
    if not rows:
        return
    # One statement per dialect, run at the driver level (workers.bulk_sql): a batch's
    # observations without SQLAlchemy's per-row parameter work.
    executemany(conn, _upsert_statement(conn.dialect.name), rows)


@functools.cache
def _upsert_statement(dialect: str):
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    base = insert(_T)
    ex = base.excluded
    return base.on_conflict_do_update(
        index_elements=[_T.c.system, _T.c.domain, _T.c.key],
        set_={c: ex[c] for c in ("revision", "writer", "classification", "flag_version",
                                 "version", "changed_at", "at")},
    )


def _row(system: str, domain: str, key: str, revision: str, writer: str,
         classification: str, flag_version: int, changed_at: datetime | None,
         version: int) -> dict:
    if classification not in CLASSIFICATIONS:  # pragma: no cover - a programming error
        raise ValueError(f"classification {classification!r} not in {CLASSIFICATIONS}")
    return {"system": system, "domain": domain, "key": key, "revision": revision[:128],
            "writer": writer[:64], "classification": classification,
            "flag_version": int(flag_version), "version": int(version),
            "changed_at": _utc(changed_at) if changed_at is not None else None,
            "at": datetime.now(UTC)}


def get_observed(conn, system: str, domain: str, key: str) -> Observation | None:
    row = conn.execute(
        select(_T).where(_T.c.system == system, _T.c.domain == domain, _T.c.key == key)
    ).first()
    if row is None:
        return None
    return Observation(row.system, row.domain, row.key, row.revision, row.writer,
                       row.classification, int(row.flag_version), row.changed_at,
                       int(row.version))


def record_write(engine, system: str, domain: str, key: str, result: Applied, writer: str,
                 flag_version: int, *, created: bool, deleted: bool = False,
                 legacy_key: str | None = None, cloud_id: str | None = None) -> None:
    """After an applied write: the new observation and, for a record the writer created,
    its xref link (canonical key, legacy key, cloud id), in one state transaction.  A
    routed delete removes the link: the record is gone from both ERPs, and an entry left
    behind would be an orphan that reconciliation counts as drift."""
    from workers.xref_sql import link_in, unlink_in

    with engine.begin() as conn:
        _upsert(conn, [_row(system, domain, key, result.revision, writer, COEXIST,
                            flag_version, None, result.version)])
        if deleted:
            unlink_in(conn, domain, key)
        elif created and (legacy_key or cloud_id):
            link_in(conn, domain, key, legacy_key=legacy_key, cloud_id=cloud_id)


@dataclass(frozen=True, slots=True)
class Written:
    """One applied write of a batch, for :func:`record_writes`."""

    system: str
    domain: str
    key: str
    result: Applied
    writer: str
    flag_version: int
    created: bool = False
    legacy_key: str | None = None
    cloud_id: str | None = None
    deleted: bool = False


def record_writes(engine, writes: list[Written]) -> None:
    """:func:`record_write` for a whole batch of writes, in ONE state transaction (a routed
    delete removes the record's xref link there too).  The created records' links go in
    bulk per domain (``link_many_in``: one read, one insert), in write order around the
    deletes."""
    from workers.xref_sql import Link, link_many_in, unlink_in

    if not writes:
        return
    with engine.begin() as conn:
        _upsert(conn, [_row(w.system, w.domain, w.key, w.result.revision, w.writer, COEXIST,
                            w.flag_version, None, w.result.version) for w in writes])
        links: dict[str, list[Link]] = {}

        def flush() -> None:
            for domain, batch in links.items():
                link_many_in(conn, domain, batch)
            links.clear()

        for w in writes:
            if w.deleted:
                flush()
                unlink_in(conn, w.domain, w.key)
            elif w.created and (w.legacy_key or w.cloud_id):
                links.setdefault(w.domain, []).append(
                    Link(w.key, legacy_key=w.legacy_key, cloud_id=w.cloud_id))
        flush()


_NOTED = "coexist.observed"


def classify(change: Change, action: str) -> str:
    """The classification of a decided change (``coexistence.router.Action`` value)."""
    from workers.router.queues import COMMAND_WRITER_ORIGIN

    if action == "echo":
        return ECHO
    if action == "stray":
        return STRAY
    return CHANNEL if change.writer in COMMAND_WRITER_ORIGIN else SOR_EDIT


def note(conn, system: str, change: Change, decision) -> None:
    """Capture's one call per decided change: kept with the batch's transaction and
    written by :func:`flush` just before its commit (one statement per batch)."""
    txn = conn.get_transaction()
    held = conn.info.get(_NOTED)
    if held is None or held[0] is not txn:
        # A batch rolled back on this connection leaves nothing behind.
        held = conn.info[_NOTED] = (txn, {})
    held[1][(change.domain, change.key)] = _row(
        system, change.domain, change.key, str(change.version), change.writer,
        classify(change, str(decision.action)), decision.flag_version, change.at,
        routed_version(decision.flag_version, change.version))


def flush(conn) -> None:
    """Write the batch's observations (in its transaction, with its outbox rows)."""
    held = conn.info.pop(_NOTED, None)
    if held is not None and held[0] is conn.get_transaction():
        _upsert(conn, list(held[1].values()))

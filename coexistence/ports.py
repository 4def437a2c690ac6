"""Ports the domain needs from the two ERPs.  Implementations live in ``workers``.

Both ERPs answer the same small protocol in canonical terms, so the router and
reconciliation never see a legacy row or a cloud JSON document.

Versions: every write carries the ``source_version`` of the change that caused
it.  A target applies a write only when that version is newer than the last
one it applied for the record (kept by the target, in the same transaction or
compare-and-set as the write), so duplicates and reordered deliveries never
regress state.  The router builds ``source_version`` so that it increases
across a switch of the system of record (see ``coexistence.router``).

Revisions: coexist's own stamp says nothing of a person's edit, so a target
also tells who made its current state and which revision it is
(``get_current``), and a write may be conditioned on that revision
(``if_revision``): when the record changed since it was read the write is not
applied and the answer is ``Changed`` with what the target holds now (the
caller re-reads and decides again).  See ``workers.router.handlers.apply_write``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from coexistence.canonical import CanonicalRecord

#: The change user / client id that coexist writes under in both ERPs, so that
#: change capture can tell coexist's own writes (echoes) from people's writes.
COEXIST_WRITER = "COEXIST"


#: ``if_revision`` value meaning "the record must not exist (nor ever have existed)".
ABSENT = ""


@dataclass(frozen=True, slots=True)
class Current:
    """What a target holds of one record: who made its current state, and its revision.

    ``revision`` is the target's own identity of that state (the cloud's ETag, the
    legacy change-log ``SEQ`` of the record's last change, the fake's counter);
    ``writer`` made it (``COEXIST_WRITER`` for coexist's routed writes, a person's
    user / client id, a channel's command writer); ``version`` is the last source
    version coexist applied (0 = none); ``exists`` is False for a tombstone.
    """

    revision: str
    writer: str
    version: int
    exists: bool = True
    at: datetime | None = None
    #: The target's own id of the record (cloud UUID), when it has one.
    target_id: str | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """The write changed the target; ``version`` is now the record's applied version."""

    domain: str
    key: str
    version: int
    #: The record's revision after the write, when the target answered it ("" = unknown).
    #: Not part of equality: the same write applied is the same result, whatever its ETag.
    revision: str = field(default="", compare=False)
    #: The target's own id of the record (cloud UUID), when known.
    target_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Stale:
    """The write was refused because the target already holds ``current`` >= ``incoming``."""

    domain: str
    key: str
    incoming: int
    current: int


@dataclass(frozen=True, slots=True)
class Changed:
    """Refused: the record is no longer at the revision the write was conditioned on."""

    domain: str
    key: str
    expected: str
    #: What the target holds now (``None``: nothing, not even a tombstone).
    current: Current | None


WriteResult = Applied | Stale | Changed


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of an ERP's change feed (legacy change-log row, cloud change-feed entry)."""

    #: Position in the feed; strictly increasing.  Checkpoints store it.
    cursor: int
    domain: str
    key: str
    op: Literal["upsert", "delete"]
    #: Who wrote it: a person's user id, or ``COEXIST_WRITER`` for coexist's own writes.
    writer: str
    at: datetime
    #: The record's version after this change in its own system (its source version).
    version: int


class Erp(Protocol):
    """One ERP seen in canonical terms (legacy SQL or cloud HTTP)."""

    #: ``"legacy"`` or ``"cloud"``.
    system: str

    def get(self, domain: str, key: str) -> CanonicalRecord | None:
        """The record as the ERP holds it now, or ``None``."""
        ...

    def stream(self, domain: str) -> Iterator[CanonicalRecord]:
        """Every record of ``domain``, sorted by canonical key, in bounded memory."""
        ...

    def get_current(self, domain: str, key: str) -> Current | None:
        """Who made the record's current state and its revision (tombstones included),
        or ``None`` when the target never held it."""
        ...

    def upsert(
        self,
        record: CanonicalRecord,
        *,
        source_version: int,
        idempotency_key: str,
        writer: str = COEXIST_WRITER,
        repair: bool = False,
        if_revision: str | None = None,
    ) -> WriteResult:
        """Create or replace ``record`` if ``source_version`` is newer than the applied one.

        ``writer`` is the change user the ERP records (its change feed names it):
        ``COEXIST_WRITER`` for routed writes (echoes the router suppresses), a
        channel's command writer for channel commands written into the SoR.
        ``repair`` also applies an EQUAL version (never an older one): the router
        re-sends the SoR's state over a stray write under the last routed version.
        ``if_revision`` (a ``Current.revision``, or ``ABSENT``): apply only if the
        record is still at that revision, checked atomically with the write, else
        answer ``Changed``.
        """
        ...

    def delete(
        self,
        domain: str,
        key: str,
        *,
        source_version: int,
        idempotency_key: str,
        writer: str = COEXIST_WRITER,
        repair: bool = False,
        if_revision: str | None = None,
    ) -> WriteResult:
        """Delete the record if ``source_version`` is newer than the applied one
        (or equal, for a ``repair``), and, with ``if_revision``, still at that revision."""
        ...


@dataclass(frozen=True, slots=True)
class WriteOp:
    """One conditioned write of a batch (``BatchErp.write_many``).

    ``record`` ``None`` is a delete.  ``current`` is what the caller read of the target
    (``read_many``) and conditions the write on: its revision (``If-Match`` on the cloud,
    the re-check under the row lock on legacy), ``None`` meaning the record must be
    absent.  The write applies only if still at that revision and ``applies``
    (``coexistence.writes``) says its version is newer; else ``Changed`` / ``Stale``.
    """

    domain: str
    key: str
    record: CanonicalRecord | None
    source_version: int
    idempotency_key: str
    current: Current | None
    writer: str = COEXIST_WRITER
    repair: bool = False


@runtime_checkable
class BatchErp(Protocol):
    """An ERP that reads and writes many records per round trip (the batched writers)."""

    def read_many(self, domain: str, keys: Sequence[str]
                  ) -> dict[str, tuple[CanonicalRecord | None, Current | None]]:
        """For each key: the record (``None`` if absent or deleted) and what ``get_current``
        answers, from ONE tombstone-aware read per record."""
        ...

    def write_many(self, ops: Sequence[WriteOp]) -> list[WriteResult | Exception]:
        """Each op's own result in op order: ``Applied``, ``Stale``, ``Changed``, or the
        business error the target answered for that op alone (the others still apply).
        A technical failure raises for the whole batch (nothing is known of it)."""
        ...


@runtime_checkable
class NumberingErp(Protocol):
    """An ERP that gives a new customer its number ("create and assign a number"): how a
    customer onboarded from the CRM is created in its SoR."""

    def create_numbered(self, record: CanonicalRecord, *, idempotency_key: str,
                        writer: str = COEXIST_WRITER) -> str:
        """Create ``record`` (a customer; its key is ignored) under the next number of the
        ERP's own sequence, taken in the transaction of the insert, written as ``writer``;
        returns the new canonical key.  Idempotent on ``idempotency_key``: a create asked
        for again (a redelivery, a retry after a crash) returns the customer the first one
        made and creates nothing."""
        ...


class ChangeFeed(Protocol):
    """An ERP's change capture, read in cursor order after a checkpoint."""

    def read(self, after: int, limit: int) -> list[Change]:
        """Up to ``limit`` changes with ``cursor > after``, in cursor order."""
        ...


# ------------------------------------------------------------------ optional capabilities
# Small protocols for what some adapters can do and others cannot; callers test them with
# ``isinstance`` instead of probing attribute names.


@runtime_checkable
class BulkReader(Protocol):
    """An ERP that reads many records by key in one round trip."""

    def get_many(self, domain: str, keys: Iterable[str]) -> dict[str, CanonicalRecord]:
        """The current records of ``keys`` (a key with no record is absent)."""
        ...


@runtime_checkable
class FeedHead(Protocol):
    """A change feed that can say its newest cursor without reading the pages up to it."""

    def last_cursor(self) -> int:
        ...


@runtime_checkable
class Closeable(Protocol):
    """An adapter holding connections that its owner closes."""

    def close(self) -> None:
        ...

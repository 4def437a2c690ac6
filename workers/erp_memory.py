"""An ERP held in memory: the fake behind ``coexistence.ports.Erp`` and ``ChangeFeed``.

It is the reference the contract tests hold the real adapters to (legacy SQL,
cloud HTTP), so it implements the ports' rules exactly and nothing more:

* a write applies only when its ``source_version`` is newer than the record's
  applied version; the applied version survives a delete (a tombstone), so a
  late, older upsert never resurrects a deleted record;
* the same ``idempotency_key`` with the same write returns the first result and
  changes nothing; with a different write it is a ``BusinessError``;
* every change is appended to a feed with a strictly increasing cursor and the
  writer's name: ``COEXIST_WRITER`` for port writes, the person's user id for
  ``person_upsert`` / ``person_delete`` (how tests simulate someone typing into
  the ERP);
* a person's write does not touch the applied version: only coexist's writes
  carry a source version;
* every change bumps the record's revision and remembers its writer
  (``get_current``); a write with ``if_revision`` applies only at that revision,
  else answers ``Changed`` (not remembered under its idempotency key, so the
  caller's re-decided retry is a new attempt).

Thread-safe (one lock), so a fake can stand in for an ERP shared by threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from bus.errors import BusinessError
from coexistence.canonical import DOMAINS, CanonicalRecord, model_for
from coexistence.ports import (
    ABSENT,
    COEXIST_WRITER,
    Applied,
    Change,
    Changed,
    Current,
    Stale,
    WriteOp,
    WriteResult,
)
from coexistence.writes import applies

__all__ = ["InMemoryErp", "IdempotencyConflict"]


class IdempotencyConflict(BusinessError):
    """An idempotency key reused for a different write."""


@dataclass
class _Slot:
    """What the ERP knows of one record: its data (None once deleted) and versions."""

    record: CanonicalRecord | None = None
    #: Last source version coexist applied (0 = never written by coexist).
    applied: int = 0
    #: The record's own revision, bumped by every write (coexist's or a person's).
    revision: int = 0
    #: Who made the current state, and when.
    writer: str = ""
    at: datetime | None = None

    def current(self) -> Current | None:
        if self.revision == 0 and self.applied == 0:
            return None
        return Current(str(self.revision), self.writer or COEXIST_WRITER, self.applied,
                       self.record is not None, self.at)


class InMemoryErp:
    """``Erp`` + ``ChangeFeed`` in memory.  ``system`` names it in results and logs."""

    def __init__(self, system: str = "memory", clock: Callable[[], datetime] | None = None):
        self.system = system
        self._clock = clock or (lambda: datetime.now(UTC))
        self._slots: dict[str, dict[str, _Slot]] = {domain: {} for domain in DOMAINS}
        self._changes: list[Change] = []
        self._idempotency: dict[str, tuple[tuple, WriteResult]] = {}
        self._numbered: dict[str, str] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ Erp

    def get(self, domain: str, key: str) -> CanonicalRecord | None:
        with self._lock:
            slot = self._domain(domain).get(key)
            return slot.record if slot else None

    def stream(self, domain: str) -> Iterator[CanonicalRecord]:
        # A snapshot of the keys keeps iteration safe against concurrent writes;
        # records are looked up one by one so memory holds keys, not copies.
        with self._lock:
            keys = sorted(k for k, s in self._domain(domain).items() if s.record is not None)
        for key in keys:
            record = self.get(domain, key)
            if record is not None:
                yield record

    def get_current(self, domain: str, key: str) -> Current | None:
        with self._lock:
            slot = self._domain(domain).get(key)
            return slot.current() if slot else None

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
        domain = record.domain
        model_for(domain)  # unknown domain -> TranslationError (a business error)
        fingerprint = ("upsert", domain, record.key, source_version, record.model_dump_json(),
                       repair)
        with self._lock:
            replay = self._replay(idempotency_key, fingerprint)
            if replay is not None:
                return replay
            changed = self._changed(domain, record.key, if_revision)
            if changed is not None:
                return changed
            slot = self._domain(domain).setdefault(record.key, _Slot())
            newer = applies(source_version, slot.applied, repair)
            if not newer:
                result: WriteResult = Stale(domain, record.key, source_version, slot.applied)
            else:
                slot.record = record
                slot.applied = source_version
                self._append(domain, record.key, "upsert", writer, slot)
                result = Applied(domain, record.key, source_version, str(slot.revision))
            self._idempotency[idempotency_key] = (fingerprint, result)
            return result

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
        model_for(domain)
        fingerprint = ("delete", domain, key, source_version, repair)
        with self._lock:
            replay = self._replay(idempotency_key, fingerprint)
            if replay is not None:
                return replay
            changed = self._changed(domain, key, if_revision)
            if changed is not None:
                return changed
            slot = self._domain(domain).setdefault(key, _Slot())
            newer = applies(source_version, slot.applied, repair)
            if not newer:
                result: WriteResult = Stale(domain, key, source_version, slot.applied)
            else:
                existed = slot.record is not None
                slot.record = None
                slot.applied = source_version
                if existed:
                    self._append(domain, key, "delete", writer, slot)
                result = Applied(domain, key, source_version, str(slot.revision))
            self._idempotency[idempotency_key] = (fingerprint, result)
            return result

    # ------------------------------------------------------------------ BatchErp

    def read_many(self, domain: str, keys: Sequence[str]
                  ) -> dict[str, tuple[CanonicalRecord | None, Current | None]]:
        with self._lock:
            slots = self._domain(domain)
            out: dict[str, tuple[CanonicalRecord | None, Current | None]] = {}
            for key in keys:
                slot = slots.get(key)
                out[key] = (slot.record, slot.current()) if slot else (None, None)
            return out

    def write_many(self, ops: Sequence[WriteOp]) -> list[WriteResult | Exception]:
        results: list[WriteResult | Exception] = []
        for op in ops:
            condition = op.current.revision if op.current is not None else ABSENT
            try:
                if op.record is None:
                    results.append(self.delete(
                        op.domain, op.key, source_version=op.source_version,
                        idempotency_key=op.idempotency_key, writer=op.writer,
                        repair=op.repair, if_revision=condition))
                else:
                    results.append(self.upsert(
                        op.record, source_version=op.source_version,
                        idempotency_key=op.idempotency_key, writer=op.writer,
                        repair=op.repair, if_revision=condition))
            except BusinessError as exc:
                results.append(exc)
        return results

    # ------------------------------------------------------------------ ChangeFeed

    def read(self, after: int, limit: int) -> list[Change]:
        with self._lock:
            # Cursors are 1-based list positions, so ``after`` is also a list index.
            start = max(after, 0)
            return self._changes[start : start + max(limit, 0)]

    # ------------------------------------------------------------------ people

    def create_numbered(self, record: CanonicalRecord, *, idempotency_key: str,
                        writer: str = COEXIST_WRITER) -> str:
        """``NumberingErp``: the next number above every numeric key held (from 100000),
        idempotent on ``idempotency_key`` (the first create's key)."""
        with self._lock:
            earlier = self._numbered.get(idempotency_key)
            if earlier is not None:
                return earlier
            held = [int(k) for k in self._domain(record.domain) if k.isdigit()]
            key = str(max([99_999, *held]) + 1)
            slot = self._domain(record.domain).setdefault(key, _Slot())
            slot.record = record.model_copy(update={"key": key})
            self._append(record.domain, key, "upsert", writer, slot)
            self._numbered[idempotency_key] = key
            return key

    def person_upsert(self, record: CanonicalRecord, writer: str) -> None:
        """Someone typed ``record`` into the ERP by hand (no source version)."""
        with self._lock:
            slot = self._domain(record.domain).setdefault(record.key, _Slot())
            slot.record = record
            self._append(record.domain, record.key, "upsert", writer, slot)

    def person_delete(self, domain: str, key: str, writer: str) -> None:
        """Someone deleted the record by hand."""
        with self._lock:
            slot = self._domain(domain).get(key)
            if slot is None or slot.record is None:
                return
            slot.record = None
            self._append(domain, key, "delete", writer, slot)

    def applied_version(self, domain: str, key: str) -> int:
        """The last source version coexist applied to the record (0 if none)."""
        with self._lock:
            slot = self._domain(domain).get(key)
            return slot.applied if slot else 0

    # ------------------------------------------------------------------ internals

    def _domain(self, domain: str) -> dict[str, _Slot]:
        try:
            return self._slots[domain]
        except KeyError:
            model_for(domain)  # raises the domain's TranslationError
            raise

    def _changed(self, domain: str, key: str, if_revision: str | None) -> Changed | None:
        if if_revision is None:
            return None
        slot = self._domain(domain).get(key)
        current = slot.current() if slot else None
        held = current.revision if current is not None else ABSENT
        return None if held == if_revision else Changed(domain, key, if_revision, current)

    def _replay(self, idempotency_key: str, fingerprint: tuple) -> WriteResult | None:
        seen = self._idempotency.get(idempotency_key)
        if seen is None:
            return None
        if seen[0] != fingerprint:
            raise IdempotencyConflict(
                f"idempotency key {idempotency_key!r} was already used for another write"
            )
        return seen[1]

    def _append(self, domain: str, key: str, op: str, writer: str, slot: _Slot) -> None:
        slot.revision += 1
        slot.writer, slot.at = writer, self._clock()
        self._changes.append(
            Change(
                cursor=len(self._changes) + 1,
                domain=domain,
                key=key,
                op=op,  # type: ignore[arg-type]
                writer=writer,
                at=slot.at,
                version=slot.revision,
            )
        )

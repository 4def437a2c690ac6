"""The exception store: every message the bus could not deliver, kept in SQL for good.

Business failures (never retried), technical failures that exhausted their
retries, dead letters drained from RabbitMQ's ``.XQ`` queues and undecodable
input all end here, with what is needed to understand them (class, error, call
site, attempts, first and last failure, the envelope or the raw bytes) and to
replay them (the dramatiq message dict).  Records never expire.

Records are grouped by (error type, call site), the usual unit of a fix: one
bug, one deploy, one ``replay --group``.  A group is named by a short stable
hash shown by ``coexist dlq list --group``.

Archive and replay are operator changes: each is audited with actor and reason
(``exception_action``), and an archived record is never replayed.  Replay
re-enqueues through the normal path with retry counters reset, and only
then marks the record ``replayed``: a crash in between replays it twice, which
is harmless because every consumer is idempotent in effect (the inbox, version
checks, idempotency keys: docs/architecture.md, "What makes each consumer
idempotent").
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field

from bus.db import BusTable
from bus.envelope import Envelope

FAILURE_CLASSES = ("business", "technical", "dead_letter", "undecodable")
STATUSES = ("open", "replayed", "archived")

#: Longest error message kept (a stack of nested causes can be long).
MAX_ERROR_CHARS = 4000

RECORDED = Counter(
    "coexist_bus_exceptions_total",
    "Messages recorded in the exception store, by failure class",
    ["failure_class"],
)

#: Options dramatiq, brokers and ``bus.retry`` add while a message travels; a replay starts
#: clean (its retry budget too: the record keeps the history).
_TRANSIENT_OPTIONS = ("traceback", "eta", "redis_message_id", "requeue_timestamps",
                      "dead_message", "retries", "failures", "retry_history")


class ExceptionRecord(BusTable, table=True):
    """One failed message.  ``(message_id, actor_name)`` is recorded once and updated."""

    __tablename__ = "exception_record"
    __table_args__ = (UniqueConstraint("message_id", "actor_name",
                                       name="uq_exception_record_message"),)

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                         autoincrement=True),
    )
    message_id: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    queue_name: str = Field(sa_column=Column(String(200), nullable=False))
    actor_name: str = Field(sa_column=Column(String(200), nullable=False))
    domain: str | None = Field(default=None,
                               sa_column=Column(String(64), nullable=True, index=True))
    key: str | None = Field(default=None, sa_column=Column(String(256), nullable=True))
    #: From the envelope, indexed for ``coexist trace``.
    correlation_id: str | None = Field(default=None,
                                       sa_column=Column(String(128), nullable=True, index=True))
    failure_class: str = Field(sa_column=Column(String(16), nullable=False))
    error_type: str = Field(sa_column=Column(String(200), nullable=False))
    error_message: str = Field(sa_column=Column(Text, nullable=False))
    call_site: str = Field(sa_column=Column(String(400), nullable=False))
    #: Stable short hash of (error_type, call_site).
    group_key: str = Field(sa_column=Column(String(16), nullable=False, index=True))
    attempts: int = Field(sa_column=Column(Integer, nullable=False))
    first_failed_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    last_failed_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    envelope: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    raw: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    status: str = Field(sa_column=Column(String(16), nullable=False, index=True))
    status_changed_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    replay_count: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))

    def envelope_dict(self) -> dict[str, Any] | None:
        return json.loads(self.envelope) if self.envelope else None

    def message_dict(self) -> dict[str, Any] | None:
        return json.loads(self.message) if self.message else None


_T = ExceptionRecord.__table__


def _stored_id(rec: ExceptionRecord) -> int:
    """The id of a record read back from the table (its primary key, so never None)."""
    if rec.id is None:
        raise ValueError("an exception record that was never stored has no id")
    return rec.id


class ExceptionAction(BusTable, table=True):
    """Who archived or replayed a record, when and why (operator changes are audited)."""

    __tablename__ = "exception_action"

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                         autoincrement=True),
    )
    record_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    #: ``archive`` or ``replay``.
    action: str = Field(sa_column=Column(String(16), nullable=False))
    actor: str = Field(sa_column=Column(String(200), nullable=False))
    reason: str = Field(sa_column=Column(Text, nullable=False))
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


_A = ExceptionAction.__table__


@dataclass(frozen=True)
class GroupCount:
    group: str
    error_type: str
    call_site: str
    count: int
    domains: tuple[str, ...]
    failure_classes: tuple[str, ...]
    last_failed_at: datetime
    first_failed_at: datetime | None = None


@dataclass
class ReplayResult:
    """What a replay did (or, with ``dry_run``, would do)."""

    replayed: list[int] = field(default_factory=list)
    #: (record id, why it was not replayed)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    #: (record id, the enqueue error); these stay as they were
    failed: list[tuple[int, str]] = field(default_factory=list)
    dry_run: bool = False


def group_key(error_type: str, call_site: str) -> str:
    """The short, stable name of the group (error type, call site)."""
    return hashlib.sha1(f"{error_type}\0{call_site}".encode()).hexdigest()[:10]


_LIBRARY_PATHS = tuple(
    {p for p in (sysconfig.get_paths().get("stdlib"), sysconfig.get_paths().get("purelib"),
                 sysconfig.get_paths().get("platlib")) if p}
)


def call_site(exc: BaseException) -> str:
    """``module.function`` of the innermost frame of ``exc`` in our code (not a library).

    Line numbers are left out on purpose: they move with every deploy and would
    split one cause into many groups.
    """
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    chosen = None
    for frame in frames:
        path = os.path.abspath(frame.filename)
        if not path.startswith(_LIBRARY_PATHS) and "site-packages" not in path:
            chosen = frame
    if chosen is None and frames:
        chosen = frames[-1]
    if chosen is None:
        return "<unknown>"
    return f"{_module_of(chosen.filename)}.{chosen.name}"


def _module_of(filename: str) -> str:
    path = os.path.abspath(filename)
    for name, module in list(sys.modules.items()):
        module_file = getattr(module, "__file__", None)
        if module_file and os.path.abspath(module_file) == path:
            return name
    return os.path.splitext(os.path.basename(path))[0]


class ExceptionStore:
    """Records, lists, groups, archives and replays failed messages."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self,
        *,
        failure_class: str,
        queue_name: str,
        actor_name: str,
        message_id: str | None,
        envelope: Envelope | dict[str, Any] | None,
        raw: bytes | None,
        message: dict[str, Any] | None,
        error_type: str,
        error_message: str,
        call_site: str,
        attempts: int,
        failed_at: datetime | None = None,
        domain: str | None = None,
        key: str | None = None,
    ) -> int:
        """Record a failure; returns the record id.

        The same ``(message_id, actor_name)`` recorded again (it failed again
        after a replay, or a drain saw it twice) updates the existing record:
        attempts, last failure, latest error, and reopens it.
        """
        if failure_class not in FAILURE_CLASSES:
            raise ValueError(f"failure_class must be one of {FAILURE_CLASSES}, "
                             f"got {failure_class!r}")
        now = failed_at or datetime.now(UTC)
        env = envelope.model_dump(mode="json") if isinstance(envelope, Envelope) else envelope
        correlation = None
        if env is not None:
            domain = domain or _str_or_none(env.get("domain"))
            key = key or _str_or_none(env.get("key"))
            correlation = _str_or_none(env.get("correlation_id"))
        values = {
            "queue_name": queue_name,
            "actor_name": actor_name,
            "domain": domain,
            "key": key,
            "correlation_id": correlation,
            "failure_class": failure_class,
            "error_type": error_type[:200],
            "error_message": error_message[:MAX_ERROR_CHARS],
            "call_site": call_site[:400],
            "group_key": group_key(error_type[:200], call_site[:400]),
            "attempts": attempts,
            "last_failed_at": now,
            "envelope": json.dumps(env, default=str) if env is not None else None,
            "raw": bytes(raw) if raw is not None else None,
            "message": json.dumps(message, default=str) if message is not None else None,
            "status": "open",
            "status_changed_at": now,
        }
        RECORDED.labels(failure_class=failure_class).inc()
        for _ in range(2):  # a concurrent first record of the same message: update it
            with self.engine.begin() as conn:
                if message_id is not None:
                    existing = conn.execute(
                        select(_T.c.id, _T.c.attempts, _T.c.status).where(
                            _T.c.message_id == message_id, _T.c.actor_name == actor_name)
                    ).first()
                    if existing is not None:
                        # A replay starts counting again: add its attempts to the earlier
                        # ones.  Otherwise it is the same run seen twice (a drain after
                        # the middleware): keep the larger count.
                        values["attempts"] = (existing.attempts + attempts
                                              if existing.status == "replayed"
                                              else max(attempts, existing.attempts))
                        conn.execute(update(_T).where(_T.c.id == existing.id).values(**values))
                        return existing.id
                try:
                    with conn.begin_nested():
                        result = conn.execute(_T.insert().values(
                            message_id=message_id, first_failed_at=now, replay_count=0,
                            **values))
                except IntegrityError:
                    continue
                inserted = result.inserted_primary_key
                if inserted is None:  # pragma: no cover - a single-row INSERT always has one
                    raise RuntimeError("the exception store's INSERT returned no id")
                return int(inserted[0])
        raise RuntimeError(f"could not record failure of message {message_id}")

    def get(self, record_id: int) -> ExceptionRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_T).where(_T.c.id == record_id)).first()
        return ExceptionRecord.model_validate(row._mapping) if row else None

    def list(
        self,
        status: str | None = "open",
        domain: str | None = None,
        group: str | None = None,
        limit: int | None = 100,
        ids: Iterable[int] | None = None,
        correlation_id: str | None = None,
    ) -> builtins.list[ExceptionRecord]:
        """Records, newest failure first; ``status=None`` lists every status."""
        stmt = self._filter(select(_T), status, domain, group, ids)
        if correlation_id is not None:
            stmt = stmt.where(_T.c.correlation_id == correlation_id)
        stmt = stmt.order_by(_T.c.last_failed_at.desc(), _T.c.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            return [ExceptionRecord.model_validate(r._mapping) for r in conn.execute(stmt)]

    def groups(self, status: str | None = "open", domain: str | None = None
               ) -> builtins.list[GroupCount]:
        """Counts per (error type, call site), largest group first."""
        stmt = self._filter(
            select(_T.c.group_key, _T.c.error_type, _T.c.call_site, _T.c.domain,
                   _T.c.failure_class, func.count().label("n"),
                   func.max(_T.c.last_failed_at).label("last"),
                   func.min(_T.c.first_failed_at).label("first")),
            status, domain, None, None,
        ).group_by(_T.c.group_key, _T.c.error_type, _T.c.call_site, _T.c.domain,
                   _T.c.failure_class)
        merged: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(stmt):
                g = merged.setdefault(r.group_key, {
                    "error_type": r.error_type, "call_site": r.call_site, "count": 0,
                    "domains": set(), "classes": set(), "last": r.last, "first": r.first})
                g["count"] += r.n
                if r.domain:
                    g["domains"].add(r.domain)
                g["classes"].add(r.failure_class)
                g["last"] = max(g["last"], r.last)
                g["first"] = min(g["first"], r.first)
        out = [GroupCount(group=k, error_type=v["error_type"], call_site=v["call_site"],
                          count=v["count"], domains=tuple(sorted(v["domains"])),
                          failure_classes=tuple(sorted(v["classes"])), last_failed_at=v["last"],
                          first_failed_at=v["first"])
               for k, v in merged.items()]
        return sorted(out, key=lambda g: (-g.count, g.group))

    def open_count(self, domain: str | None = None) -> int:
        """Open records (for one domain): cutover guards refuse to move while it is not 0."""
        stmt = self._filter(select(func.count()).select_from(_T), "open", domain, None, None)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def archive(self, ids: Iterable[int] | None = None, group: str | None = None, *,
                actor: str, reason: str) -> int:
        """Mark open records archived (handled by hand, never to be replayed), audited with
        ``actor`` and ``reason``; returns how many."""
        _need_selection(ids, group)
        _need_audit(actor, reason)
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            chosen = [r.id for r in conn.execute(
                self._filter(select(_T.c.id), "open", None, group, ids))]
            if not chosen:
                return 0
            conn.execute(update(_T).where(_T.c.id.in_(chosen), _T.c.status == "open")
                         .values(status="archived", status_changed_at=now))
            conn.execute(_A.insert(), [{"record_id": rid, "action": "archive", "actor": actor,
                                        "reason": reason, "at": now} for rid in chosen])
            return len(chosen)

    def actions(self, record_id: int) -> builtins.list[dict[str, Any]]:
        """The audited archive/replay actions on a record, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(_A).where(_A.c.record_id == record_id)
                                .order_by(_A.c.id))
            return [dict(r._mapping) for r in rows]

    def replay(
        self,
        ids: Iterable[int] | None = None,
        group: str | None = None,
        *,
        enqueue: Callable[[dict[str, Any]], Any],
        actor: str,
        reason: str,
        dry_run: bool = False,
    ) -> ReplayResult:
        """Send records' messages again through the normal path, retry counters reset,
        audited with ``actor`` and ``reason``.

        By ids: open or already replayed records that carry a message; an archived
        record was handled by hand and is never replayed.  By group: the group's open
        records.  Each message is enqueued first and its record marked ``replayed``
        after, so a crash never loses one; a message replayed twice is applied once
        in effect (see "What makes each consumer idempotent" in docs/architecture.md).
        """
        _need_selection(ids, group)
        _need_audit(actor, reason)
        wanted = builtins.list(ids) if ids is not None else None
        records = self.list(status="open" if group else None, group=group, ids=wanted,
                            limit=None)
        result = ReplayResult(dry_run=dry_run)
        if wanted is not None:
            found = {r.id for r in records}
            result.skipped.extend((i, "no such record") for i in wanted if i not in found)
        for rec in sorted(records, key=_stored_id):
            rec_id = _stored_id(rec)
            if rec.status == "archived":
                result.skipped.append((rec_id, "archived (handled by hand): never replayed"))
                continue
            message = rec.message_dict()
            if message is None:
                result.skipped.append((rec_id, "no message to replay (only raw bytes were "
                                               "received); archive it once handled"))
                continue
            message = reset_for_replay(message, rec_id)
            if dry_run:
                result.replayed.append(rec_id)
                continue
            try:
                enqueue(message)
            except Exception as exc:  # report and go on: the record stays as it was
                result.failed.append((rec_id, f"{type(exc).__name__}: {exc}"))
                continue
            now = datetime.now(UTC)
            with self.engine.begin() as conn:
                conn.execute(update(_T).where(_T.c.id == rec_id).values(
                    status="replayed", status_changed_at=now,
                    replay_count=_T.c.replay_count + 1))
                conn.execute(_A.insert().values(record_id=rec_id, action="replay",
                                                actor=actor, reason=reason, at=now))
            result.replayed.append(rec_id)
        return result

    @staticmethod
    def _filter(stmt, status, domain, group, ids):
        if status is not None:
            stmt = stmt.where(_T.c.status == status)
        if domain is not None:
            stmt = stmt.where(_T.c.domain == domain)
        if group is not None:
            stmt = stmt.where(_T.c.group_key == group)
        if ids is not None:
            stmt = stmt.where(_T.c.id.in_(builtins.list(ids)))
        return stmt


def reset_for_replay(message: dict[str, Any], record_id: int) -> dict[str, Any]:
    """A copy of a dramatiq message dict that starts its life again on its base queue."""
    out = dict(message)
    options = {k: v for k, v in (out.get("options") or {}).items()
               if k not in _TRANSIENT_OPTIONS}
    options["retries"] = 0
    options["coexist_replay_of"] = record_id
    out["options"] = options
    queue = str(out.get("queue_name", ""))
    for suffix in (".DQ", ".XQ"):
        if queue.endswith(suffix):
            queue = queue[: -len(suffix)]
    out["queue_name"] = queue
    return out


def _need_audit(actor: str, reason: str) -> None:
    if not (actor or "").strip() or not (reason or "").strip():
        raise ValueError("an archive or replay needs an actor and a reason (it is audited)")


def _need_selection(ids, group) -> None:
    if (ids is None) == (group is None):
        raise ValueError("give record ids or a group, not both and not neither")


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None

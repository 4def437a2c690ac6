"""Change capture -> routing decisions -> outbox, one transaction per batch.

``CaptureLoop.run_once`` reads a batch of changes from one ERP's feed after
its durable checkpoint, decides each one (``coexistence.router``) and, in ONE
state-database transaction, writes every message the batch causes (shadow
writes, repairs, channel events, business-exception reports), the routing
state (pins, last routed version) and the new checkpoint.  A crash before the
commit leaves everything as it was: the batch is read again and decided again.
A crash after it leaves nothing to redo.  Nothing is skipped, nothing doubled.

**No ERP call inside the state transaction.**  Everything a batch needs from the
ERPs is read before its transaction opens: the changes (the feed), the source's
current records (``_records``) and, for the changes a first look at the routing
state decides to be stray writes, the SoR's records the reports and repairs carry
(``_sor_records``).  The transaction then only reads and writes the state
database (lease fence, routes, outbox, checkpoint), so a slow or retrying ERP
(the cloud over HTTP) never holds the state database's write lock.  Should the
decision inside the transaction differ from the first look (a flag changed, a
document was pinned by the other ERP's capture meanwhile) and need an SoR record
that was not read, the transaction is rolled back, that record read, and the batch
decided again: the same rule as a crash before the commit.

Coalescing: the changes of one key inside a batch cause ONE routed write per target,
the latest one's (a later change's write replaces the earlier one: the later state wins,
and its routed version, the higher, says so).  Every change still reaches the routing
state, the observations, the digest index and the channels.

Message ids are derived from (system, cursor, purpose), so the same change
always causes messages with the same ids: duplicates anywhere downstream are
absorbed by inboxes, idempotency keys and version checks.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from bus import stages
from bus.envelope import Envelope, new_envelope
from bus.outbox import add_all_to_outbox
from coexistence.canonical import DOCUMENT_DOMAINS, CanonicalRecord
from coexistence.ports import COEXIST_WRITER, BatchErp, BulkReader, Change, ChangeFeed, Erp
from coexistence.router import (
    Action,
    Decision,
    FlagView,
    decide_change,
    is_closed,
    routed_version,
    split_version,
)
from workers import checkpoints, metrics
from workers.reconcile import index as reconcile_index
from workers.router import observed, queues
from workers.router.state import RouteRow, get_routes, put_routes

log = logging.getLogger(__name__)

#: Changes read and routed per transaction.
CAPTURE_BATCH = 500

_NS = uuid.UUID("5b0c7f2e-3f1c-4c0e-9a51-6c6f65786973")


def message_id(system: str, cursor: int, purpose: str) -> str:
    return str(uuid.uuid5(_NS, f"{system}:{cursor}:{purpose}"))


def checkpoint_name(system: str) -> str:
    """The durable checkpoint of the router's capture of ``system`` (``cdc_checkpoint.feed``)."""
    return f"router.{system}"


def correlation_of(system: str, change: Change) -> str:
    """One correlation id per captured change: every message it causes (shadow writes,
    events, reports, repairs) and every message those cause carry it, so a log search or
    the exception store joins them."""
    return message_id(system, change.cursor, "change")


class FlagStates(Protocol):
    """What the capture loop needs from the flags (``FlagCache``, ``FlagSource``)."""

    def state(self, domain: str) -> FlagView: ...


@dataclass
class CaptureStats:
    read: int = 0
    routed: int = 0
    echoes: int = 0
    strays: int = 0
    writes: int = 0
    events: int = 0
    vanished: int = 0
    #: Routed writes replaced by a later change of the same key in the same batch.
    coalesced: int = 0

    def add(self, other: CaptureStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class _Routes:
    """Routing state of one batch: read in bulk, updated in memory, written once."""

    def __init__(self, conn, changes: list[Change]) -> None:
        self.conn = conn
        self.rows: dict[tuple[str, str], RouteRow | None] = {}
        self.dirty: set[tuple[str, str]] = set()
        keys: dict[str, list[str]] = defaultdict(list)
        for change in changes:
            # coexist's own writes (echoes) are decided without the routing state.
            if change.writer != COEXIST_WRITER:
                keys[change.domain].append(change.key)
        for domain, ks in keys.items():
            found = get_routes(conn, domain, ks)
            for k in ks:
                self.rows[(domain, k)] = found.get(k)

    def get(self, domain: str, key: str) -> RouteRow | None:
        return self.rows.get((domain, key))

    def put(self, domain: str, key: str, pinned_sor: str | None, version: int) -> None:
        old = self.rows.get((domain, key))
        last = max(version, old.last_version) if old is not None else version
        self.rows[(domain, key)] = RouteRow(pinned_sor, last)
        self.dirty.add((domain, key))

    def flush(self) -> None:
        put_routes(self.conn, [(d, k, self.rows[(d, k)].pinned_sor, self.rows[(d, k)].last_version)
                               for d, k in sorted(self.dirty)])


class _NotRead(Exception):  # noqa: N818 - a control-flow signal inside run_once, not an error
    """The batch's decision needs SoR records that were not read before its transaction."""

    def __init__(self, wanted: set[tuple[str, str, str]]) -> None:
        super().__init__(f"{len(wanted)} SoR record(s) not read before the transaction")
        self.wanted = wanted


class _Batch:
    """What one batch writes, and the SoR records read for it before its transaction."""

    def __init__(self, sor_records: Mapping[tuple[str, str, str], CanonicalRecord | None],
                 sor_versions: Mapping[tuple[str, str, str], int] | None = None) -> None:
        self.by_route: dict[tuple[str, str], list[Envelope]] = defaultdict(list)
        self.sor_records = sor_records
        #: The version coexist last applied to each SoR record read (``Current.version``).
        self.sor_versions = sor_versions or {}
        #: SoR records the decisions needed that were not read: the batch is not committed.
        self.missing: set[tuple[str, str, str]] = set()
        #: (actor, domain, key) -> position of the key's routed write in its route's list.
        self.writes: dict[tuple[str, str, str], int] = {}

    def sor_record(self, sor: str, domain: str, key: str) -> CanonicalRecord | None:
        """The SoR's record as read before the transaction; never a read of the SoR (one
        not read is noted in ``missing`` and the batch decided again once it is read)."""
        wanted = (sor, domain, key)
        if wanted not in self.sor_records:
            self.missing.add(wanted)
            return None
        return self.sor_records[wanted]

    def sor_applied(self, sor: str, domain: str, key: str) -> int:
        """The version coexist last applied to the SoR's record when it was read (0: none)."""
        return self.sor_versions.get((sor, domain, key), 0)

    def add(self, actor: str, queue: str, env: Envelope) -> None:
        self.by_route[(actor, queue)].append(env)

    def add_write(self, actor: str, queue: str, env: Envelope) -> bool:
        """A routed write; the changes of one key in one batch coalesce to ONE write per
        target: a later change's write replaces the earlier one in place (the later state
        wins; its version is the higher).  False when it replaced one."""
        envs = self.by_route[(actor, queue)]
        at = self.writes.get((actor, env.domain, env.key))
        if at is not None:
            envs[at] = env
            return False
        self.writes[(actor, env.domain, env.key)] = len(envs)
        envs.append(env)
        return True

    def flush(self, session: Session) -> None:
        for (actor, queue), envs in self.by_route.items():
            add_all_to_outbox(session, envs, actor_name=actor, queue_name=queue)


def record_payload(record: CanonicalRecord | None) -> dict[str, Any]:
    return {} if record is None else {"record": record.model_dump(mode="json")}


def differing_fields(a: CanonicalRecord | None, b: CanonicalRecord | None) -> list[str]:
    if a is None or b is None:
        return ["<record>"] if (a is None) != (b is None) else []
    return [name for name in type(a).model_fields if getattr(a, name) != getattr(b, name)]


class CaptureLoop:
    """Routes one ERP's changes.  One instance per source system and process."""

    def __init__(
        self,
        system: str,
        feed: ChangeFeed,
        erps: Mapping[str, Erp],
        flags: FlagStates,
        engine: Engine,
        *,
        subscriptions: Iterable[queues.Subscription] = (),
        feed_name: str | None = None,
        batch_size: int = CAPTURE_BATCH,
    ) -> None:
        self.system = system
        self.feed = feed
        self.erps = erps
        self.flags = flags
        self.engine = engine
        self.subscriptions = tuple(subscriptions)
        self.feed_name = feed_name or checkpoint_name(system)
        self.batch_size = batch_size
        #: Called first in every batch's state transaction; raises to refuse the batch
        #: (``workers.router.lease``: this process no longer holds the capture lease).
        self.fence: Callable[[Session], None] | None = None
        #: The checkpoint as this loop last read or committed it, so a look that finds
        #: nothing after it costs no state-database transaction (on SQLite each one takes
        #: the write lock; a router polls often).  A batch is never read from it alone:
        #: when the feed has changes after it, the stored checkpoint is read as before
        #: and the batch read from that one; any failure forgets it.
        self._checkpoint: int | None = None

    def forget_checkpoint(self) -> None:
        """Read the checkpoint from the state database again on the next batch (another
        process may have moved it: the capture lease changed hands)."""
        self._checkpoint = None

    def run_once(self) -> CaptureStats:
        """Route one batch; returns what it did (``read == 0`` when the feed is drained)."""
        try:
            return self._run_once()
        except BaseException:
            self._checkpoint = None
            raise

    def _run_once(self) -> CaptureStats:
        known = self._checkpoint
        changes = self.feed.read(known, self.batch_size) if known is not None else None
        if changes is not None and not changes:
            return CaptureStats()  # nothing after the checkpoint this loop last saw
        after = checkpoints.get(self.engine, self.feed_name)
        if changes is None or after != known:
            changes = self.feed.read(after, self.batch_size)
        self._checkpoint = after
        if changes:
            if stages.enabled():
                stages.mark("capture_read", (f"{c.domain}:{c.key}" for c in changes))
            # Flags as audited now, read after the changes: a change made after a switch is
            # judged under it even if this process's cache has not heard of it yet (a change
            # made before it was captured before it: `cutover set` waits for that).
            refresh = getattr(self.flags, "refresh", None)
            if refresh is not None:
                refresh()
        if not changes:
            return CaptureStats()
        # Every ERP read of the batch, before its state transaction opens.
        records = self._records(changes)
        sor_versions: dict[tuple[str, str, str], int] = {}
        sor_records = self._sor_records(self._expected_strays(changes, records), sor_versions)
        through = changes[-1].cursor
        # The text names the cursors: each batch's line passes the log's repeat limiter.
        log.debug("capture %s: read %d changes after cursor %d through %d", self.system,
                  len(changes), after, through)
        while True:
            stats = CaptureStats(read=len(changes))
            batch = _Batch(sor_records, sor_versions)
            try:
                with Session(self.engine) as session:
                    if self.fence is not None:
                        self.fence(session)
                    conn = session.connection()
                    routes = _Routes(conn, changes)
                    for change in changes:
                        record = records.get((change.domain, change.key))
                        self._route(change, record, routes, batch, stats)
                    if batch.missing:
                        raise _NotRead(batch.missing)
                    batch.flush(session)
                    routes.flush()
                    observed.flush(conn)
                    reconcile_index.update(session, self.system, changes, records)
                    checkpoints.advance(session, self.feed_name, through, expected=after)
                    session.commit()
            except _NotRead as missing:
                # Rolled back: read what the decision needs, outside any transaction.
                sor_records.update(self._sor_records(missing.wanted, sor_versions))
                continue
            break
        self._checkpoint = through
        if stages.enabled():
            stages.mark("outbox_commit", (f"{c.domain}:{c.key}" for c in changes))
        log.debug("capture %s: committed the batch through cursor %d", self.system, through)
        metrics.captured(self.system, stats, changes)
        return stats

    def _expected_strays(self, changes: list[Change], records) -> set[tuple[str, str, str]]:
        """(SoR, domain, key) of the changes that the routing state as it is now makes
        stray writes: a look before the transaction, so their SoR records can be read
        first.  The transaction decides again and asks for any it needs beyond these."""
        if all(change.writer == COEXIST_WRITER for change in changes):
            return set()  # echoes only (a write routed by coexist): none is a stray
        with self.engine.connect() as conn:
            routes = _Routes(conn, changes)
        wanted: set[tuple[str, str, str]] = set()
        for change in changes:
            decision = self._decide(change, records.get((change.domain, change.key)), routes)
            if decision is not None and decision.action is Action.STRAY:
                wanted.add((decision.sor, change.domain, change.key))
        return wanted

    def _sor_records(self, wanted: Iterable[tuple[str, str, str]],
                     versions: dict[tuple[str, str, str], int]
                     ) -> dict[tuple[str, str, str], CanonicalRecord | None]:
        """The SoR's current record (``None``: it has none) for each (SoR, domain, key);
        ``versions`` gets the version coexist last applied there (``Current.version``),
        from the same read where the SoR reads in batches: a repair carries the record
        only when it holds the record's last routed version (``_report_stray``)."""
        grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
        for sor, domain, key in sorted(wanted):
            grouped[(sor, domain)].append(key)
        out: dict[tuple[str, str, str], CanonicalRecord | None] = {}
        for (sor, domain), keys in grouped.items():
            erp = self.erps[sor]
            if isinstance(erp, BatchErp):
                held = erp.read_many(domain, keys)
                for k in keys:
                    record, current = held.get(k, (None, None))
                    out[(sor, domain, k)] = record
                    versions[(sor, domain, k)] = current.version if current is not None else 0
                continue
            # The version first, then the record: a write between the two is one the
            # record already holds (the version read is never newer than the record).
            for k in keys:
                current = erp.get_current(domain, k)
                versions[(sor, domain, k)] = current.version if current is not None else 0
            found = _get_many(erp, domain, keys)
            out.update(((sor, domain, k), found.get(k)) for k in keys)
        return out

    def _records(self, changes: list[Change]) -> dict[tuple[str, str], CanonicalRecord]:
        """The source's current state of every record the batch upserts, read in bulk."""
        source = self.erps[self.system]
        wanted: dict[str, list[str]] = defaultdict(list)
        for change in changes:
            # coexist's own writes are echoes whatever the flags say: never read them back.
            if change.op == "upsert" and change.writer != COEXIST_WRITER:
                wanted[change.domain].append(change.key)
        out: dict[tuple[str, str], CanonicalRecord] = {}
        for domain, keys in wanted.items():
            found = _get_many(source, domain, keys)
            out.update(((domain, k), r) for k, r in found.items())
        return out

    def drain(self, max_batches: int = 1_000_000) -> CaptureStats:
        """Route until the feed has nothing new (or ``max_batches``)."""
        total = CaptureStats()
        for _ in range(max_batches):
            stats = self.run_once()
            total.add(stats)
            if stats.read < self.batch_size:
                break
        return total

    # ------------------------------------------------------------------ one change

    def _decide(self, change: Change, record, routes: _Routes) -> Decision | None:
        """The routing decision of one change; ``None`` when there is nothing to decide
        (coexist's own write, or a record deleted again before it was read)."""
        if change.writer == COEXIST_WRITER:
            return None
        if change.op == "upsert" and record is None:
            return None
        flag = self.flags.state(change.domain)
        route = routes.get(change.domain, change.key)
        pinned = route.pinned_sor if route is not None else None
        return decide_change(change, self.system, flag, record, pinned_sor=pinned)

    def _route(self, change: Change, record, routes: _Routes, batch: _Batch,
               stats: CaptureStats) -> None:
        if change.writer == COEXIST_WRITER:
            stats.echoes += 1
            return
        if change.op == "upsert" and record is None:
            # Deleted again before we read it: its delete is later in the feed.
            stats.vanished += 1
            return
        decision = self._decide(change, record, routes)
        assert decision is not None
        route = routes.get(change.domain, change.key)
        observed.note(routes.conn, self.system, change, decision)
        if decision.action is Action.ECHO:
            stats.echoes += 1
            return
        if decision.action is Action.ROUTE:
            self._route_sor_change(routes, change, record, decision, batch, stats)
        else:
            self._report_stray(change, record, decision, route, batch, stats, routes.conn)

    def _route_sor_change(self, routes, change, record, decision: Decision, batch, stats):
        stats.routed += 1
        version = routed_version(decision.flag_version, change.version)
        pin = None
        if change.domain in DOCUMENT_DOMAINS and not is_closed(record):
            pin = decision.sor
        routes.put(change.domain, change.key, pin, version)
        kind = queues.KIND_UPSERT if change.op == "upsert" else queues.KIND_DELETE
        origin = queues.origin_of(change.writer)
        for target in decision.targets:
            env = self._envelope(change, kind, record, decision, f"write:{target}",
                                 extra={"origin": origin, "mode": decision.mode})
            if batch.add_write(queues.WRITE_ACTOR[target], queues.WRITE_QUEUE[target], env):
                stats.writes += 1
            else:
                stats.coalesced += 1
        if decision.fan_out:
            event_kind = queues.KIND_EVENT if record else queues.KIND_DELETE
            for sub in self.subscriptions:
                if sub.wants(change.domain, event_kind):
                    env = self._envelope(change, event_kind, record, decision,
                                         f"event:{sub.name}")
                    batch.add(sub.actor, sub.queue, env)
                    stats.events += 1

    def _report_stray(self, change, record, decision: Decision, route, batch, stats, conn):
        stats.strays += 1
        sor_record = batch.sor_record(decision.sor, change.domain, change.key)
        fields = differing_fields(sor_record, record)
        report = self._envelope(change, queues.KIND_STRAY, None, decision, "stray", extra={
            "system": self.system, "writer": change.writer, "sor": decision.sor,
            "op": change.op, "fields": fields, "policy": str(decision.stray_policy),
            "repaired": bool(decision.targets),
            # Both values of each differing field (the stray's, the SoR's when captured):
            # the record names what the stray was (to be) overwritten with.
            "values": [[n, _value(record, n), _value(sor_record, n)] for n in fields],
        })
        batch.add(queues.REPORT_ACTOR, queues.REPORT_QUEUE, report)
        last = route.last_version if route is not None else 0
        # The SoR's record is the repair's content only if it holds the record's last
        # routed version (coexist applied it there, or it is the SoR's own change): else
        # a write routed to it is still in flight, and the repair reads the SoR when it
        # is applied, once the SoR holds it (``handlers.apply_write``).
        fresh = sor_holds(conn, decision.sor, change.domain, change.key, last,
                          batch.sor_applied(decision.sor, change.domain, change.key))
        content = record_payload(sor_record) if fresh else {"reread": True}
        for target in decision.targets:
            flag_version, source_version = split_version(last)
            env = new_envelope(
                domain=change.domain, kind=queues.KIND_REPAIR, key=change.key,
                payload={**content, "stray_cursor": change.cursor,
                         "stray_version": change.version, "stray_fields": fields},
                source_system=decision.sor, source_version=source_version,
                schema_version=_schema_version(sor_record), flag_version=flag_version,
                occurred_at=change.at,
                message_id=message_id(self.system, change.cursor, f"repair:{target}"),
                correlation_id=correlation_of(self.system, change),
            )
            batch.add(queues.WRITE_ACTOR[target], queues.WRITE_QUEUE[target], env)
            stats.writes += 1

    def _envelope(self, change: Change, kind: str, record, decision: Decision, purpose: str,
                  extra: dict[str, Any] | None = None) -> Envelope:
        payload = record_payload(record)
        if extra:
            payload.update(extra)
        return new_envelope(
            domain=change.domain, kind=kind, key=change.key, payload=payload,
            source_system=self.system, source_version=change.version,
            schema_version=_schema_version(record), flag_version=decision.flag_version,
            occurred_at=change.at,
            message_id=message_id(self.system, change.cursor, purpose),
            correlation_id=correlation_of(self.system, change),
        )


def sor_holds(conn, sor: str, domain: str, key: str, last: int, applied: int) -> bool:
    """Does the SoR's state include the record's last routed version ``last``?  Yes when
    coexist applied that version (or a later one) there (``applied``: the SoR's
    ``Current.version``), or when the SoR's own change of that version (or a later one)
    was observed (``observed_revision.version``): then no routed write older than its
    state is still on its way to it."""
    if last <= 0 or applied >= last:
        return True
    seen = observed.get_observed(conn, sor, domain, key)
    return seen is not None and seen.version >= last


def _value(record: CanonicalRecord | None, name: str) -> str:
    """A field's value as a report names it (shortened; ``absent`` for no record)."""
    if record is None or name == "<record>":
        return "absent" if record is None else "present"
    text = str(getattr(record, name))
    return text if len(text) <= 80 else text[:77] + "..."


def _get_many(erp: Erp, domain: str, keys: list[str]) -> dict[str, CanonicalRecord]:
    """``erp``'s current records of ``keys`` (absent: none), in bulk where it can."""
    if isinstance(erp, BulkReader):
        return erp.get_many(domain, keys)
    return {k: r for k in dict.fromkeys(keys) if (r := erp.get(domain, k)) is not None}


def _schema_version(record: CanonicalRecord | None) -> int:
    return type(record).current_schema_version if record is not None else 1

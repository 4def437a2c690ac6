"""kill -9 of the processes operators run, in shadow mode, while people write: ``coexist
router`` mid-batch and ``coexist worker`` mid-write, as OS processes started from the CLI
the way supervisord starts them (the installed ``coexist`` entry point, settings in the
environment, a TOML file with a channel subscription), restarted after each kill as
supervisord's ``autorestart`` does.

* **embedded default**: ``coexist run`` (router and workers in one process) on SQLite
  state, SQLite legacy ERP and the embedded SQLite broker, killed once inside a capture
  batch and once inside a cloud write per round.
* **RabbitMQ + PostgreSQL**: ``coexist router`` and ``coexist worker`` as two processes,
  state and legacy ERP on PostgreSQL, killed separately.

Mid-batch is proven, not hoped for: the router logs (DEBUG) each capture batch once its ERP
reads are done and again once it committed; a kill is counted as mid-batch when the last
batch logged was read and not committed *and* the durable checkpoint is still where that
batch started (nothing of it committed).  Mid-write likewise: the worker had received a
``write_cloud`` message and not acknowledged it, or had begun a writer batch
(``handlers.apply_writes``' first DEBUG line) and not finished it, while the cloud
simulator answers writes late (``latency_ms``).

After the last restart and settle: both ERPs equal through the translators, every record
at the last version a person wrote (nothing regressed), every stray write (a person's edit
in the cloud, the shadow) reported exactly once in the exception store, and the channel
subscriber saw every change: one message id per captured change (exactly once in effect),
however many copies redelivery made (at least once), the last one per record carrying the
record's last version.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from bus.db import create_state_engine
from bus.exception_store import ExceptionStore
from coexistence.canonical import CanonicalRecord, decode
from coexistence.router import LEGACY
from coexistence.sample import iter_customers
from tests.support import cloud_sim
from tests.support.processes import LogTail, Process, coexist_env, extra_pg_schema, wait_until
from workers import checkpoints
from workers.cli import cli
from workers.cloud_erp import CloudErp
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.cdc import LegacyChangeFeed
from workers.legacy_erp.schema import (
    captured_tables,
    create_legacy_engine,
    create_legacy_schema,
    key_decoders,
)
from workers.migrate import upgrade as upgrade_schema
from workers.router.capture import checkpoint_name, message_id
from workers.scenario import compare, normalised, touched

pytestmark = [pytest.mark.integration, pytest.mark.slow]

simulator, sim = cloud_sim.simulator, cloud_sim.sim

#: Longest wait for a process to start, a kill to find its moment, or the work to settle
#: (bounds, not figures).
WAIT_S = 45.0
#: Records people keep rewriting in the legacy ERP (the SoR) during the load.
KEYS = 24
#: Rounds of kills (the router mid-batch, then the worker mid-write) per deployment: process
#: starts (4-7 s each on a loaded host) are what a round costs, so fewer where they are slower.
ROUNDS = {"embedded": 2, "rabbitmq_pg": 1}
#: A kill that missed its moment (the batch committed, the write was acknowledged, between
#: the look at the log and the signal) is repeated, at most this many times in all.
KILL_ATTEMPTS = 3
#: Records written once in the legacy ERP, then edited by a person in the cloud (strays).
STRAYS = 3
#: Seconds between two of the people's legacy writes.
WRITE_EVERY_S = 0.1
#: A router is killed inside a batch of at least this many changes (the backlog that builds
#: up while it restarts), whose transaction takes long enough to be hit.
KILL_BATCH = 10
#: The cloud simulator's added latency per write (ms): a worker is mid-write most of the time.
WRITE_LATENCY_MS = 30

_READ = re.compile(r"capture legacy: read (\d+) changes after cursor (\d+) through (\d+)")
_COMMITTED = re.compile(r"capture legacy: committed the batch through cursor (\d+)")
_RECEIVED = re.compile(r"Received message write_cloud\(.*\) with id '([^']+)'")
_DONE = re.compile(r"(?:Acknowledging|Rejecting) message '([^']+)'")
#: The writers' batch path (``handlers.apply_writes``): a batch is in flight from its first
#: line to its second (its ERP writes under way, nothing acked).
_BATCH = re.compile(r"cloud write batch (\S+): (\d+) messages")
_BATCH_DONE = re.compile(r"cloud write batch (\S+): done")


class CountedChannel:
    """The channel subscriber of these tests: ``[subscriptions.test]`` (customers), whose
    messages wait in ``coexist.channel.test`` and are counted there.

    The hook for a real channel (the ``channel`` fixture): once a channel consumer (CRM,
    EDI, portal) runs in the production processes, an object with the same ``name``,
    ``toml``, ``count()`` and ``messages()`` (the dramatiq messages it received,
    duplicates included) replaces this one, and the assertions stay as they are."""

    name = "test"
    toml = '[subscriptions.test]\ndomains = ["customer"]\nkinds = ["event", "delete"]\n'
    queue = "coexist.channel.test"

    def __init__(self, home: Path, broker_url: str | None) -> None:
        self.home, self.broker_url = home, broker_url

    def count(self) -> int:
        if self.broker_url:
            return self._rabbit(consume=False)[0]
        return len(self.messages())

    def messages(self) -> list[dict[str, Any]]:
        """Every message in the channel's queue (the embedded broker: left in place;
        RabbitMQ: taken off the queue, so call it once, at the end)."""
        if self.broker_url:
            return self._rabbit(consume=True)[1]
        path = self.home / "bus.db"
        if not path.exists():
            return []
        with sqlite3.connect(path) as conn:
            try:
                rows = conn.execute("SELECT body FROM bus_queue WHERE queue_name = ?",
                                    (self.queue,)).fetchall()
            except sqlite3.OperationalError:
                return []
        return [json.loads(body) for (body,) in rows]

    def _rabbit(self, consume: bool) -> tuple[int, list[dict[str, Any]]]:
        import pika
        from pika.exceptions import ChannelClosedByBroker

        assert self.broker_url is not None
        conn = pika.BlockingConnection(pika.URLParameters(self.broker_url))
        try:
            channel = conn.channel()
            try:
                n = channel.queue_declare(self.queue, passive=True).method.message_count
            except ChannelClosedByBroker:
                return 0, []
            out = []
            while consume:
                method, _props, body = channel.basic_get(self.queue, auto_ack=True)
                if method is None:
                    break
                out.append(json.loads(body))
            return n, out
        finally:
            conn.close()


@dataclass
class Kills:
    """What each kill hit, for the assertions and the report."""

    router: int = 0
    router_mid_batch: int = 0
    worker: int = 0
    worker_mid_write: int = 0
    writes_in_flight: list[int] = field(default_factory=list)

    def summary(self) -> str:
        return (f"router kills {self.router} (mid-batch {self.router_mid_batch}), worker kills "
                f"{self.worker} (mid-write {self.worker_mid_write}, cloud writes in flight "
                f"{self.writes_in_flight})")


class Watch:
    """Follows one process's log: the capture batch read and not yet committed, and the
    ``write_cloud`` messages received and not yet acknowledged."""

    def __init__(self, log: Path) -> None:
        self.tail = LogTail(log)
        self.pending: tuple[int, int] | None = None
        self.pending_size = 0
        #: The process has captured (it holds the lease and reads the legacy feed).
        self.capturing = False
        self.in_flight: set[str] = set()

    def poll(self) -> Watch:
        for rec in self.tail.poll():
            msg = rec.get("message", "")
            if m := _READ.search(msg):
                self.pending = (int(m[2]), int(m[3]))
                self.pending_size = int(m[1])
                self.capturing = True
            elif _COMMITTED.search(msg):
                self.pending = None
            elif m := _RECEIVED.search(msg):
                self.in_flight.add(m[1])
            elif m := _DONE.search(msg):
                self.in_flight.discard(m[1])
            elif m := _BATCH.search(msg):
                self.in_flight.add(m[1])
            elif m := _BATCH_DONE.search(msg):
                self.in_flight.discard(m[1])
        return self


class Deployment:
    """coexist's processes on one home, the two ERPs, the people who write into them."""

    def __init__(self, tmp_path: Path, kind: str, env: dict[str, str], state_url: str,
                 legacy_url: str, sim, channel: CountedChannel) -> None:
        self.tmp_path, self.kind, self.env, self.sim = tmp_path, kind, env, sim
        self.channel = channel
        self.state = create_state_engine(state_url)
        self.legacy_engine = create_legacy_engine(legacy_url)
        self.legacy = LegacyErp(self.legacy_engine)
        self.feed = LegacyChangeFeed(self.legacy_engine, captured_tables(), key_decoders())
        self.cloud = CloudErp(sim.url)
        self.procs: dict[str, Process] = {}
        self.started: Counter[str] = Counter()
        self.kills = Kills()
        self.last: dict[str, CanonicalRecord] = {}
        self.strays: list[str] = []
        self.people: People | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ processes

    COMMANDS = {
        "run": ["run", "--threads", "4", "--capture-lease-s", "1"],
        "router": ["router", "--capture-lease-s", "1"],
        "worker": ["worker", "--threads", "8"],
    }

    def start(self, name: str, wait: bool = True) -> Process:
        """Start ``name`` (as supervisord's autorestart does after a kill); with ``wait``,
        until it says it bootstrapped."""
        self.started[name] += 1
        proc = Process([*self.COMMANDS[name], "--log-level", "DEBUG"], self.env,
                       self.tmp_path / f"{name}-{self.started[name]}.log")
        self.procs[name] = proc
        if wait:
            self.wait_started(name)
        return proc

    def wait_started(self, name: str) -> None:
        proc = self.procs[name]
        wait_until(lambda: not proc.alive() or '"coexist bootstrapped"' in proc.output(),
                   WAIT_S, f"{name} starts")
        assert proc.alive(), proc.output()[-3000:]

    def kill_router_mid_batch(self, name: str) -> bool:
        """SIGKILL ``name`` (router or run) once its log shows a legacy batch read and not
        committed; restart it.  Counts the kill as mid-batch when nothing of the batch
        was committed."""
        proc = self.procs[name]
        watch = Watch(proc.log)
        burst_at = [0.0]

        def moment():
            assert proc.alive(), proc.output()[-3000:]
            watch.poll()
            if watch.pending is not None and watch.pending_size >= KILL_BATCH:
                return True
            if watch.capturing and self.people is not None and \
                    time.monotonic() > burst_at[0] + 3:
                # Capture keeps up (small batches): a burst of writes makes a big one.
                self.people.burst(4 * KILL_BATCH)
                burst_at[0] = time.monotonic()
            return False

        wait_until(moment, WAIT_S, f"{name} inside a capture batch", poll_s=0.002)
        proc.signal(signal.SIGKILL)
        proc.popen.wait(10)
        watch.poll()  # lines written just before the kill
        self.kills.router += 1
        hit = watch.pending is not None and self.checkpoint() == watch.pending[0]
        self.kills.router_mid_batch += hit
        proc.stop()
        self.start(name, wait=False)
        return hit

    def kill_worker_mid_write(self, name: str) -> bool:
        """SIGKILL ``name`` (worker or run) while it holds a ``write_cloud`` message it has
        not acknowledged; restart it."""
        proc = self.procs[name]
        watch = Watch(proc.log)

        def moment():
            assert proc.alive(), proc.output()[-3000:]
            return watch.poll().in_flight

        wait_until(moment, WAIT_S, "worker inside a cloud write", poll_s=0.002)
        proc.signal(signal.SIGKILL)
        proc.popen.wait(10)
        watch.poll()
        self.kills.worker += 1
        self.kills.writes_in_flight.append(len(watch.in_flight))
        hit = bool(watch.in_flight)
        self.kills.worker_mid_write += hit
        proc.stop()
        self.start(name, wait=False)
        return hit

    def checkpoint(self) -> int:
        return checkpoints.get(self.state, checkpoint_name(LEGACY))

    # ------------------------------------------------------------------ people

    def person_writes_legacy(self, record: CanonicalRecord) -> None:
        self.legacy.person_upsert(record, "CLERK")
        with self._lock:
            self.last[record.key] = record

    def stray(self, key: str) -> None:
        """A person edits ``key`` in the cloud (the shadow): a stray write."""
        wait_until(lambda: self.cloud.get("customer", key) is not None, WAIT_S,
                   f"customer {key} reaches the cloud")
        record = self.last[key]
        self.sim.person_upsert(record.model_copy(update={"credit_hold": not record.credit_hold,
                                                         "name": f"{record.name} (typed)"}),
                               "cloud.user")
        self.strays.append(key)

    # ------------------------------------------------------------------ results

    def expected_event_ids(self) -> set[str]:
        changes = [c for batch in self.feed.iter_changes(0) for c in batch]
        return {message_id(LEGACY, c.cursor, f"event:{self.channel.name}") for c in changes}

    def stray_reports(self) -> list[str]:
        return sorted(r.key or "" for r in ExceptionStore(self.state).list(status=None,
                                                                            limit=None)
                      if r.error_type == "StrayWrite")

    def unsent(self) -> int:
        with self.state.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                                ).scalar_one()

    def settled(self) -> str:
        """``""`` once everything is settled, else what is not yet (for the timeout's message)."""
        head, at = self.feed.last_cursor(), self.checkpoint()
        if at != head:
            return f"captured through {at} of {head}"
        if unsent := self.unsent():
            return f"{unsent} outbox rows unsent"
        if len(reports := self.stray_reports()) < len(self.strays):
            return f"stray reports {reports} of {self.strays}"
        if (n := self.channel.count()) < (want := len(self.expected_event_ids())):
            return f"{n} channel messages of {want} changes"
        agreement = compare(self.legacy, self.cloud, "customer")
        if not agreement.agrees:
            return f"ERPs differ: {agreement}"
        behind = [k for k, r in self.last.items()
                  if normalised(r) != normalised(self.cloud.get("customer", k) or r)]
        return f"cloud behind the last version: {behind}" if behind else ""

    def close(self) -> str:
        logs = []
        for name, proc in self.procs.items():
            try:
                proc.stop()
            except BaseException:  # noqa: BLE001 - the rest must still be stopped
                proc.popen.kill()
                proc.popen.wait(10)
            logs.append(f"--- {name}\n{proc.output()[-2000:]}")
        self.cloud.close()
        self.state.dispose()
        self.legacy_engine.dispose()
        return "\n".join(logs)


@dataclass
class Backend:
    kind: str
    state_url: str
    legacy_url: str
    broker_url: str | None = None


@pytest.fixture(params=["embedded", "rabbitmq_pg"])
def backend(request, tmp_path) -> Iterator[Backend]:
    """Where the processes keep their state, the legacy ERP and the bus."""
    if request.param == "embedded":
        yield Backend("embedded", f"sqlite:///{tmp_path / 'state.db'}",
                      f"sqlite:///{tmp_path / 'legacy.db'}")
        return
    pg_url = request.getfixturevalue("pg_url")
    broker_url = request.getfixturevalue("fresh_rabbit_vhost")[0]
    with extra_pg_schema(request.getfixturevalue("pg_database_url")) as legacy_url:
        yield Backend("rabbitmq_pg", pg_url, legacy_url, broker_url)


@pytest.fixture
def channel(backend, tmp_path) -> CountedChannel:
    """The channel subscriber the crash test checks: the hook where a real channel
    consumer (CRM, EDI, portal), once the processes run one, replaces the counted queue
    (same ``name``, ``toml`` and ``messages()``)."""
    return CountedChannel(tmp_path, backend.broker_url)


@pytest.fixture
def deployment(backend, channel, tmp_path, sim) -> Iterator[Deployment]:
    engine = create_legacy_engine(backend.legacy_url)
    create_legacy_schema(engine)
    engine.dispose()
    state = create_state_engine(backend.state_url)
    upgrade_schema(state)
    state.dispose()
    (tmp_path / "coexist.toml").write_text(channel.toml)
    settings = {"state_url": backend.state_url, "legacy_url": backend.legacy_url,
                "cloud_url": sim.url, "actor": "test", "bus_lease_s": "2"}
    if backend.broker_url:
        settings["broker_url"] = backend.broker_url
    env = coexist_env(tmp_path, **settings)
    result = CliRunner().invoke(cli, ["cutover", "set", "customer", "shadow", "--force",
                                      "--reason", "crash test", "--no-wait"], env=env)
    assert result.exit_code == 0, result.output
    sim.faults(latency_ms=WRITE_LATENCY_MS, scope="write")
    d = Deployment(tmp_path, backend.kind, env, backend.state_url, backend.legacy_url, sim,
                   channel)
    try:
        yield d
    finally:
        print(d.close())


class People:
    """A person rewriting ``KEYS`` customers in the legacy ERP, one after the other (never
    the same record twice in a row), until stopped."""

    def __init__(self, d: Deployment, records: list[CanonicalRecord]) -> None:
        self.d, self.records = d, records
        self.stop, self.errors, self.writes = threading.Event(), [], 0
        self._burst = 0
        self.thread = threading.Thread(target=self._run)

    def burst(self, n: int) -> None:
        """The next ``n`` writes without a pause (a person's batch job)."""
        self._burst = n

    def _run(self) -> None:
        try:
            n = 0
            while not self.stop.is_set():
                n += 1
                for record in self.records:
                    self.d.person_writes_legacy(touched(record, n))
                    self.writes += 1
                    if self._burst > 0:
                        self._burst -= 1
                    elif self.stop.wait(WRITE_EVERY_S):
                        return
        except BaseException as exc:  # noqa: BLE001 - reported by __exit__
            self.errors.append(exc)

    def __enter__(self) -> People:
        self.d.people = self
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.d.people = None
        self.stop.set()
        self.thread.join(30)
        assert not self.errors, self.errors


@pytest.mark.timeout(300)  # each wait is bounded by WAIT_S; process starts dominate
def test_kill_9_of_the_router_mid_batch_and_the_worker_mid_write_loses_nothing(deployment):
    d = deployment
    started = time.monotonic()
    embedded = d.kind == "embedded"
    router = "run" if embedded else "router"
    writer = router if embedded else "worker"
    customers = list(iter_customers(KEYS + STRAYS, seed=11))
    # Written once by a person, later edited in the cloud (a stray write each).
    stray_targets, rewritten = customers[:STRAYS], customers[STRAYS:]
    for record in stray_targets:
        d.person_writes_legacy(record)

    with People(d, rewritten) as people:
        # Started while people write: the first batch has a backlog, as after any restart.
        d.start(router, wait=False)
        if not embedded:
            d.start("worker", wait=False)
        strays = iter(stray_targets)
        d.stray(next(strays).key)
        for _round in range(ROUNDS[d.kind]):
            # Restarted without waiting: the other process's kill overlaps the start.
            while not d.kill_router_mid_batch(router) and d.kills.router < KILL_ATTEMPTS:
                pass
            d.stray(next(strays).key)
            while not d.kill_worker_mid_write(writer) and d.kills.worker < KILL_ATTEMPTS:
                pass
            for name in d.procs:
                d.wait_started(name)
        for record in strays:
            d.stray(record.key)
    load_s = time.monotonic() - started

    deadline = time.monotonic() + WAIT_S
    while why := d.settled():
        assert time.monotonic() < deadline, f"not settled in {WAIT_S:g} s: {why}; " \
            f"{d.kills.summary()}"
        time.sleep(0.5)
    settle_s = time.monotonic() - started - load_s

    # Both ERPs equal through the translators; every record at its last version.
    agreement = compare(d.legacy, d.cloud, "customer")
    assert agreement.agrees, agreement
    assert agreement.legacy_rows == KEYS + STRAYS
    for key, record in d.last.items():
        assert normalised(d.legacy.get("customer", key)) == normalised(record), key
        assert normalised(d.cloud.get("customer", key)) == normalised(record), key
    # Every stray write reported exactly once.
    assert d.stray_reports() == sorted(d.strays)
    # The channel saw every change: one message id per change, the last one per record
    # carrying its last version.
    messages = d.channel.messages()
    ids = Counter(m["message_id"] for m in messages)
    assert set(ids) == d.expected_event_ids()
    newest: dict[str, dict] = {}
    for m in messages:
        env = m["args"][0]
        if env["key"] not in newest or env["source_version"] > newest[env["key"]][
                "source_version"]:
            newest[env["key"]] = env
    for key, record in d.last.items():
        got = decode("customer", newest[key]["payload"]["record"])
        assert normalised(got) == normalised(record), key
    # The kills hit what they were meant to hit.
    assert d.kills.router_mid_batch >= 1, d.kills.summary()
    assert d.kills.worker_mid_write >= 1, d.kills.summary()
    print(f"{d.kind}: {d.kills.summary()}; {people.writes} legacy writes, "
          f"{len(ids)} changes, {sum(ids.values())} channel messages "
          f"({sum(ids.values()) - len(ids)} redelivered copies), {len(d.strays)} strays; "
          f"load {load_s:.1f} s, settled {settle_s:.1f} s after")

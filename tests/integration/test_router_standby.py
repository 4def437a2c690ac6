"""Two ``coexist router`` processes on PostgreSQL state (legacy ERP on PostgreSQL, RabbitMQ,
the cloud simulator): one captures, the other stands by and takes over when the first is
killed or paused, and no change is routed twice or skipped.

The domain is in shadow mode with no worker running, so every change the legacy ERP logs
must become exactly one ``write:cloud`` message in the outbox, found by the correlation id
derived from its cursor.  Each router serves its metrics: ``coexist_changes_routed_total``
counts only batches that committed, so it tells which router committed what.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from bus.db import create_state_engine
from coexistence.router import LEGACY
from coexistence.sample import iter_customers
from tests.support import cloud_sim
from tests.support import deployment as deployment_support
from tests.support.processes import Process, coexist_env, extra_pg_schema, free_port, wait_until
from workers import checkpoints
from workers.cli import cli
from workers.legacy_erp.cdc import LegacyChangeFeed
from workers.legacy_erp.schema import (
    captured_tables,
    key_decoders,
)
from workers.router.capture import checkpoint_name, correlation_of
from workers.router.lease import holders, lease_name

pytestmark = pytest.mark.integration

simulator, sim = cloud_sim.simulator, cloud_sim.sim

#: The brief: a standby captures within 10 s of the active router's end.
TAKEOVER_S = 10.0
#: Longest wait for a router to start, or for capture to catch up with the log.
SETTLE_S = 60.0


class Deployment(deployment_support.Deployment):
    def __init__(self, tmp_path, state_url: str, legacy_url: str, env: dict[str, str]):
        super().__init__(tmp_path, env, state_url, legacy_url, pool_size=8)
        self.feed = LegacyChangeFeed(self.legacy_engine, captured_tables(), key_decoders())
        self.routers = self.procs

    def router(self, name: str, *extra: str) -> Process:
        port = free_port()
        env = {**self.env,
               "COEXIST_STATE_URL": f"{self.state_url}&application_name=coexist-{name}"}
        proc = self.spawn(["router", "--metrics-port", str(port), "--log-level", "INFO", *extra],
                          f"{name}.log", env)
        proc.metrics_url = f"http://127.0.0.1:{port}/metrics"
        return proc

    def holder_pid(self, system: str = LEGACY) -> int | None:
        for info in holders(self.state):
            if info.name == lease_name(system) and info.state == "held":
                return int(info.holder.split(":")[1])
        return None

    def checkpoint(self) -> int:
        return checkpoints.get(self.state, checkpoint_name(LEGACY))

    def caught_up(self) -> bool:
        head = self.feed.last_cursor()
        return head > 0 and self.checkpoint() == head

    def routed(self, proc: Process) -> float:
        try:
            body = httpx.get(proc.metrics_url, timeout=5).text
        except httpx.TransportError:
            return -1
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                if s.name == "coexist_changes_routed_total" and s.labels == {"system": LEGACY}:
                    return s.value
        return 0.0

    def outbox_rows_per_change(self) -> dict[str, int]:
        with self.state.connect() as conn:
            return {cid: n for cid, n in conn.execute(text(
                "SELECT correlation_id, count(*) FROM outbox GROUP BY correlation_id"))}

    def every_change(self):
        return [c for batch in self.feed.iter_changes(0) for c in batch]


@pytest.fixture
def deployment(tmp_path, pg_url, pg_database_url, sim, fresh_rabbit_vhost):
    with extra_pg_schema(pg_database_url) as legacy_url:
        deployment_support.prepare(pg_url, legacy_url)
        env = coexist_env(tmp_path, state_url=pg_url, legacy_url=legacy_url,
                          cloud_url=sim.url, broker_url=fresh_rabbit_vhost[0], actor="test")
        result = CliRunner().invoke(cli, ["cutover", "set", "customer", "shadow", "--force",
                                          "--reason", "standby test", "--no-wait"], env=env)
        assert result.exit_code == 0, result.output
        with deployment_support.running(Deployment(tmp_path, pg_url, legacy_url, env)) as d:
            yield d


def assert_each_change_routed_exactly_once(d: Deployment) -> int:
    changes = d.every_change()
    rows = d.outbox_rows_per_change()
    expected = {correlation_of(LEGACY, c): 1 for c in changes}
    assert rows == expected, "every change once: none skipped, none routed twice"
    assert {c.key for c in changes} == d.written
    return len(changes)


class Writers:
    """People creating customers in the legacy ERP from several threads until stopped."""

    def __init__(self, d: Deployment, threads: int = 4) -> None:
        self.d, self.stop, self.errors = d, threading.Event(), []
        d.written = set()
        customers = iter(iter_customers(100_000, seed=3))
        self.lock = threading.Lock()
        self.next = lambda: next(customers)
        self.threads = [threading.Thread(target=self._write, args=(f"CLERK{n}",))
                        for n in range(threads)]

    def _write(self, user: str) -> None:
        try:
            while not self.stop.is_set():
                with self.lock:
                    record = self.next()
                self.d.legacy.person_upsert(record, user)
                with self.lock:
                    self.d.written.add(record.key)
                time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.errors.append(exc)

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not self.errors, self.errors


def test_a_standby_router_takes_over_a_killed_one_mid_load_and_routes_each_change_once(
    deployment,
):
    d = deployment
    a = d.router("a")
    wait_until(lambda: d.holder_pid() == a.pid, SETTLE_S, "router a captures")
    b = d.router("b")
    wait_until(lambda: d.routed(b) >= 0, SETTLE_S, "router b serves its metrics")
    assert d.holder_pid() == a.pid, "b stands by while a holds the lease"
    with Writers(d):
        wait_until(lambda: d.checkpoint() >= 30, SETTLE_S, "a routes people's changes")
        a.signal(signal.SIGKILL)
        killed_at, checkpoint_at_kill = time.monotonic(), d.checkpoint()
        wait_until(lambda: d.holder_pid() == b.pid, TAKEOVER_S, "b takes the capture over")
        took_over_s = time.monotonic() - killed_at
        wait_until(lambda: d.checkpoint() > checkpoint_at_kill + 30, SETTLE_S,
                   "b routes changes written after the takeover")
    wait_until(d.caught_up, SETTLE_S, "b catches up with the change log")
    n = assert_each_change_routed_exactly_once(d)
    assert d.routed(b) > 0 and d.routed(b) < n, "a routed the first part, b the rest"
    assert "took the capture lease capture.legacy (token 2)" in b.output()
    print(f"takeover after kill -9: {took_over_s:.1f} s, {n} changes")


@pytest.mark.parametrize("stop_signal", [signal.SIGSTOP, signal.SIGKILL],
                         ids=["paused", "killed"])
def test_a_router_stopped_inside_its_batch_never_commits_it_and_the_standby_routes_it(
    deployment, pg_database_url, stop_signal,
):
    """SIGSTOP: paused, its lease taken over, it resumes and commits nothing.  SIGKILL:
    killed with its batch's outbox rows written and not committed; nothing of it remains."""
    d = deployment
    a = d.router("a", "--capture-lease-s", "2")
    wait_until(lambda: d.holder_pid() == a.pid, SETTLE_S, "router a captures")
    b = d.router("b", "--capture-lease-s", "2")
    wait_until(lambda: d.routed(b) >= 0, SETTLE_S, "router b serves its metrics")
    customers = iter(iter_customers(100, seed=5))
    d.written = set()

    def write(n: int) -> None:
        for _ in range(n):
            record = next(customers)
            d.legacy.person_upsert(record, "CLERK")
            d.written.add(record.key)

    write(5)
    wait_until(d.caught_up, SETTLE_S, "a routes the first changes")
    assert d.routed(a) == 5
    admin = create_state_engine(pg_database_url)
    try:
        # Hold the checkpoint row, so that a's next batch stops inside its transaction,
        # after its fence, with its outbox rows written and its checkpoint update waiting.
        with d.state.connect() as blocker:
            blocker.begin()
            blocker.execute(text("SELECT cursor FROM cdc_checkpoint WHERE feed = :f FOR UPDATE"),
                            {"f": checkpoint_name(LEGACY)})
            write(5)

            def a_waits_in_its_batch():
                with admin.connect() as conn:
                    return conn.execute(text(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = "
                        "'coexist-a' AND wait_event_type = 'Lock' AND query ILIKE "
                        "'UPDATE cdc_checkpoint%'")).scalar()

            backend = wait_until(a_waits_in_its_batch, SETTLE_S, "a's batch reaches its commit")
            a.signal(stop_signal)
            blocker.rollback()  # a's update goes through (if a is paused); a cannot commit
        wait_until(lambda: d.holder_pid() == b.pid, TAKEOVER_S, "b takes the capture over")

        def gone():
            with admin.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"),
                                    {"p": backend}).scalar() == 0

        assert gone(), "the server ended the stopped router's transaction"
        wait_until(d.caught_up, SETTLE_S, "b routes what a could not commit")
        if stop_signal == signal.SIGSTOP:
            a.signal(signal.SIGCONT)
            wait_until(lambda: "lost the capture lease capture.legacy" in a.output(), SETTLE_S,
                       "a learns it lost the lease")
            assert d.routed(a) == 5, "a committed no batch after the takeover"
        assert d.routed(b) == 5
        assert d.holder_pid() == b.pid
        assert assert_each_change_routed_exactly_once(d) == 10
    finally:
        admin.dispose()

"""A switch drains what the broker holds (issue 9, step 3 of the reproduction), from the CLI
as an operator runs it, with ``coexist router`` and ``coexist worker`` as OS processes: on
the embedded default and on RabbitMQ + PostgreSQL.

Customer is in shadow; the only worker is stopped; a person updates 20 customers in the
legacy ERP, so 20 writes wait in ``coexist.write.cloud`` with no consumer.  ``coexist
status`` needs attention naming that queue, ``cutover plan customer cloud`` names the
backlog, ``cutover set customer cloud --wait-timeout 3`` exits 1 naming the 20 outstanding
messages and changes nothing; once a worker runs, ``cutover set`` waits for it, switches
and says drained.  Then the same for the rollback, with 20 cloud edits waiting in
``coexist.write.legacy``.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import insert

from bus.db import create_state_engine
from coexistence.flags import FlagState, Mode, Rollout
from coexistence.sample import iter_customers
from tests.support import cloud_sim
from tests.support import deployment as deployment_support
from tests.support.processes import (
    ROOT,
    Process,
    coexist_env,
    coexist_executable,
    extra_pg_schema,
    wait_until,
)
from workers.flags import SqlFlagStore, SqlPreflightFacts
from workers.reconcile.store import ReconcileRun

pytestmark = pytest.mark.integration

simulator, sim = cloud_sim.simulator, cloud_sim.sim

#: Customers a person edits while no worker runs.
N = 20
#: Longest wait for a process to do what it is asked (a bound, not a figure).
WAIT_S = 60


class Deployment(deployment_support.Deployment):
    def __init__(self, tmp_path, env: dict[str, str], state_url: str, legacy_url: str):
        super().__init__(tmp_path, env, state_url, legacy_url)
        self.facts = SqlPreflightFacts(self.state)

    def start(self, command: str) -> Process:
        """Start ``coexist COMMAND`` (not waiting for it: see ``started``)."""
        n = sum(1 for p in self.procs if p.args[0] == command)
        return self.spawn([command, "--log-level", "INFO"], f"{command}{n}.log")

    @staticmethod
    def started(proc: Process) -> Process:
        return deployment_support.Deployment.started(proc, WAIT_S)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(coexist_executable() + list(args), env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=WAIT_S)

    def in_broker(self) -> int:
        pending = self.facts.pending("customer")
        return 0 if pending is None else pending.in_broker

    def flag(self):
        return SqlFlagStore(self.state).load()["customer"]


@pytest.fixture(params=["embedded", "rabbitmq_postgresql"])
def deployment(request, tmp_path, sim):
    if request.param == "embedded":
        state_url = f"sqlite:///{tmp_path / 'state.db'}"
        legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
        settings: dict[str, str] = {}
        legacy_schema = None
    else:
        state_url = request.getfixturevalue("pg_url")
        rabbit_url, _vhost = request.getfixturevalue("fresh_rabbit_vhost")
        legacy_schema = extra_pg_schema(request.getfixturevalue("pg_database_url"))
        legacy_url = legacy_schema.__enter__()
        settings = {"broker_url": rabbit_url, "broker_management_url": "off"}
    try:
        deployment_support.prepare(state_url, legacy_url)
        state = create_state_engine(state_url)
        store = SqlFlagStore(state)
        before = store.load()["customer"]
        store.commit(before, FlagState("customer", Mode.SHADOW, Mode.SHADOW, Rollout(), 1),
                     actor="alice", reason="pilot", action="set")
        state.dispose()
        env = coexist_env(tmp_path, state_url=state_url, legacy_url=legacy_url,
                          cloud_url=sim.url, actor="maria", **settings)
        with deployment_support.running(Deployment(tmp_path, env, state_url, legacy_url)) as d:
            yield d
    finally:
        if legacy_schema is not None:
            legacy_schema.__exit__(None, None, None)


def reconciled(d: Deployment) -> None:
    """A reconciliation of customer just now with no drift (what the drift guard needs)."""
    now = datetime.now(UTC)
    with d.state.begin() as conn:
        conn.execute(insert(ReconcileRun.__table__).values(
            id=str(uuid.uuid4()), domain="customer", started_at=now, finished_at=now,
            status="ok", drift_pct=0.0, tolerances="", detail=""))


# Eleven coexist processes in a row: about 25 s at a load average of 2, 60 s at 12 (measured).
@pytest.mark.timeout(300)
def test_set_and_rollback_wait_for_what_the_broker_holds_and_say_what_is_outstanding(
        deployment, sim):
    d = deployment
    customers = list(iter_customers(N, seed=9))
    router, worker = d.start("router"), d.start("worker")
    d.started(router), d.started(worker)
    for c in customers:
        d.legacy.person_upsert(c, "JSMITH")
    wait_until(lambda: d.facts.pending("customer") is not None
               and d.facts.pending("customer").total == 0 and len(sim.changes()) >= N,
               WAIT_S, "the first copies applied to the cloud")
    reconciled(d)
    assert worker.stop() == 0, worker.output()

    # A person updates 20 customers in the legacy ERP: 20 writes wait with no consumer.
    for c in customers:
        d.legacy.person_upsert(c.model_copy(update={"credit_limit": Decimal("7777.03")}), "JSMITH")
    wait_until(lambda: d.in_broker() == N, WAIT_S, "20 writes in the broker")

    status = d.cli("status")
    assert status.returncode == 1, status.stdout + status.stderr
    assert f"queue coexist.write.cloud holds {N} message(s) and has no consumer" in status.stdout

    plan = d.cli("cutover", "plan", "customer", "cloud")
    assert plan.returncode == 1, plan.stdout + plan.stderr
    assert (f"FAIL backlog: {N} customer message(s) routed but not yet applied ({N} in the "
            f"broker, 0 unsent) [coexist.write.cloud: {N}]") in plan.stdout

    refused = d.cli("cutover", "set", "customer", "cloud", "--reason", "wave 2",
                    "--wait-timeout", "3")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert (f"customer: {N} message(s) routed under flag version <= 1 not yet applied ({N} "
            f"in the broker, 0 unsent) [coexist.write.cloud: {N}] after 3 s; the flag was not "
            "changed") in refused.stdout + refused.stderr
    assert "coexist worker" in refused.stderr and "--no-wait" in refused.stderr
    assert (d.flag().mode.value, d.flag().version) == ("shadow", 1)

    worker = d.start("worker")  # `cutover set` waits for it to apply the 20 writes
    done = d.cli("cutover", "set", "customer", "cloud", "--reason", "wave 2",
                 "--wait-timeout", str(WAIT_S))
    assert done.returncode == 0, done.stdout + done.stderr
    # The worker may have applied some or all of them before the switch looked: whatever
    # was left when it looked is named, and none is left after.
    assert re.search(r"customer: the \d+ message\(s\) routed under flag version <= 1 before "
                     r"this switch: applied, refused or recorded", done.stdout) or \
        "customer: no message routed under flag version <= 1 was waiting" in done.stdout
    assert "in-flight customer work under older flag versions: drained" in done.stdout
    assert (d.flag().mode.value, d.flag().version) == ("cloud", 2)
    assert d.facts.pending("customer").total == 0

    # Rollback: customer in cloud, no worker; a person edits 20 customers in the cloud.
    assert worker.stop() == 0, worker.output()
    for c in customers:
        sim.person_upsert(c.model_copy(update={"credit_limit": Decimal("5555.00")}), "ana.cloud")
    wait_until(lambda: d.in_broker() == N, WAIT_S, "20 writes to legacy in the broker")
    refused = d.cli("cutover", "rollback", "customer", "--reason", "drill",
                    "--wait-timeout", "1")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert (f"customer: {N} message(s) routed under flag version <= 2 not yet applied ({N} "
            f"in the broker, 0 unsent) [coexist.write.legacy: {N}] after 1 s; the flag was "
            "not changed") in refused.stdout + refused.stderr
    assert (d.flag().mode.value, d.flag().version) == ("cloud", 2)

    d.start("worker")
    done = d.cli("cutover", "rollback", "customer", "--reason", "drill",
                 "--wait-timeout", str(WAIT_S))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "in-flight customer work under older flag versions: drained" in done.stdout
    assert (d.flag().mode.value, d.flag().version) == ("shadow", 3)
    # The SoR's edits reached the legacy ERP before it became the SoR again.
    assert {d.legacy.get("customer", c.key).credit_limit for c in customers} == {
        Decimal("5555.00")}

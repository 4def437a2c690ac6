"""The CRM channel in the real processes, against the CRM simulator process.

* ``coexist run`` (embedded broker): a person's edit in the legacy ERP reaches the CRM
  through the router's fan-out and the ``crm`` consumer; a person's new CRM account comes
  back through the inbound poller as a command, becomes a customer in the SoR (writer
  ``COEXCRM``), and its number flows back onto the same CRM account.
* ``coexist router`` + two ``coexist worker`` on RabbitMQ: one worker is killed with
  SIGKILL while the CRM is taking a few hundred accounts; afterwards every account is in
  the CRM exactly once at the SoR's version (the simulator's store and change feed are
  the judge), and the people's CRM accounts created meanwhile became one customer each
  although two workers poll the feed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import datetime

import pytest
from sqlalchemy import create_engine, text

from coexistence.router import routed_version
from coexistence.sample import SampleSpec
from tests.support import cloud_sim, crm_sim
from tests.support.crm_world import (
    COEXIST,
    WAIT_S,
    account_creates,
    crm_accounts,
    crm_home,
    keyed_accounts,
    logs,
    start,
    stop,
    wait_for,
)
from workers.crm import state as crm_state
from workers.crm.handlers import FAULT_KILL_AFTER_SOR_CREATE
from workers.crm.status import onboarding_time
from workers.db import create_state_engine
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.numbering import FIRST_CUSTOMER_NUMBER
from workers.legacy_erp.schema import create_legacy_engine

simulator, sim = cloud_sim.simulator, cloud_sim.sim
crm_simulator, crm = crm_sim.crm_simulator, crm_sim.crm

pytestmark = pytest.mark.integration

SPEC = SampleSpec(customers=160, seed=41)


def test_coexist_run_syncs_the_crm_both_ways(tmp_path, sim, crm):
    env, home = crm_home(tmp_path, crm, sim.url)
    legacy_engine = create_legacy_engine(f"sqlite:///{home / 'legacy.db'}")
    legacy = LegacyErp(legacy_engine)
    proc = start("run", env, home)
    try:
        customers = [SPEC.record("customer", i) for i in range(5)]
        for c in customers:
            legacy.person_upsert(c, "JSMITH")
        wait_for(lambda: set(keyed_accounts(crm)) >= {c.key for c in customers},
                 f"the CRM showing the legacy ERP's customers\n{logs(home)}", proc)
        new = crm.person_create("rep1", "Account", {"Name": "Walk-in Hardware",
                                                    "BillingPostalCode": "80202"}).json()["id"]

        def created():
            # (the legacy ERP keeps names in upper case)
            return [c for c in legacy.stream("customer") if c.name.upper() == "WALK-IN HARDWARE"]

        [made] = wait_for(created, f"the CRM account as a customer in the SoR\n{logs(home)}",
                          proc)
        # The SoR's customer flows back onto the same CRM account, keyed and numbered.
        account = wait_for(lambda: (a := crm_accounts(crm)[new])["AccountNumber"] and a,
                           "the number back in the CRM", proc)
        assert account["Coexist_Id__c"] == made.key
        # The SoR gave the number: the legacy ERP's sequence, not coexist's 9000000001.
        assert made.key == str(FIRST_CUSTOMER_NUMBER) == account["AccountNumber"]
        assert len([a for a in crm_accounts(crm).values()
                    if a["Name"].upper() == "WALK-IN HARDWARE"]) == 1
        # The consumer that wrote the number completed the onboarding (its time is known).
        state = create_state_engine(f"sqlite:///{home / 'state.db'}")
        try:
            wait_for(lambda: onboarding_time(state)["completed"] == 1,
                     "the onboarding completed in coexist's state", proc)
            decision = crm_state.decision_of(state, new)
        finally:
            state.dispose()
        status = subprocess.run([COEXIST, "status", "--format", "json"], env=env,
                                capture_output=True, text=True, timeout=WAIT_S)
    finally:
        stop(proc)
        legacy_engine.dispose()
    assert proc.returncode == 0, logs(home)
    assert "Traceback" not in (home / "run.log").read_text()
    report = json.loads(status.stdout)
    [sub] = report["subscriptions"]
    assert sub["crm"]["configured"] and not sub["crm"]["paused"]
    assert sub["crm"]["budget_max"] and sub["crm"]["budget_used"] > 0
    assert sub["crm"]["inbound_checkpoint"] > 0
    assert report["crm"] == sub["crm"]  # what the console's channel panel reads
    # Onboarding time runs from the account's CreatedDate in the CRM to the number back.
    assert crm_state._aware(decision.crm_created_at) == datetime.fromisoformat(
        account["CreatedDate"])
    times = report["crm"]["onboarding_time"]
    assert times["completed"] == 1 and times["open"] == 0
    assert times["median_s"] == times["p95_s"] == round((crm_state._aware(
        decision.completed_at) - crm_state._aware(decision.crm_created_at)).total_seconds(), 1)
    assert 0 < times["median_s"] < WAIT_S


def test_kill_9_after_the_sor_created_an_onboarded_customer_makes_no_second(
        tmp_path, sim, crm):
    """The process dies (SIGKILL, by the fault point) right after the legacy ERP created
    the customer of a new CRM account and before coexist recorded its number; the
    restarted process asks the SoR again under the account's idempotency key and gets the
    customer it made: one customer, its number on the account."""
    env, home = crm_home(tmp_path, crm, sim.url)
    legacy_engine = create_legacy_engine(f"sqlite:///{home / 'legacy.db'}")
    legacy = LegacyErp(legacy_engine)

    def created():
        return [c for c in legacy.stream("customer") if c.name.upper() == "WALK-IN HARDWARE"]

    killed = start("run", {**env, FAULT_KILL_AFTER_SOR_CREATE: "1"}, home, "killed")
    proc = None
    try:
        new = crm.person_create("rep1", "Account", {"Name": "Walk-in Hardware",
                                                    "BillingPostalCode": "80202"}).json()["id"]
        killed.wait(WAIT_S)
        assert killed.returncode == -signal.SIGKILL, logs(home)
        [made] = created()
        state = create_state_engine(f"sqlite:///{home / 'state.db'}")
        try:
            pending = crm_state.decision_of(state, new)
            assert pending.customer_key == crm_state.NUMBER_PENDING
        finally:
            state.dispose()
        assert not crm_accounts(crm)[new]["Coexist_Id__c"]
        proc = start("run", env, home)
        account = wait_for(lambda: (a := crm_accounts(crm)[new])["AccountNumber"] and a,
                           f"the number back in the CRM\n{logs(home)}", proc)
        assert account["Coexist_Id__c"] == account["AccountNumber"] == made.key
        assert [c.key for c in created()] == [made.key]
        assert len([a for a in crm_accounts(crm).values()
                    if a["Name"].upper() == "WALK-IN HARDWARE"]) == 1
        state = create_state_engine(f"sqlite:///{home / 'state.db'}")
        try:
            decision = crm_state.decision_of(state, new)
        finally:
            state.dispose()
        assert (decision.decision, decision.customer_key) == ("create", made.key)
    finally:
        stop(*(p for p in (killed, proc) if p is not None))
        legacy_engine.dispose()
    assert proc.returncode == 0, logs(home)
    assert "Traceback" not in (home / "run.log").read_text()


def _channel_rows(state) -> int:
    """Messages the router queued for the crm channel (outbox rows, sent or not)."""
    with state.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM outbox WHERE queue_name = "
                                 "'coexist.channel.crm'")).scalar_one()


def test_kill_9_of_a_crm_worker_mid_batch_loses_nothing_and_applies_nothing_twice(
        tmp_path, sim, crm, fresh_rabbit_vhost, pg_url):
    amqp, _vhost = fresh_rabbit_vhost
    env, home = crm_home(tmp_path, crm, sim.url, state_url=pg_url, broker_url=amqp)
    legacy_engine = create_legacy_engine(f"sqlite:///{home / 'legacy.db'}")
    legacy = LegacyErp(legacy_engine)
    customers = list(SPEC.iter("customer"))
    # Slow CRM answers, so the kill lands while the worker has requests in flight: the
    # channel runs on the batch consumer, one sObject Collections request per batch.
    crm.faults(latency_ms=1500)
    router = start("router", env, home)
    w1 = start("worker", env, home, "worker1", "--threads", "4")
    w2 = start("worker", env, home, "worker2", "--threads", "4")
    procs = [router, w1, w2]
    try:
        for c in customers:
            legacy.person_upsert(c, "JSMITH")
        # Two people type new companies into the CRM while both workers poll its feed.
        people = [crm.person_create("rep1", "Account", {"Name": f"Crash Test Co {i}",
                                                        "BillingPostalCode": "60601"}
                                    ).json()["id"] for i in range(2)]
        state = create_engine(pg_url)
        try:
            wait_for(lambda: _channel_rows(state) >= len(customers),
                     f"the router fanning the customers out to the CRM\n{logs(home)}", *procs)
        finally:
            state.dispose()
        time.sleep(0.5)  # the workers' first collection requests are in flight (1.5 s each)
        w1.send_signal(signal.SIGKILL)
        w1.wait(WAIT_S)
        # (the two people's accounts are keyed too once the SoR numbered them)
        assert len(keyed_accounts(crm)) < len(customers), "the kill came after the whole load"
        w3 = start("worker", env, home, "worker3", "--threads", "4")
        procs = [router, w2, w3]
        crm.faults(latency_ms=0)
        keys = {c.key for c in customers}
        wait_for(lambda: keys <= set(keyed_accounts(crm)),
                 f"every customer in the CRM\n{logs(home)}", *procs, timeout_s=2 * WAIT_S)
        wait_for(lambda: all(crm_accounts(crm)[p]["AccountNumber"] for p in people),
                 f"the people's accounts numbered by the SoR\n{logs(home)}", *procs)
        shown = keyed_accounts(crm)
        made = [c for c in legacy.stream("customer")
                if c.name.upper().startswith("CRASH TEST CO")]
    finally:
        stop(*procs)
        legacy_engine.dispose()
    # Nothing lost, nothing twice: one account per customer, each at the version of the
    # legacy ERP's one change (the router's routed version); no account made twice.
    assert len(crm_accounts(crm)) == len(shown) == len(customers) + 2
    routed = _routed(pg_url)
    assert {k: int(shown[k]["Coexist_Version__c"]) for k in keys} == {
        k: v for k, v in routed.items() if k in keys}
    # Two CRM accounts, exactly two customers created in the SoR, each the account it came
    # from (onboarding's decision, the outbox command and the checkpoint commit together).
    assert sorted(c.name.upper() for c in made) == ["CRASH TEST CO 0", "CRASH TEST CO 1"]
    assert {shown[c.key]["Id"] for c in made} == set(people)
    creates = account_creates(crm)
    assert {k: n for k, n in creates.items() if n != 1} == {}
    # The people's customers are routed too (the SoR numbered and created them), each shown.
    assert {c.key for c in made} <= set(routed)
    assert "Traceback" not in (home / "worker2.log").read_text() + \
        (home / "worker3.log").read_text()


def _routed(state_url: str) -> dict[str, int]:
    """The newest routed version of each customer the router fanned out to the CRM."""
    from sqlalchemy import select

    from bus.envelope import from_dict
    from bus.outbox import OutboxRecord

    engine = create_state_engine(state_url)
    t = OutboxRecord.__table__
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(t.c.payload).where(
                t.c.queue_name == "coexist.channel.crm")).scalars().all()
    finally:
        engine.dispose()
    out: dict[str, int] = {}
    for raw in rows:
        env = from_dict(json.loads(raw))
        version = routed_version(env.flag_version, env.source_version)
        out[env.key] = max(out.get(env.key, 0), version)
    return out

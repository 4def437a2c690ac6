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
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from coexistence.flags import FlagState, Mode, Rollout
from coexistence.router import routed_version
from coexistence.sample import SampleSpec
from tests.support import cloud_sim, crm_sim, processes
from workers.crm import state as crm_state
from workers.crm.handlers import FAULT_KILL_AFTER_SOR_CREATE
from workers.crm.status import onboarding_time
from workers.db import create_state_engine
from workers.flags import SqlFlagStore
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.numbering import FIRST_CUSTOMER_NUMBER
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.migrate import upgrade as upgrade_schema

simulator, sim = cloud_sim.simulator, cloud_sim.sim
crm_simulator, crm = crm_sim.crm_simulator, crm_sim.crm

pytestmark = pytest.mark.integration

COEXIST = str(Path(sys.executable).with_name("coexist"))
#: Longest wait for the processes to do what they are asked, in seconds (a bound).
WAIT_S = 60
SPEC = SampleSpec(customers=160, seed=41)


def _home(tmp_path: Path, crm, cloud_url: str, *, state_url: str | None = None,
          broker_url: str | None = None, mode: Mode = Mode.LEGACY) -> tuple[dict, Path]:
    state = create_state_engine(state_url or f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(state)
    store = SqlFlagStore(state)
    store.commit(store.load()["customer"],
                 FlagState("customer", mode, mode, Rollout(), 1),
                 actor="alice", reason="CRM pilot", action="set")
    state.dispose()
    legacy = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(legacy)
    legacy.dispose()
    (tmp_path / "coexist.toml").write_text(
        '[subscriptions.crm]\ndomains = ["customer"]\n\n'
        f'[crm]\nurl = "{crm.url}"\nclient_id = "{crm.client_id}"\npoll_interval_s = 0.3\n'
        'pause_s = 2\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("COEXIST_")
           or k.startswith(("COEXIST_TEST", "COEXIST_REQUIRE"))}
    env.update({"COEXIST_HOME": str(tmp_path), "COEXIST_CLOUD_URL": cloud_url,
                "COEXIST_CRM_CLIENT_SECRET": crm.client_secret})
    if state_url:
        env["COEXIST_STATE_URL"] = state_url
    if broker_url:
        env["COEXIST_BROKER_URL"] = broker_url
    return env, tmp_path


def _start(command: str, env: dict, home: Path, name: str | None = None,
           *args: str) -> subprocess.Popen:
    with open(home / f"{name or command}.log", "w") as log:
        return subprocess.Popen([COEXIST, command, "--log-level", "INFO", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def _wait(predicate, what: str, *procs: subprocess.Popen, timeout_s: float = WAIT_S):
    return processes.wait_until(predicate, timeout_s, what, alive=procs)


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _accounts(crm) -> dict[str, dict]:
    rows = crm.query("SELECT Id, Name, AccountNumber, Coexist_Id__c, Coexist_Version__c, "
                     "CreatedDate FROM Account")
    return {r["Id"]: r for r in rows}


def _keyed(crm) -> dict[str, dict]:
    return {r["Coexist_Id__c"]: r for r in _accounts(crm).values() if r["Coexist_Id__c"]}


def _logs(home: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in home.glob("*.log"))


def test_coexist_run_syncs_the_crm_both_ways(tmp_path, sim, crm):
    env, home = _home(tmp_path, crm, sim.url)
    legacy_engine = create_legacy_engine(f"sqlite:///{home / 'legacy.db'}")
    legacy = LegacyErp(legacy_engine)
    proc = _start("run", env, home)
    try:
        customers = [SPEC.record("customer", i) for i in range(5)]
        for c in customers:
            legacy.person_upsert(c, "JSMITH")
        _wait(lambda: set(_keyed(crm)) >= {c.key for c in customers},
              f"the CRM showing the legacy ERP's customers\n{_logs(home)}", proc)
        new = crm.person_create("rep1", "Account", {"Name": "Walk-in Hardware",
                                                    "BillingPostalCode": "80202"}).json()["id"]

        def created():
            # (the legacy ERP keeps names in upper case)
            return [c for c in legacy.stream("customer") if c.name.upper() == "WALK-IN HARDWARE"]

        [made] = _wait(created, f"the CRM account as a customer in the SoR\n{_logs(home)}",
                       proc)
        # The SoR's customer flows back onto the same CRM account, keyed and numbered.
        account = _wait(lambda: (a := _accounts(crm)[new])["AccountNumber"] and a,
                        "the number back in the CRM", proc)
        assert account["Coexist_Id__c"] == made.key
        # The SoR gave the number: the legacy ERP's sequence, not coexist's 9000000001.
        assert made.key == str(FIRST_CUSTOMER_NUMBER) == account["AccountNumber"]
        assert len([a for a in _accounts(crm).values()
                    if a["Name"].upper() == "WALK-IN HARDWARE"]) == 1
        # The consumer that wrote the number completed the onboarding (its time is known).
        state = create_state_engine(f"sqlite:///{home / 'state.db'}")
        try:
            _wait(lambda: onboarding_time(state)["completed"] == 1,
                  "the onboarding completed in coexist's state", proc)
            decision = crm_state.decision_of(state, new)
        finally:
            state.dispose()
        status = subprocess.run([COEXIST, "status", "--format", "json"], env=env,
                                capture_output=True, text=True, timeout=WAIT_S)
    finally:
        _stop(proc)
        legacy_engine.dispose()
    assert proc.returncode == 0, _logs(home)
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
    env, home = _home(tmp_path, crm, sim.url)
    legacy_engine = create_legacy_engine(f"sqlite:///{home / 'legacy.db'}")
    legacy = LegacyErp(legacy_engine)

    def created():
        return [c for c in legacy.stream("customer") if c.name.upper() == "WALK-IN HARDWARE"]

    killed = _start("run", {**env, FAULT_KILL_AFTER_SOR_CREATE: "1"}, home, "killed")
    proc = None
    try:
        new = crm.person_create("rep1", "Account", {"Name": "Walk-in Hardware",
                                                    "BillingPostalCode": "80202"}).json()["id"]
        killed.wait(WAIT_S)
        assert killed.returncode == -signal.SIGKILL, _logs(home)
        [made] = created()
        state = create_state_engine(f"sqlite:///{home / 'state.db'}")
        try:
            pending = crm_state.decision_of(state, new)
            assert pending.customer_key == crm_state.NUMBER_PENDING
        finally:
            state.dispose()
        assert not _accounts(crm)[new]["Coexist_Id__c"]
        proc = _start("run", env, home)
        account = _wait(lambda: (a := _accounts(crm)[new])["AccountNumber"] and a,
                        f"the number back in the CRM\n{_logs(home)}", proc)
        assert account["Coexist_Id__c"] == account["AccountNumber"] == made.key
        assert [c.key for c in created()] == [made.key]
        assert len([a for a in _accounts(crm).values()
                    if a["Name"].upper() == "WALK-IN HARDWARE"]) == 1
        state = create_state_engine(f"sqlite:///{home / 'state.db'}")
        try:
            decision = crm_state.decision_of(state, new)
        finally:
            state.dispose()
        assert (decision.decision, decision.customer_key) == ("create", made.key)
    finally:
        _stop(*(p for p in (killed, proc) if p is not None))
        legacy_engine.dispose()
    assert proc.returncode == 0, _logs(home)
    assert "Traceback" not in (home / "run.log").read_text()


def _channel_rows(state) -> int:
    """Messages the router queued for the crm channel (outbox rows, sent or not)."""
    with state.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM outbox WHERE queue_name = "
                                 "'coexist.channel.crm'")).scalar_one()


def test_kill_9_of_a_crm_worker_mid_batch_loses_nothing_and_applies_nothing_twice(
        tmp_path, sim, crm, fresh_rabbit_vhost, pg_url):
    amqp, _vhost = fresh_rabbit_vhost
    env, home = _home(tmp_path, crm, sim.url, state_url=pg_url, broker_url=amqp)
    legacy_engine = create_legacy_engine(f"sqlite:///{home / 'legacy.db'}")
    legacy = LegacyErp(legacy_engine)
    customers = list(SPEC.iter("customer"))
    # Slow CRM answers, so the kill lands while the worker has requests in flight: the
    # channel runs on the batch consumer, one sObject Collections request per batch.
    crm.faults(latency_ms=1500)
    router = _start("router", env, home)
    w1 = _start("worker", env, home, "worker1", "--threads", "4")
    w2 = _start("worker", env, home, "worker2", "--threads", "4")
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
            _wait(lambda: _channel_rows(state) >= len(customers),
                  f"the router fanning the customers out to the CRM\n{_logs(home)}", *procs)
        finally:
            state.dispose()
        time.sleep(0.5)  # the workers' first collection requests are in flight (1.5 s each)
        w1.send_signal(signal.SIGKILL)
        w1.wait(WAIT_S)
        # (the two people's accounts are keyed too once the SoR numbered them)
        assert len(_keyed(crm)) < len(customers), "the kill came after the whole load"
        w3 = _start("worker", env, home, "worker3", "--threads", "4")
        procs = [router, w2, w3]
        crm.faults(latency_ms=0)
        keys = {c.key for c in customers}
        _wait(lambda: keys <= set(_keyed(crm)), f"every customer in the CRM\n{_logs(home)}",
              *procs, timeout_s=2 * WAIT_S)
        _wait(lambda: all(_accounts(crm)[p]["AccountNumber"] for p in people),
              f"the people's accounts numbered by the SoR\n{_logs(home)}", *procs)
        shown = _keyed(crm)
        made = [c for c in legacy.stream("customer")
                if c.name.upper().startswith("CRASH TEST CO")]
    finally:
        _stop(*procs)
        legacy_engine.dispose()
    # Nothing lost, nothing twice: one account per customer, each at the version of the
    # legacy ERP's one change (the router's routed version); no account made twice.
    assert len(_accounts(crm)) == len(shown) == len(customers) + 2
    routed = _routed(pg_url)
    assert {k: int(shown[k]["Coexist_Version__c"]) for k in keys} == {
        k: v for k, v in routed.items() if k in keys}
    # Two CRM accounts, exactly two customers created in the SoR, each the account it came
    # from (onboarding's decision, the outbox command and the checkpoint commit together).
    assert sorted(c.name.upper() for c in made) == ["CRASH TEST CO 0", "CRASH TEST CO 1"]
    assert {shown[c.key]["Id"] for c in made} == set(people)
    creates = _creates(crm)
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


def _creates(crm) -> dict[str, int]:
    """Account CREATE events in the CRM's change feed, by account id."""
    from workers.crm.client import CrmClient

    counts: dict[str, int] = {}
    client = CrmClient(crm.url, client_id=crm.client_id, client_secret=crm.client_secret)
    try:
        after = 0
        while events := client.changes(after, 1000):
            for e in events:
                if e.sobject == "Account" and e.change_type == "CREATE":
                    counts[e.record_id] = counts.get(e.record_id, 0) + 1
            after = events[-1].replay_id
    finally:
        client.close()
    return counts

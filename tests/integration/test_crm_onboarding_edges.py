"""Onboarding's two crash edges, through the real ``coexist run`` process.

Both start where ``test_crm_processes`` kills a ``coexist run``: SIGKILLed by the fault
point right after the SoR created the customer of a person's new CRM account and before
coexist recorded its number.

* The cloud is the SoR and the rep edits the account before the process is back: the
  create asked again must send the body it first sent (the cloud answers another body
  under the same Idempotency-Key with 422), so the customer made before the crash gets
  its number onto the account: one customer, no ``CrmOnboardingRefused``.
* The legacy ERP is the SoR and the inbound poller stays away for long (another holder
  keeps its lease; the decision is old): the SoR's customer, routed to the CRM meanwhile,
  stored as asked or very differently (another name and tax id: nothing to match it by),
  is recognised by the SoR's own record of the create's idempotency key and lands on the
  person's account without the poller, instead of reaching the CRM as an account of its
  own (a ``CrmDuplicateAccount`` later) or meeting the CRM's duplicate rule (refused).
"""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from bus.exception_store import ExceptionStore
from coexistence.flags import Mode
from tests.support import cloud_sim, crm_sim
from tests.support.crm_world import (
    COEXIST,
    WAIT_S,
    crm_accounts,
    crm_home,
    logs,
    start,
    stop,
    wait_for,
)
from workers.cloud_erp import CloudErp
from workers.crm import state as crm_state
from workers.crm.consumer import INBOUND_LEASE, PENDING_HOLD_S
from workers.crm.handlers import FAULT_KILL_AFTER_SOR_CREATE
from workers.db import create_state_engine
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine
from workers.router.lease import Lease

simulator, sim = cloud_sim.simulator, cloud_sim.sim
crm_simulator, crm = crm_sim.crm_simulator, crm_sim.crm

pytestmark = pytest.mark.integration

ACCOUNT = {"Name": "Walk-in Hardware", "BillingStreet": "1 Main St", "BillingCity": "Denver",
           "BillingState": "CO", "BillingPostalCode": "80202", "BillingCountry": "US"}


def _exceptions(home) -> list[str]:
    state = create_state_engine(f"sqlite:///{home / 'state.db'}")
    try:
        return sorted(r.error_type for r in ExceptionStore(state).list())
    finally:
        state.dispose()


def _killed_after_the_sor_create(env, home, crm) -> str:
    """A person's new account; ``coexist run`` dies right after the SoR's create."""
    killed = start("run", {**env, FAULT_KILL_AFTER_SOR_CREATE: "1"}, home, "killed")
    try:
        new = crm.person_create("rep1", "Account", ACCOUNT).json()["id"]
        killed.wait(WAIT_S)
    finally:
        stop(killed)
    assert killed.returncode == -signal.SIGKILL, logs(home)
    state = create_state_engine(f"sqlite:///{home / 'state.db'}")
    try:
        assert crm_state.decision_of(state, new).customer_key == crm_state.NUMBER_PENDING
    finally:
        state.dispose()
    assert not crm_accounts(crm)[new]["Coexist_Id__c"]
    return new


def test_a_cloud_create_asked_again_after_the_account_was_edited_is_the_same_customer(
        tmp_path, sim, crm):
    env, home = crm_home(tmp_path, crm, sim.url, mode=Mode.CLOUD)
    new = _killed_after_the_sor_create(env, home, crm)
    with CloudErp(sim.url, attempts=1) as cloud:
        [made] = list(cloud.stream("customer"))
    # The rep corrects the street while coexist is down: the account now says otherwise
    # than the body the cloud took under the account's Idempotency-Key.
    crm.person_update("rep1", "Account", new, {"BillingStreet": "12 Main St"}
                      ).raise_for_status()
    proc = start("run", env, home)
    try:
        account = wait_for(lambda: (a := crm_accounts(crm)[new])["AccountNumber"] and a,
                           f"the cloud's number on the person's account\n{logs(home)}", proc)
        with CloudErp(sim.url, attempts=1) as cloud:
            customers = list(cloud.stream("customer"))
    finally:
        stop(proc)
    assert account["Coexist_Id__c"] == account["AccountNumber"] == made.key
    assert [c.key for c in customers] == [made.key]
    assert [a["Id"] for a in crm_accounts(crm).values()
            if a["Name"].upper() == "WALK-IN HARDWARE"] == [new]
    assert "CrmOnboardingRefused" not in _exceptions(home)
    assert proc.returncode == 0, logs(home)
    assert "Traceback" not in (home / "run.log").read_text()


def _status(env) -> dict:
    done = subprocess.run([COEXIST, "status", "--format", "json"], env=env,
                          capture_output=True, text=True, timeout=WAIT_S)
    return json.loads(done.stdout)["crm"]


@pytest.mark.parametrize("stored", ["as asked", "very differently"])
def test_a_pending_create_s_customer_is_recognised_by_the_sor_s_record_of_it(
        tmp_path, sim, crm, stored):
    """The poller stays away (another holder keeps its lease) long after the crash, and
    the SoR's customer is routed to the CRM meanwhile, stored as asked or very
    differently (a person in the ERP changed its name and tax id since): the consumer asks
    the SoR which customer the create's idempotency key made (the legacy ERP's record of
    it), records the number and writes the customer onto the person's account: one
    account, no exception, without the poller.  Once the poller is back, nothing more."""
    env, home = crm_home(tmp_path, crm, sim.url)
    legacy_engine = create_legacy_engine(f"sqlite:///{home / 'legacy.db'}")
    legacy = LegacyErp(legacy_engine)
    state = create_state_engine(f"sqlite:///{home / 'state.db'}")
    # Another poller holds the feed's lease and does not poll (down, for this test).
    away = Lease(state, INBOUND_LEASE, "a poller that is away", ttl_s=3600)
    proc = None
    try:
        new = _killed_after_the_sor_create(env, home, crm)
        [made] = [c for c in legacy.stream("customer") if c.name.upper() == "WALK-IN HARDWARE"]
        if stored == "very differently":
            legacy.person_upsert(made.model_copy(update={
                "name": "Zenith Regional Supply Cooperative", "tax_id": "98-7654321"}),
                "JSMITH")
        # The crash was long ago (longer than every delivery is held for any pending
        # create); the killed process's lease runs out first.
        with state.begin() as conn:
            conn.execute(text("UPDATE crm_onboarding SET decided_at = :at"),
                         {"at": datetime.now(UTC) - timedelta(seconds=5 * PENDING_HOLD_S)})
        wait_for(away.try_acquire, "the feed's lease for the poller that is away")
        proc = start("run", env, home)
        account = wait_for(lambda: (a := crm_accounts(crm)[new])["Coexist_Version__c"] and a,
                           f"the customer written onto the person's account\n{logs(home)}",
                           proc)
        wait_for(lambda: not _status(env)["numbers_pending"], "no number pending", proc)
        assert away.held  # the poller was away all along
        # The poller is back: it finds the decision numbered and keys the account (the
        # same key): no second customer, no second account.
        away.release()
        wait_for(lambda: _status(env)["inbound_checkpoint"] > 0,
                 f"the poller reading the feed again\n{logs(home)}", proc)
        accounts = crm_accounts(crm)
        customers = list(legacy.stream("customer"))
    finally:
        if proc is not None:
            stop(proc)
        state.dispose()
        legacy_engine.dispose()
    assert account["Coexist_Id__c"] == account["AccountNumber"] == made.key
    assert [a["Id"] for a in accounts.values() if a["Coexist_Id__c"] == made.key] == [new]
    assert len(accounts) == 1
    assert [c.key for c in customers] == [made.key]
    if stored == "very differently":
        # (the SoR's values: the legacy ERP keeps 30 upper-case characters of a name)
        assert account["Name"].upper() == customers[0].name.upper()
        assert customers[0].name.upper().startswith("ZENITH REGIONAL")
        assert customers[0].tax_id == "98-7654321"
    # Not an account of its own (a ``CrmDuplicateAccount`` later), nor a write the CRM's
    # duplicate rule refused.
    assert _exceptions(home) == []
    assert proc.returncode == 0, logs(home)
    assert "Traceback" not in (home / "run.log").read_text()

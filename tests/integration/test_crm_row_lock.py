"""One record of a CRM batch locked (``UNABLE_TO_LOCK_ROW``), through ``coexist run``.

The simulator refuses the next saves of one account with ``UNABLE_TO_LOCK_ROW`` while
the legacy ERP's customers go to the CRM in sObject Collections of up to 200.  The
batch's other records settle with the batch (each saved once: one change event per
account in the CRM's feed, no second save of a neighbour), and the locked one alone is
retried by the bus until it lands: nothing lost, nothing applied twice, nothing in the
exception store.
"""

from __future__ import annotations

import pytest

from bus.exception_store import ExceptionStore
from coexistence.sample import SampleSpec
from tests.support import cloud_sim, crm_sim
from tests.support.crm_world import (
    account_creates,
    crm_accounts,
    crm_home,
    keyed_accounts,
    logs,
    start,
    stop,
    wait_for,
)
from workers.crm.client import CrmClient
from workers.db import create_state_engine
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine

simulator, sim = cloud_sim.simulator, cloud_sim.sim
crm_simulator, crm = crm_sim.crm_simulator, crm_sim.crm

pytestmark = pytest.mark.integration

SPEC = SampleSpec(customers=60, seed=43)
#: Saves of the locked account the simulator refuses before it takes one.
LOCKED_SAVES = 3


def _account_events(crm) -> dict[str, list[str]]:
    """Account change events in the CRM's feed (each one save), by account id."""
    out: dict[str, list[str]] = {}
    client = CrmClient(crm.url, client_id=crm.client_id, client_secret=crm.client_secret)
    try:
        after = 0
        while events := client.changes(after, 1000):
            for e in events:
                if e.sobject == "Account":
                    out.setdefault(e.record_id, []).append(e.change_type)
            after = events[-1].replay_id
    finally:
        client.close()
    return out


def test_a_locked_record_is_retried_alone_and_its_neighbours_settle_once(tmp_path, sim, crm):
    env, home = crm_home(tmp_path, crm, sim.url)
    env.update({"COEXIST_RETRY_MIN_BACKOFF_S": "0.2", "COEXIST_RETRY_MAX_BACKOFF_S": "1"})
    legacy_engine = create_legacy_engine(f"sqlite:///{home / 'legacy.db'}")
    legacy = LegacyErp(legacy_engine)
    customers = list(SPEC.iter("customer"))
    locked = customers[len(customers) // 2].key
    crm.faults(lock={locked: LOCKED_SAVES})
    # Written before the process starts: the router's first capture takes them together,
    # so the channel gets them in one or a few batches, the locked one among them.
    for c in customers:
        legacy.person_upsert(c, "JSMITH")
    proc = start("run", env, home)
    try:
        keys = {c.key for c in customers}
        wait_for(lambda: keys <= set(keyed_accounts(crm)),
                 f"every customer in the CRM\n{logs(home)}", proc)
        left = crm.admin.http.get("/admin/faults").json()["lock"][locked]
    finally:
        stop(proc)
        legacy_engine.dispose()
    assert proc.returncode == 0, logs(home)
    assert left == 0, "the locked account was not refused as often as set"
    shown = keyed_accounts(crm)
    assert len(crm_accounts(crm)) == len(shown) == len(customers)
    # Each account saved once (one CREATE, no second save at the same version): the
    # batch's neighbours of the locked account were not sent again one by one.
    events = _account_events(crm)
    assert {shown[k]["Id"]: events.get(shown[k]["Id"]) for k in keys} == {
        shown[k]["Id"]: ["CREATE"] for k in keys}
    assert {k: n for k, n in account_creates(crm).items() if n != 1} == {}
    state = create_state_engine(f"sqlite:///{home / 'state.db'}")
    try:
        assert ExceptionStore(state).list() == []
    finally:
        state.dispose()
    log = (home / "run.log").read_text()
    assert "Traceback" not in log
    assert "handling each alone" not in log, "the batch was split into single messages"

"""The HTTP adapter keeps the CRM contract against the CRM simulator over HTTP."""

from __future__ import annotations

import pytest

from tests.contracts.crm_contract import CrmContract, CrmHarness
from tests.support import crm_sim
from workers.crm.client import CrmClient
from workers.crm_sim.app import DEFAULT_RETENTION_S

crm_simulator, crm_sim_fixture = crm_sim.crm_simulator, crm_sim.crm


@pytest.fixture
def client(crm_sim_fixture):
    crm = CrmClient(crm_sim_fixture.url, client_id=crm_sim_fixture.client_id,
                    client_secret=crm_sim_fixture.client_secret, timeout_s=5.0)
    try:
        yield crm
    finally:
        crm.close()


class TestCrmClient(CrmContract):
    @pytest.fixture
    def harness(self, client, crm_sim_fixture):
        sim = crm_sim_fixture

        def create(sobject, fields, allow_duplicate):
            response = sim.person_create("jsmith", sobject, fields,
                                         allow_duplicate=allow_duplicate)
            response.raise_for_status()
            return response.json()["id"]

        def lock(key, times):
            sim.faults(lock={key: times})

        def pause(paused):
            sim.faults(limit_exceeded_s=3600 if paused else 0)

        def expire():
            sim.advance_clock(DEFAULT_RETENTION_S + 60)

        return CrmHarness(crm=client, person_create=create, lock=lock, pause=pause,
                          unavailable=lambda: sim.faults(next=["503"]), expire_events=expire)

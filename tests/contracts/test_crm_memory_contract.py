"""The in-memory CRM keeps the CRM contract (so tests built on it mean something)."""

from __future__ import annotations

import pytest

from tests.contracts.crm_contract import CrmContract, CrmHarness
from workers.crm_memory import InMemoryCrm


class TestInMemoryCrm(CrmContract):
    @pytest.fixture
    def harness(self):
        crm = InMemoryCrm()

        def create(sobject, fields, allow_duplicate):
            return crm.person_create(sobject, fields, allow_duplicate=allow_duplicate)

        def expire():
            crm.purge_events(crm.changes(0, 10**9)[-1].replay_id)

        return CrmHarness(crm=crm, person_create=create, lock=crm.lock, pause=crm.pause,
                          unavailable=crm.unavailable, expire_events=expire)

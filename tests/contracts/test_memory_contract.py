"""The in-memory fake keeps the ERP contract (so tests built on it mean something)."""

from __future__ import annotations

import pytest

from tests.contracts.erp_contract import ErpContract, ErpHarness
from workers.erp_memory import InMemoryErp


class TestInMemoryErp(ErpContract):
    @pytest.fixture
    def harness(self):
        erp = InMemoryErp()
        yield ErpHarness(erp=erp, feed=erp, person_upsert=erp.person_upsert)

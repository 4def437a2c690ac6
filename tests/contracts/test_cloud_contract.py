"""The cloud adapter keeps the ERP contract against the simulator, faults included."""

from __future__ import annotations

import pytest

from tests.contracts.erp_contract import ErpContract, ErpHarness
from tests.support.cloud_sim import SimulatorAdmin
from workers.cloud_erp import CloudErp
from workers.cloud_sim import start_simulator


@pytest.fixture(scope="session")
def simulator(tmp_path_factory):
    sim = start_simulator(tmp_path_factory.mktemp("cloud_contract") / "cloud.db")
    admin = SimulatorAdmin(sim)
    try:
        yield admin
    finally:
        admin.close()
        sim.stop()


@pytest.fixture
def sim(simulator):
    simulator.reset()
    return simulator


@pytest.fixture
def cloud(sim):
    # Short timeout and backoff so fault tests stay fast; same code paths as production.
    erp = CloudErp(sim.url, timeout_s=0.5, base_backoff_s=0.01, max_backoff_s=0.05)
    try:
        yield erp
    finally:
        erp.close()


class TestCloudErp(ErpContract):
    @pytest.fixture
    def harness(self, cloud, sim):
        return ErpHarness(erp=cloud, feed=cloud, person_upsert=sim.person_upsert)

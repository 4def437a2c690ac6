"""The cloud ERP simulator for tests: one real subprocess per session, reset per test."""

from __future__ import annotations

import pytest

from tests.support.shared import shared
from workers.cloud_sim import start_simulator
from workers.cloud_sim.admin import SimulatorAdmin


@pytest.fixture(scope="session")
def simulator(tmp_path_factory):
    """One simulator subprocess for the test session, whichever modules import this fixture
    (``tests.support.shared``)."""
    def start():
        sim = start_simulator(tmp_path_factory.mktemp("cloud_sim") / "cloud.db")
        admin = SimulatorAdmin(sim.url)

        def stop() -> None:
            try:
                admin.close()
            finally:
                sim.stop()
        return admin, stop

    with shared("cloud_sim", start) as admin:
        yield admin


@pytest.fixture
def sim(simulator):
    """The session's simulator, emptied and without faults."""
    simulator.reset()
    return simulator

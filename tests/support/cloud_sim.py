"""The cloud ERP simulator for tests: one real subprocess per session, reset per test."""

from __future__ import annotations

import pytest

from workers.cloud_sim import start_simulator
from workers.cloud_sim.admin import SimulatorAdmin


@pytest.fixture(scope="session")
def simulator(tmp_path_factory):
    """One simulator subprocess for the test session (import this fixture to use it)."""
    sim = start_simulator(tmp_path_factory.mktemp("cloud_sim") / "cloud.db")
    admin = SimulatorAdmin(sim.url)
    try:
        yield admin
    finally:
        admin.close()
        sim.stop()


@pytest.fixture
def sim(simulator):
    """The session's simulator, emptied and without faults."""
    simulator.reset()
    return simulator

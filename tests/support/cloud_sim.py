"""The cloud ERP simulator for tests: one real subprocess per session, reset per test."""

from __future__ import annotations

import httpx
import pytest

from coexistence.canonical import CanonicalRecord
from coexistence.translate.cloud import RESOURCES, from_canonical, to_json_dict
from workers.cloud_sim import RunningSimulator, start_simulator


class SimulatorAdmin:
    """Admin calls on a running simulator: reset, faults, a person's writes."""

    def __init__(self, sim: RunningSimulator):
        self.sim = sim
        self.url = sim.url
        self.http = httpx.Client(base_url=sim.url, timeout=10)

    def reset(self) -> None:
        self.http.post("/admin/reset").raise_for_status()

    def faults(self, **settings) -> dict:
        response = self.http.put("/admin/faults", json=settings)
        response.raise_for_status()
        return response.json()

    def person_upsert(self, record: CanonicalRecord, writer: str) -> None:
        """``writer`` edits the record by hand: no source version, no idempotency key."""
        entity_set = RESOURCES[record.domain]
        doc = to_json_dict(from_canonical(record), body=True)
        doc.pop("coexistSourceVersion")  # a person's edit leaves coexist's stamp alone
        base = f"/admin/as/{writer}/{entity_set}"
        current = self.http.get(f"{base}(number='{record.key}')")
        if current.status_code == 200:
            response = self.http.patch(f"{base}({current.json()['id']})", json=doc)
        else:
            response = self.http.post(base, json=doc)
        response.raise_for_status()

    def changes(self, after: int = 0, limit: int = 1000) -> list[dict]:
        response = self.http.get("/changes", params={"after": after, "limit": limit})
        response.raise_for_status()
        return response.json()["value"]

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="session")
def simulator(tmp_path_factory):
    """One simulator subprocess for the test session (import this fixture to use it)."""
    sim = start_simulator(tmp_path_factory.mktemp("cloud_sim") / "cloud.db")
    admin = SimulatorAdmin(sim)
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

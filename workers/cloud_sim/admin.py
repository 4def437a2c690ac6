"""Admin calls on a running simulator: reset, faults, and a person's writes.

Used by the demo and the tests to play the people who type into the cloud ERP
by hand (writes under another client id, without coexist's version stamp).
"""

from __future__ import annotations

import httpx

from coexistence.canonical import CanonicalRecord
from coexistence.translate.cloud import RESOURCES, from_canonical, to_json_dict


class SimulatorAdmin:
    def __init__(self, url: str, timeout_s: float = 10.0):
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=timeout_s)

    def reset(self) -> None:
        self.http.post("/admin/reset").raise_for_status()

    def faults(self, **settings) -> dict:
        response = self.http.put("/admin/faults", json=settings)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict:
        """``{"injected": {kind: count}, "requests": n}`` since the start or last reset."""
        response = self.http.get("/admin/stats")
        response.raise_for_status()
        return response.json()

    def person_upsert(self, record: CanonicalRecord, writer: str) -> None:
        """``writer`` edits the record by hand: no source version, no idempotency key."""
        entity_set = RESOURCES[record.domain]
        doc = to_json_dict(from_canonical(record), body=True)
        doc.pop("coexistSourceVersion", None)  # a person's edit leaves coexist's stamp alone
        base = f"/admin/as/{writer}/{entity_set}"
        current = self.http.get(f"{base}(number='{record.key}')")
        if current.status_code == 200:
            response = self.http.patch(f"{base}({current.json()['id']})", json=doc)
        else:
            response = self.http.post(base, json=doc)
        response.raise_for_status()

    def person_delete(self, domain: str, key: str, writer: str) -> None:
        base = f"/admin/as/{writer}/{RESOURCES[domain]}"
        current = self.http.get(f"{base}(number='{key}')")
        if current.status_code == 200:
            self.http.delete(f"{base}({current.json()['id']})").raise_for_status()

    def changes(self, after: int = 0, limit: int = 1000) -> list[dict]:
        response = self.http.get("/changes", params={"after": after, "limit": limit})
        response.raise_for_status()
        return response.json()["value"]

    def close(self) -> None:
        self.http.close()

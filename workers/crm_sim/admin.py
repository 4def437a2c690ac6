"""Admin calls on a running CRM simulator: reset, faults, clock, budget, a person's edits.

Used by the demo and the tests to play the sales and service people who type into the
CRM (requests through ``/admin/as/{user}``: the UI, so no ``changeOrigin``, no API budget).
"""

from __future__ import annotations

import ssl

import httpx

API_VERSION = "60.0"


class CrmSimulatorAdmin:
    def __init__(self, url: str, timeout_s: float = 10.0, verify: bool | ssl.SSLContext = True):
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=timeout_s, verify=verify)

    def reset(self) -> None:
        self.http.post("/admin/reset").raise_for_status()

    def faults(self, **settings) -> dict:
        response = self.http.put("/admin/faults", json=settings)
        response.raise_for_status()
        return response.json()

    def limits(self, *, max: int | None = None, clear: bool = False) -> dict:
        body: dict = {"clear": clear}
        if max is not None:
            body["max"] = max
        response = self.http.put("/admin/limits", json=body)
        response.raise_for_status()
        return response.json()

    def advance_clock(self, seconds: float) -> None:
        self.http.post("/admin/clock", json={"advance_s": seconds}).raise_for_status()

    def expire_sessions(self) -> None:
        self.http.post("/admin/sessions/expire").raise_for_status()

    # ----------------------------------------------------------------- a person in the UI

    def _ui(self, user: str) -> str:
        return f"/admin/as/{user}/services/data/v{API_VERSION}"

    def person_create(self, user: str, sobject: str, fields: dict, *,
                      allow_duplicate: bool = False) -> httpx.Response:
        headers = {"Sforce-Duplicate-Rule-Header": "allowSave=true"} if allow_duplicate else {}
        return self.http.post(f"{self._ui(user)}/sobjects/{sobject}", json=fields,
                              headers=headers)

    def person_update(self, user: str, sobject: str, record_id: str,
                      fields: dict) -> httpx.Response:
        return self.http.patch(f"{self._ui(user)}/sobjects/{sobject}/{record_id}", json=fields)

    def person_delete(self, user: str, sobject: str, record_id: str) -> httpx.Response:
        return self.http.delete(f"{self._ui(user)}/sobjects/{sobject}/{record_id}")

    def query(self, soql: str) -> list[dict]:
        """Every record a SOQL query returns (read as an admin, all pages)."""
        out: list[dict] = []
        response = self.http.get(f"{self._ui('admin')}/query", params={"q": soql})
        while True:
            response.raise_for_status()
            page = response.json()
            out.extend(page["records"])
            if page["done"]:
                return out
            response = self.http.get(f"/admin/as/admin{page['nextRecordsUrl']}")

    def by_external_id(self, sobject: str, value: str,
                       field: str = "Coexist_Id__c") -> dict | None:
        response = self.http.get(f"{self._ui('admin')}/sobjects/{sobject}/{field}/{value}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        self.http.close()

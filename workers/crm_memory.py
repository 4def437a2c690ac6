"""A CRM held in memory: the fake behind ``coexistence.crm.ports.Crm``.

It keeps the rules the contract suite holds the HTTP adapter to (``tests/contracts/
crm_contract.py``), and nothing more:

* records are sObject field dicts keyed by object and ``Coexist_Id__c``, written through
  the same mapping as the adapter's, so tests assert on what the CRM would show
  (``crm.records["Account"]["10042"]["Credit_Hold__c"] is True``);
* a write that would lower ``Coexist_Version__c`` is ``Stale`` (the org's validation rule);
* the Account duplicate rule of the CRM simulator (same matching rule);
* a document whose parent (account, order) is not in the CRM yet is ``Retry``;
* a delete shows as ``ERP_Deleted__c`` and is ``Absent`` for a record never shown;
* every write appends a change event: ``changeOrigin`` names coexist's client for port
  writes and is empty for a person's (``person_create`` / ``person_update`` /
  ``person_delete``, how tests play someone typing into the CRM);
* test controls: ``lock(key, times)`` (UNABLE_TO_LOCK_ROW), ``pause()`` (budget spent),
  ``unavailable(times)`` (503s), ``budget_used``.

Thread-safe (one lock).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from coexistence.crm.mapping import deleted_sobject, to_sobject
from coexistence.crm.ports import (
    COEXIST_CLIENT,
    CRM_OBJECTS,
    EXTERNAL_ID,
    VERSION_FIELD,
    Absent,
    ApiBudget,
    CrmChange,
    CrmPaused,
    CrmRecord,
    CrmUnavailable,
    CrmUpsert,
    Refused,
    ReplayExpired,
    Retry,
    Stale,
    Synced,
    UpsertResult,
)
from workers.crm_sim import duplicates
from workers.crm_sim.schema import OBJECTS, record_id

#: Relationship name in a body -> (reference field, parent object).
_PARENTS: dict[str, tuple[str, str]] = {
    "Account": ("AccountId", "Account"),
    "Account__r": ("Account__c", "Account"),
    "Order__r": ("Order__c", "Order"),
}
_API_ORIGIN = f"com/salesforce/api/rest/60.0;client={COEXIST_CLIENT}"


@dataclass
class _Event:
    replay_id: int
    change: CrmChange


@dataclass
class InMemoryCrm:
    """``Crm`` in memory, with the controls tests need to play faults and people."""

    daily_limit: int = 100_000
    #: sObject -> Coexist_Id__c -> fields (records keyed by coexist).
    records: dict[str, dict[str, dict]] = field(default_factory=dict)
    #: Every record by CRM id (people's unkeyed accounts and contacts included).
    by_id: dict[str, dict] = field(default_factory=dict)
    budget_used: int = 0
    #: Events with replay ids at or below this were dropped (retention).
    purged_through: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[_Event] = []
        self._counter = itertools.count(1)
        self._locks: dict[str, int] = {}
        self._paused = False
        self._unavailable = 0
        self._duplicate_sets: list[set[str]] = []
        for name in OBJECTS:
            self.records.setdefault(name, {})

    # ----------------------------------------------------------------- test controls

    def lock(self, key: str, times: int = 1) -> None:
        self._locks[key] = times

    def pause(self, paused: bool = True) -> None:
        self._paused = paused

    def unavailable(self, times: int = 1) -> None:
        self._unavailable = times

    def purge_events(self, through: int) -> None:
        with self._lock:
            self._events = [e for e in self._events if e.replay_id > through]
            self.purged_through = max(self.purged_through, through)

    # ----------------------------------------------------------------- the port

    def _request(self) -> None:
        if self._unavailable:
            self._unavailable -= 1
            raise CrmUnavailable("CRM answered 503 SERVER_UNAVAILABLE (fake)")
        if self._paused or self.budget_used >= self.daily_limit:
            raise CrmPaused("CRM answered 403 REQUEST_LIMIT_EXCEEDED (fake)", self.budget())
        self.budget_used += 1

    def upsert(self, domain: str, items: Sequence[CrmUpsert]) -> list[UpsertResult]:
        if len(items) > 200:
            raise ValueError(f"{len(items)} records in one batch; at most 200")
        if len({i.key for i in items}) != len(items):
            raise ValueError("a batch must not name one key twice")
        with self._lock:
            self._request()
            return [self._upsert_one(CRM_OBJECTS[domain], item) for item in items]

    def _upsert_one(self, sobject: str, item: CrmUpsert) -> UpsertResult:
        table = self.records[sobject]
        current = table.get(item.key)
        if item.record is None:
            if current is None:
                return Absent(item.key)
            body = deleted_sobject(item.domain, item.key, version=item.version,
                                   correlation_id=item.correlation_id, sor=item.sor)
        else:
            body = to_sobject(item.record, version=item.version,
                              correlation_id=item.correlation_id, sor=item.sor)
        left = self._locks.get(item.key, 0)
        if left:
            self._locks[item.key] = left - 1
            return Retry(item.key, "UNABLE_TO_LOCK_ROW",
                         "unable to obtain exclusive access to this record")
        if current is not None and (current.get(VERSION_FIELD) or 0) > item.version:
            return Stale(item.key)
        values: dict = {}
        for name, value in body.items():
            if name in _PARENTS:
                ref, parent = _PARENTS[name]
                target = self.records[parent].get(value[EXTERNAL_ID])
                if target is None:
                    return Retry(item.key, "INVALID_FIELD",
                                 f"Foreign key external ID: {value[EXTERNAL_ID]} not found for "
                                 f"field {EXTERNAL_ID} in entity {parent}")
                values[ref] = target["Id"]
            else:
                values[name] = value
        doc = {**(current or {}), **values}
        if sobject == "Account":
            matched = self._duplicates(doc, current)
            if matched:
                return Refused(item.key, "DUPLICATES_DETECTED", duplicates.DUPLICATE_MESSAGE,
                               (), tuple(matched))
        created = current is None
        self._save(sobject, doc, current, _API_ORIGIN)
        return Synced(item.key, doc["Id"], created)

    def _duplicates(self, doc: dict, current: dict | None) -> list[str]:
        watched = ("Name", "BillingPostalCode", "Phone")
        if current is not None and all(doc.get(n) == current.get(n) for n in watched):
            return []
        mine = duplicates.keys_of(doc)
        return [other["Id"] for other in self.by_id.values()
                if other["Id"].startswith("001") and other["Id"] != doc.get("Id")
                and duplicates.matches(mine, duplicates.keys_of(other))]

    def _save(self, sobject: str, doc: dict, current: dict | None, origin: str) -> None:
        if current is None:
            doc["Id"] = record_id(OBJECTS[sobject].key_prefix, next(self._counter))
        if doc.get(EXTERNAL_ID) is not None:
            self.records[sobject][doc[EXTERNAL_ID]] = doc
        self.by_id[doc["Id"]] = doc
        if current is None:
            changed = tuple(k for k, v in doc.items() if v is not None and k != "Id")
            self._append(sobject, doc["Id"], "CREATE", changed,
                         {k: doc[k] for k in changed}, origin)
        else:
            changed = tuple(k for k in doc if doc.get(k) != current.get(k))
            self._append(sobject, doc["Id"], "UPDATE", changed, {k: doc[k] for k in changed},
                         origin)

    def _append(self, sobject: str, id_: str, change_type: str, changed: tuple[str, ...],
                fields: dict, origin: str) -> None:
        replay = (self._events[-1].replay_id if self._events else self.purged_through) + 1
        stamp = int(datetime.now(UTC).timestamp() * 1000)
        self._events.append(_Event(replay, CrmChange(
            replay, sobject, id_, change_type, changed if change_type == "UPDATE" else (),
            dict(fields), origin, stamp, "005FAKE")))

    def changes(self, after: int, limit: int) -> list[CrmChange]:
        with self._lock:
            if after < self.purged_through:
                raise ReplayExpired(f"replay id {after} is older than the retained events "
                                    f"(purged through {self.purged_through})")
            return [e.change for e in self._events if e.replay_id > after][:limit]

    def get(self, sobject: str, crm_id: str) -> CrmRecord | None:
        with self._lock:
            self._request()
            doc = self.by_id.get(crm_id)
            if doc is None or not crm_id.startswith(OBJECTS[sobject].key_prefix):
                return None
            return CrmRecord(sobject, crm_id, dict(doc))

    def find(self, domain: str, key: str) -> CrmRecord | None:
        with self._lock:
            self._request()
            sobject = CRM_OBJECTS[domain]
            doc = self.records[sobject].get(key)
            return CrmRecord(sobject, doc["Id"], dict(doc)) if doc else None

    def duplicates_of(self, account_id: str) -> list[CrmRecord]:
        with self._lock:
            self._request()
            ids = set().union(*(s for s in self._duplicate_sets if account_id in s)) - {
                account_id}
            return [CrmRecord("Account", i, dict(self.by_id[i])) for i in sorted(ids)
                    if i in self.by_id]

    def link(self, account_id: str, key: str, *, correlation_id: str) -> Synced | Refused:
        with self._lock:
            self._request()
            doc = self.by_id.get(account_id)
            if doc is None:
                return Refused(key, "ENTITY_IS_DELETED", "entity is deleted")
            holder = self.records["Account"].get(key)
            if holder is not None and holder["Id"] != account_id:
                return Refused(key, "DUPLICATE_VALUE",
                               f"duplicate value found: {EXTERNAL_ID} duplicates value on "
                               f"record with id: {holder['Id']}", (EXTERNAL_ID,),
                               (holder["Id"],))
            if doc.get(EXTERNAL_ID) == key:
                return Synced(key, account_id, False)
            current = dict(doc)
            doc[EXTERNAL_ID] = key
            doc["Coexist_Correlation_Id__c"] = correlation_id
            self._save("Account", doc, current, _API_ORIGIN)
            return Synced(key, account_id, False)

    def budget(self) -> ApiBudget:
        return ApiBudget(self.budget_used, self.daily_limit)

    # ----------------------------------------------------------------- people in the UI

    def person_create(self, sobject: str, fields: dict, *, allow_duplicate: bool = False,
                      ) -> str:
        """A person creates a record in the UI; returns its CRM id."""
        with self._lock:
            doc = dict(fields)
            if sobject == "Account":
                matched = self._duplicates(doc, None)
                if matched and not allow_duplicate:
                    raise ValueError(f"DUPLICATES_DETECTED: {matched}")
            self._save(sobject, doc, None, "")
            if sobject == "Account" and allow_duplicate:
                matched = self._duplicates(doc, None)
                if matched:
                    self._duplicate_sets.append({doc["Id"], *matched})
            return doc["Id"]

    def person_update(self, sobject: str, crm_id: str, fields: dict) -> None:
        with self._lock:
            current = self.by_id[crm_id]
            self._save(sobject, {**current, **fields}, current, "")

    def person_delete(self, sobject: str, crm_id: str) -> None:
        with self._lock:
            doc = self.by_id.pop(crm_id)
            if doc.get(EXTERNAL_ID) is not None:
                self.records[sobject].pop(doc[EXTERNAL_ID], None)
            self._append(sobject, crm_id, "DELETE", (), {}, "")

"""The CRM port: what the CRM channel needs from a CRM, in canonical terms.

Implementations: ``workers.crm.client.CrmClient`` (Salesforce REST over httpx) and
``workers.crm_memory.InMemoryCrm`` (the fake); both pass ``tests/contracts/crm_contract.py``.

Writes go out in batches (one sObject Collections request of at most ``MAX_BATCH``) and
come back with one result per record, in order, so one bad record never fails the
others.  What a whole request can meet is raised instead: ``CrmUnavailable`` (technical:
the bus retries), ``CrmPaused`` (the API budget is spent: not a failure, wait for it to
return).

"Apply only when newer": every write carries the routed version in ``VERSION_FIELD``
and the CRM refuses a save that would lower it (a validation rule on each object; see
``coexistence.crm.mapping``).  Such a refusal is ``Stale``, not an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bus.errors import BusError, BusinessError, TechnicalError
from coexistence.canonical import CanonicalRecord

#: Records per batch write (sObject Collections' limit).
MAX_BATCH = 200

#: The external id every object coexist writes is keyed by: coexist's canonical key, never
#: an ERP's own id, so the CRM keeps one record per customer when its SoR moves.
EXTERNAL_ID = "Coexist_Id__c"
#: The routed version of the last write coexist applied to the record.
VERSION_FIELD = "Coexist_Version__c"
#: The correlation id of the message whose write the record shows last.
CORRELATION_FIELD = "Coexist_Correlation_Id__c"

#: Canonical domain -> the sObject that shows it in the CRM.
CRM_OBJECTS: dict[str, str] = {
    "customer": "Account",
    "order": "Order",
    "shipment": "Shipment__c",
    "invoice": "Invoice__c",
}
DOMAIN_OF_OBJECT: dict[str, str] = {v: k for k, v in CRM_OBJECTS.items()}

#: The client name coexist writes under (``Sforce-Call-Options: client=...``); change events
#: whose ``changeOrigin`` names it are coexist's own writes coming back (echoes).
COEXIST_CLIENT = "coexist"


@dataclass(frozen=True, slots=True)
class CrmUpsert:
    """One record to show in the CRM: ``record`` None means deleted in the ERP."""

    domain: str
    key: str
    record: CanonicalRecord | None
    #: ``routed_version(flag_version, source_version)`` of the change.
    version: int
    correlation_id: str
    #: The system of record the change came from (``legacy`` or ``cloud``).
    sor: str


@dataclass(frozen=True, slots=True)
class Synced:
    """The CRM shows the record at this version (``created``: a new CRM record)."""

    key: str
    crm_id: str
    created: bool


@dataclass(frozen=True, slots=True)
class Stale:
    """The CRM already shows a newer version; nothing was written."""

    key: str


@dataclass(frozen=True, slots=True)
class Absent:
    """A delete for a record the CRM never had: nothing to do."""

    key: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The CRM refused the record for a business reason (duplicate, picklist, required...).

    ``matched_ids`` are the CRM ids it names (the duplicate rule's matches, the records a
    non-unique external id found).
    """

    key: str
    code: str
    message: str
    fields: tuple[str, ...] = ()
    matched_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Retry:
    """The record could not be written now (row lock, parent not there yet): try again."""

    key: str
    code: str
    message: str


UpsertResult = Synced | Stale | Absent | Refused | Retry


@dataclass(frozen=True, slots=True)
class CrmRecord:
    """A record as the CRM holds it: object, CRM id and field values (API names)."""

    sobject: str
    id: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str | None:
        return self.fields.get(EXTERNAL_ID)

    @property
    def version(self) -> int | None:
        value = self.fields.get(VERSION_FIELD)
        return int(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class CrmChange:
    """One change event of the CRM's change data capture feed."""

    replay_id: int
    sobject: str
    record_id: str
    #: ``CREATE``, ``UPDATE``, ``DELETE`` or ``UNDELETE``.
    change_type: str
    changed_fields: tuple[str, ...]
    #: Field values the event carries (all set fields on CREATE, changed ones on UPDATE).
    fields: Mapping[str, Any]
    #: ``changeOrigin``: ``com/salesforce/api/rest/NN.N;client=X`` for API writes, "" for UI.
    origin: str
    commit_ms: int
    user_id: str

    @property
    def client(self) -> str | None:
        """The ``client=`` of the writer's call options, or ``None`` (a person, the UI)."""
        for part in self.origin.split(";")[1:]:
            name, _, value = part.partition("=")
            if name.strip() == "client":
                return value.strip()
        return None

    @property
    def is_echo(self) -> bool:
        return self.client == COEXIST_CLIENT


@dataclass(frozen=True, slots=True)
class ApiBudget:
    """The org's API requests used and allowed over the rolling 24 hours."""

    used: int
    max: int

    @property
    def remaining(self) -> int:
        return max(self.max - self.used, 0)

    @property
    def fraction_used(self) -> float:
        return self.used / self.max if self.max else 1.0


class CrmUnavailable(TechnicalError):
    """The CRM could not be reached or answered 5xx; the bus retries the message."""


class CrmPaused(BusError):
    """The CRM's API budget is spent (403 REQUEST_LIMIT_EXCEEDED) or nearly so.

    Neither a business nor a failed technical attempt: the channel waits until budget
    returns and loses nothing.  ``budget`` is the last one seen, when known.
    """

    retryable = True

    def __init__(self, message: str, budget: ApiBudget | None = None):
        super().__init__(message)
        self.budget = budget


class CrmRequestRefused(BusinessError):
    """A whole request refused for a reason retrying cannot fix (malformed, no access)."""

    def __init__(self, status: int, code: str, message: str):
        self.status, self.code, self.crm_message = status, code, message
        super().__init__(f"CRM answered {status} {code}: {message}")


class ReplayExpired(BusinessError):
    """The checkpoint's replay id is older than the CRM keeps events: changes were missed.

    An operator must re-read from the earliest retained event and reconcile the CRM.
    """


class Crm(Protocol):
    """A CRM seen by the CRM channel."""

    def upsert(self, domain: str, items: Sequence[CrmUpsert]) -> list[UpsertResult]:
        """Show ``items`` (at most ``MAX_BATCH``, one domain, distinct keys) in the CRM.

        One result per item, in order.  Raises ``CrmUnavailable`` or ``CrmPaused`` when
        the request as a whole did not happen.
        """
        ...

    def changes(self, after: int, limit: int) -> list[CrmChange]:
        """Up to ``limit`` change events with ``replay_id > after``, oldest first.

        Raises ``ReplayExpired`` when events after ``after`` are no longer kept.
        """
        ...

    def get(self, sobject: str, crm_id: str) -> CrmRecord | None:
        """The live record ``crm_id`` of ``sobject``, or ``None``."""
        ...

    def find(self, domain: str, key: str) -> CrmRecord | None:
        """The live record showing canonical ``key`` of ``domain``, or ``None``."""
        ...

    def duplicates_of(self, account_id: str) -> list[CrmRecord]:
        """Other accounts the CRM's duplicate rule reported together with ``account_id``."""
        ...

    def link(self, account_id: str, key: str, *, correlation_id: str) -> Synced | Refused:
        """Key a person's account by canonical customer ``key`` (onboarding's link)."""
        ...

    def budget(self) -> ApiBudget:
        """The API budget as of the CRM's last answer."""
        ...

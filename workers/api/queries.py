"""Records found by a foreign key (an agreement by customer, a shipment by order...).

The ``Erp`` port reads by canonical key and streams whole domains; inquiry also
needs "the contract prices of customer 10042" or "the shipments of order 100231".
``RecordQueries.find`` answers exactly the pairs in ``QUERYABLE``, in canonical
terms, from one ERP:

* ``MemoryQueries``: the in-memory fake (a scan: it is the reference, not fast);
* ``LegacyQueries``: one indexed-column query on the legacy header table, then
  the adapter's own reads (``get_many``) through the translators;
* ``CloudQueries``: OData ``$filter=<field> eq '<value>'`` on the entity set, paged
  with ``@odata.nextLink``, translated by the cloud translators.

Held to one contract suite (``tests/contracts/test_queries_contract.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol
from urllib.parse import quote

import httpx
from sqlalchemy import CHAR, select

from bus.errors import TechnicalError
from coexistence.canonical import CanonicalRecord
from coexistence.errors import TranslationError
from coexistence.translate.cloud import RESOURCES, canonical_from_json, translator_for

#: (domain, field) pairs ``find`` answers, and the domain the field refers to.
QUERYABLE: dict[tuple[str, str], str] = {
    ("price", "customer_key"): "customer",
    ("order", "customer_key"): "customer",
    ("invoice", "customer_key"): "customer",
    ("invoice", "order_key"): "order",
    ("shipment", "order_key"): "order",
    ("inventory", "sku"): "product",
}

#: Records fetched per page from the cloud.
CLOUD_PAGE = 200
#: Most records one ``find`` returns (a customer with more open documents is an outlier
#: the inquiry answer would not serve well anyway).
MAX_FOUND = 2000


class QueryError(ValueError):
    """A (domain, field) pair ``find`` does not answer."""


def _check(domain: str, field: str) -> None:
    if (domain, field) not in QUERYABLE:
        raise QueryError(f"cannot look up {domain} by {field}; "
                         f"supported: {', '.join(f'{d}.{f}' for d, f in QUERYABLE)}")


class RecordQueries(Protocol):
    """Records of ``domain`` whose ``field`` equals ``value``, sorted by key."""

    def find(self, domain: str, field: str, value: str) -> list[CanonicalRecord]: ...


class MemoryQueries:
    def __init__(self, erp) -> None:
        self.erp = erp

    def find(self, domain: str, field: str, value: str) -> list[CanonicalRecord]:
        _check(domain, field)
        return [r for r in self.erp.stream(domain) if getattr(r, field) == value][:MAX_FOUND]


class LegacyQueries:
    """Over a ``workers.legacy_erp.adapter.LegacyErp`` (its engine and reads)."""

    def __init__(self, erp) -> None:
        self.erp = erp

    def find(self, domain: str, field: str, value: str) -> list[CanonicalRecord]:
        from workers.legacy_erp.schema import translator

        _check(domain, field)
        t = translator(domain)
        table = t.TABLE.__table__
        column = table.c[t.COLUMNS[field]]
        try:
            legacy = translator(QUERYABLE[(domain, field)]).legacy_key(value)
        except TranslationError:
            return []  # not a key the legacy ERP can hold, so nothing refers to it
        if isinstance(column.type, CHAR) and column.type.length:
            legacy = legacy.ljust(column.type.length)
        keys_cols = [table.c[k] for k in t.KEY_COLUMNS]
        with self.erp.engine.connect() as conn:
            rows = conn.execute(select(*keys_cols).where(column == legacy)
                                .limit(MAX_FOUND)).all()
        keys = [t.canonical_key("|".join(str(v).rstrip() for v in row)) for row in rows]
        found = self.erp.get_many(domain, keys)
        return [found[k] for k in sorted(found)]


class CloudQueries:
    """Over the cloud ERP's HTTP API (the simulator or a real one)."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    @classmethod
    def from_settings(cls, settings, *, timeout_s: float = 5.0) -> CloudQueries:
        headers = {"Accept": "application/json", "X-Client-Id": "COEXAPI"}
        if settings.cloud_token:
            headers["Authorization"] = f"Bearer {settings.cloud_token}"
        return cls(httpx.Client(base_url=settings.cloud_url.rstrip("/"), headers=headers,
                                timeout=timeout_s))

    def close(self) -> None:
        self.http.close()

    def find(self, domain: str, field: str, value: str) -> list[CanonicalRecord]:
        _check(domain, field)
        return sorted(self._pages(domain, field, value), key=lambda r: r.key)[:MAX_FOUND]

    def _pages(self, domain: str, field: str, value: str) -> Iterator[CanonicalRecord]:
        name = translator_for(domain).NAMES[field]
        literal = value.replace("'", "''")
        url: str | None = (f"/{RESOURCES[domain]}?$top={CLOUD_PAGE}&$filter="
                           + quote(f"{name} eq '{literal}'", safe=""))
        seen = 0
        while url and seen < MAX_FOUND:
            try:
                response = self.http.get(url)
            except httpx.TransportError as exc:
                raise TechnicalError(f"cloud ERP unreachable: {type(exc).__name__}") from None
            if response.status_code == 429 or response.status_code >= 500:
                raise TechnicalError(f"cloud ERP answered {response.status_code} to a lookup "
                                     f"of {domain} by {field}")
            if response.status_code != 200:
                raise TechnicalError(f"cloud ERP refused a lookup of {domain} by {field}: "
                                     f"HTTP {response.status_code}")
            body = response.json()
            for doc in body.get("value", []):
                seen += 1
                yield canonical_from_json(domain, doc)
            url = body.get("@odata.nextLink")

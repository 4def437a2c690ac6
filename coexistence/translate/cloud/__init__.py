"""Translators canonical <-> cloud ERP, one module per domain.

Each domain module offers::

    to_canonical(doc: CloudResource) -> CanonicalRecord
    from_canonical(record, *, cloud_id=None, source_version=None) -> CloudResource
    to_json_dict(doc, *, body=False) -> dict        # camelCase, JSON-able
    to_json_bytes(doc, *, body=False) -> bytes      # the same, serialised (faster)

``canonical -> cloud -> canonical`` is the identity for every valid canonical
record (tests/unit/test_cloud_roundtrip.py).  The other direction can fold
(named in each module: e.g. ``PendingApproval`` -> ``on_hold``) or refuse
(``Draft`` invoices, fractional quantities): every refusal is a
``TranslationError`` naming domain, key, cloud field path and value.

The generic helpers below dispatch on the domain for callers (adapters, the
demo, benchmarks) that handle every domain alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import ModuleType
from typing import Any
from uuid import UUID

from coexistence.canonical.models import CanonicalRecord
from coexistence.cloud.models import DOMAIN_MODELS, DOMAIN_RESOURCES, CloudResource
from coexistence.errors import TranslationError
from coexistence.translate.cloud import (
    customer,
    inventory,
    invoice,
    order,
    price,
    product,
    shipment,
)
from coexistence.translate.cloud._common import construct, parse, to_json_bytes, to_json_dict

#: Domain -> translator module.
CLOUD_TRANSLATORS: dict[str, ModuleType] = {
    "customer": customer,
    "product": product,
    "price": price,
    "inventory": inventory,
    "order": order,
    "shipment": shipment,
    "invoice": invoice,
}

#: Domain -> OData entity set of the cloud API ("customers", "items", ...).
RESOURCES: dict[str, str] = dict(DOMAIN_RESOURCES)


def translator_for(domain: str) -> ModuleType:
    try:
        return CLOUD_TRANSLATORS[domain]
    except KeyError:
        raise TranslationError(domain, None, "domain", domain, "unknown domain") from None


def to_canonical(doc: CloudResource) -> CanonicalRecord:
    """Any cloud resource as its canonical record."""
    return translator_for(doc.domain).to_canonical(doc)


def from_canonical(
    record: CanonicalRecord, *, cloud_id: UUID | None = None, source_version: int | None = None
) -> CloudResource:
    """Any canonical record as its cloud resource."""
    return translator_for(record.domain).from_canonical(
        record, cloud_id=cloud_id, source_version=source_version
    )


#: Server metadata a document may carry that no resource model holds: ``lastModifiedBy``
#: (the client id of the last write) is read by the writers' condition
#: (workers/cloud_erp.py), not translated.
METADATA_FIELDS = ("lastModifiedBy",)


def parse_document(domain: str, data: bytes | str | Mapping[str, Any]) -> CloudResource:
    """Validate a cloud JSON document of ``domain``; defects raise ``TranslationError``."""
    translator_for(domain)
    if isinstance(data, Mapping):
        if any(f in data for f in METADATA_FIELDS):
            data = {k: v for k, v in data.items() if k not in METADATA_FIELDS}
    elif (b'"lastModifiedBy"' in data if isinstance(data, bytes)
          else '"lastModifiedBy"' in data):
        try:
            decoded = json.loads(data)
        except ValueError:
            decoded = None  # not JSON: ``parse`` names the defect
        if isinstance(decoded, dict):
            data = {k: v for k, v in decoded.items() if k not in METADATA_FIELDS}
    return parse(DOMAIN_MODELS[domain], data)


def canonical_from_json(domain: str, data: bytes | str | Mapping[str, Any]) -> CanonicalRecord:
    """A cloud JSON document (bytes, str or decoded) straight to its canonical record."""
    return translator_for(domain).to_canonical(parse_document(domain, data))


__all__ = [
    "CLOUD_TRANSLATORS", "RESOURCES", "translator_for", "to_canonical", "from_canonical",
    "parse_document", "canonical_from_json", "to_json_dict", "to_json_bytes", "construct",
]

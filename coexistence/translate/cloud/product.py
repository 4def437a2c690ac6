"""product <-> cloud ``items``.

Lossless both ways: statuses and units of measure map one to one.  Cloud
values canonical cannot hold (negative cost, a 150-character name, an unknown
currency) are refused with a ``TranslationError``.
"""

from __future__ import annotations

from uuid import UUID

from coexistence.canonical.models import Product, ProductStatus, UnitOfMeasure
from coexistence.cloud import models as cloud
from coexistence.translate.cloud._common import build_canonical, construct, status, to_json_dict

DOMAIN = "product"
MODEL = cloud.CloudItem

_STATUS_OUT = {
    ProductStatus.ACTIVE: cloud.ItemStatus.ACTIVE,
    ProductStatus.DISCONTINUED: cloud.ItemStatus.DISCONTINUED,
    ProductStatus.BLOCKED: cloud.ItemStatus.BLOCKED,
}
_STATUS_IN = {v: k for k, v in _STATUS_OUT.items()}
_UNIT_OUT = {u: cloud.UnitOfMeasureCode(u.value) for u in UnitOfMeasure}
_UNIT_IN = {v: k for k, v in _UNIT_OUT.items()}

#: Canonical field name -> cloud JSON name, to name cloud paths in errors.
NAMES = {
    "key": "number", "description": "displayName", "unit": "baseUnitOfMeasureCode",
    "weight_kg": "netWeightKg", "currency": "currencyCode", "list_price": "unitPrice",
    "standard_cost": "unitCost",
}


def to_canonical(doc: cloud.CloudItem) -> Product:
    key = doc.number
    data = {
        "key": key,
        "description": doc.display_name,
        "unit": status(DOMAIN, key, "baseUnitOfMeasureCode", doc.base_unit_of_measure_code,
                       _UNIT_IN),
        "weight_kg": doc.net_weight_kg,
        "status": status(DOMAIN, key, "status", doc.status, _STATUS_IN),
        "currency": doc.currency_code,
        "list_price": doc.unit_price,
        "standard_cost": doc.unit_cost,
    }
    return build_canonical(Product, doc, data, NAMES)


def from_canonical(
    record: Product, *, cloud_id: UUID | None = None, source_version: int | None = None
) -> cloud.CloudItem:
    # construct without validation: ``record`` is a validated canonical Product
    # whose constraints are at least as tight as the cloud item's.
    return construct(cloud.CloudItem, {
        "odata_etag": None,
        "id": cloud_id,
        "number": record.key,
        "last_modified_date_time": None,
        "coexist_source_version": source_version,
        "display_name": record.description,
        "base_unit_of_measure_code": _UNIT_OUT[record.unit],
        "net_weight_kg": record.weight_kg,
        "status": _STATUS_OUT[record.status],
        "currency_code": record.currency,
        "unit_price": record.list_price,
        "unit_cost": record.standard_cost,
    })


__all__ = ["DOMAIN", "MODEL", "NAMES", "to_canonical", "from_canonical", "to_json_dict"]

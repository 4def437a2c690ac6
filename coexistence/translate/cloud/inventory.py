"""inventory (warehouse x SKU balances) <-> cloud ``inventoryBalances``.

Lossy spots, refused: cloud quantities are decimals and may go negative (a real
cloud ERP lets stock go below zero); canonical counts whole, non-negative units,
so ``"2.5"`` or ``"-3"`` is a ``TranslationError``.

``availableToPromise`` is derived (on hand less allocated, floored at zero) and
never stored canonically; when a document carries it, it must agree with the
quantities, otherwise the document contradicts itself and is refused.
"""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from coexistence.canonical.models import InventoryBalance
from coexistence.cloud import models as cloud
from coexistence.errors import TranslationError
from coexistence.translate.cloud._common import (
    build_canonical,
    construct,
    quantity,
    to_json_dict,
)

DOMAIN = "inventory"
MODEL = cloud.CloudInventoryBalance

#: Canonical field name -> cloud JSON name, to name cloud paths in errors.
NAMES = {
    "key": "number", "warehouse": "locationCode", "sku": "itemNumber",
    "on_hand": "quantityOnHand", "allocated": "quantityAllocated",
}


def to_canonical(doc: cloud.CloudInventoryBalance) -> InventoryBalance:
    key = doc.number
    data = {
        "key": key,
        "warehouse": doc.location_code,
        "sku": doc.item_number,
        "on_hand": quantity(DOMAIN, key, "quantityOnHand", doc.quantity_on_hand),
        "allocated": quantity(DOMAIN, key, "quantityAllocated", doc.quantity_allocated),
    }
    record = build_canonical(InventoryBalance, doc, data, NAMES)
    atp = doc.available_to_promise
    if atp is not None and atp != record.available_to_promise:
        raise TranslationError(
            DOMAIN, key, "availableToPromise", str(atp),
            f"contradicts quantityOnHand - quantityAllocated ({record.available_to_promise})",
        )
    return record


def from_canonical(
    record: InventoryBalance, *, cloud_id: UUID | None = None, source_version: int | None = None
) -> cloud.CloudInventoryBalance:
    # construct without validation: ``record`` is a validated canonical
    # InventoryBalance; whole non-negative counts are valid cloud decimals.
    return construct(cloud.CloudInventoryBalance, {
        "odata_etag": None,
        "id": cloud_id,
        "number": record.key,
        "last_modified_date_time": None,
        "coexist_source_version": source_version,
        "location_code": record.warehouse,
        "item_number": record.sku,
        "quantity_on_hand": Decimal(record.on_hand),
        "quantity_allocated": Decimal(record.allocated),
        "available_to_promise": Decimal(record.available_to_promise),
    })


__all__ = ["DOMAIN", "MODEL", "NAMES", "to_canonical", "from_canonical", "to_json_dict"]

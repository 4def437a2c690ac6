"""price (contract price agreements) <-> cloud ``contractPrices``.

Lossy spot, refused: a cloud price break's ``minimumQuantity`` is a decimal, a
canonical break counts whole units, so ``"2.5"`` is a ``TranslationError``
(never rounded).  Breaks must arrive strictly ascending by quantity, as
canonical keeps them; the cloud list is not re-sorted, so an out-of-order or
duplicated break is refused rather than silently reordered.
"""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from coexistence.canonical.models import ContractPrice, PriceBreak
from coexistence.cloud import models as cloud
from coexistence.translate.cloud._common import (
    build_canonical,
    construct,
    quantity,
    to_json_dict,
)

DOMAIN = "price"
MODEL = cloud.CloudContractPrice

#: Canonical field name -> cloud JSON name, to name cloud paths in errors.
NAMES = {
    "key": "number", "customer_key": "customerNumber", "sku": "itemNumber",
    "currency": "currencyCode", "breaks": "priceBreaks", "valid_from": "startingDate",
    "valid_to": "endingDate", "min_quantity": "minimumQuantity", "unit_price": "unitPrice",
}


def to_canonical(doc: cloud.CloudContractPrice) -> ContractPrice:
    key = doc.number
    breaks = [
        {
            "min_quantity": quantity(DOMAIN, key, f"priceBreaks.{i}.minimumQuantity",
                                     b.minimum_quantity),
            "unit_price": b.unit_price,
        }
        for i, b in enumerate(doc.price_breaks)
    ]
    data = {
        "key": key,
        "customer_key": doc.customer_number,
        "sku": doc.item_number,
        "currency": doc.currency_code,
        "breaks": breaks,
        "valid_from": doc.starting_date,
        "valid_to": doc.ending_date,
    }
    return build_canonical(ContractPrice, doc, data, NAMES)


def _break(b: PriceBreak) -> cloud.CloudPriceBreak:
    # The cloud decimal holds any canonical int exactly.
    return construct(cloud.CloudPriceBreak, {
        "minimum_quantity": Decimal(b.min_quantity), "unit_price": b.unit_price,
    })


def from_canonical(
    record: ContractPrice, *, cloud_id: UUID | None = None, source_version: int | None = None
) -> cloud.CloudContractPrice:
    # construct without validation: ``record`` is a validated canonical ContractPrice
    # whose constraints are at least as tight as the cloud document's.
    return construct(cloud.CloudContractPrice, {
        "odata_etag": None,
        "id": cloud_id,
        "number": record.key,
        "last_modified_date_time": None,
        "coexist_source_version": source_version,
        "customer_number": record.customer_key,
        "item_number": record.sku,
        "currency_code": record.currency,
        "starting_date": record.valid_from,
        "ending_date": record.valid_to,
        "price_breaks": [_break(b) for b in record.breaks],
    })


__all__ = ["DOMAIN", "MODEL", "NAMES", "to_canonical", "from_canonical", "to_json_dict"]

"""shipment <-> cloud ``shipments``.

The cloud keeps one timestamp per milestone (``pickedDateTime`` ...
``deliveredDateTime``); canonical keeps the reached milestones as an ordered
tuple.  Both hold the same facts: the tuple is the non-null timestamps in
lifecycle order, so the mapping is lossless (canonical requires lifecycle order
and uniqueness, which the one-field-per-milestone shape guarantees).

The cloud ``status`` is derived (the latest milestone reached, ``Planned`` for
none); when a document carries it, it must agree with the timestamps, otherwise
the document contradicts itself and is refused.

Refused: fractional or negative line quantities (canonical counts whole units).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

from coexistence.canonical.models import Milestone, Shipment, ShipmentLine
from coexistence.cloud import models as cloud
from coexistence.errors import TranslationError
from coexistence.translate.cloud._common import (
    build_canonical,
    construct,
    quantity,
    to_json_dict,
)

DOMAIN = "shipment"
MODEL = cloud.CloudShipment

#: Milestone -> (cloud timestamp field, cloud status once it is the latest).
_MILESTONE_FIELDS: dict[Milestone, tuple[str, cloud.ShipmentStatus]] = {
    Milestone.PICKED: ("picked_date_time", cloud.ShipmentStatus.PICKED),
    Milestone.PACKED: ("packed_date_time", cloud.ShipmentStatus.PACKED),
    Milestone.SHIPPED: ("shipped_date_time", cloud.ShipmentStatus.SHIPPED),
    Milestone.DELIVERED: ("delivered_date_time", cloud.ShipmentStatus.DELIVERED),
}

#: Canonical field name -> cloud JSON name, to name cloud paths in errors.
NAMES = {
    "key": "number", "order_key": "orderNumber", "warehouse": "locationCode",
    "carrier": "shippingAgentCode", "tracking_number": "packageTrackingNumber",
    "lines": "shipmentLines", "line_no": "sequence", "order_line_no": "orderLineSequence",
    "sku": "itemNumber",
}


def to_canonical(doc: cloud.CloudShipment) -> Shipment:
    key = doc.number
    milestones = []
    latest = cloud.ShipmentStatus.PLANNED
    for milestone, (field, reached) in _MILESTONE_FIELDS.items():
        at = getattr(doc, field)
        if at is not None:
            milestones.append({"milestone": milestone, "at": at})
            latest = reached
    if doc.status is not None and doc.status != latest:
        raise TranslationError(
            DOMAIN, key, "status", doc.status.value,
            f"contradicts the milestone timestamps (latest reached: {latest.value})",
        )
    lines = [
        {
            "line_no": line.sequence,
            "order_line_no": line.order_line_sequence,
            "sku": line.item_number,
            "quantity": quantity(DOMAIN, key, f"shipmentLines.{i}.quantity", line.quantity),
        }
        for i, line in enumerate(doc.shipment_lines)
    ]
    data = {
        "key": key,
        "order_key": doc.order_number,
        "warehouse": doc.location_code,
        "carrier": doc.shipping_agent_code,
        "tracking_number": doc.package_tracking_number,
        "milestones": milestones,
        "lines": lines,
    }
    return build_canonical(Shipment, doc, data, NAMES)


def _line(line: ShipmentLine) -> cloud.CloudShipmentLine:
    return construct(cloud.CloudShipmentLine, {
        "sequence": line.line_no,
        "order_line_sequence": line.order_line_no,
        "item_number": line.sku,
        "quantity": Decimal(line.quantity),
    })


def from_canonical(
    record: Shipment, *, cloud_id: UUID | None = None, source_version: int | None = None
) -> cloud.CloudShipment:
    # construct without validation: ``record`` is a validated canonical Shipment
    # (UTC-aware timestamps, unique milestones) at least as tight as the cloud's.
    values: dict[str, Any] = {
        "odata_etag": None,
        "id": cloud_id,
        "number": record.key,
        "last_modified_date_time": None,
        "coexist_source_version": source_version,
        "order_number": record.order_key,
        "location_code": record.warehouse,
        "shipping_agent_code": record.carrier,
        "package_tracking_number": record.tracking_number,
        "status": cloud.ShipmentStatus.PLANNED,
        "picked_date_time": None,
        "packed_date_time": None,
        "shipped_date_time": None,
        "delivered_date_time": None,
        "shipment_lines": [_line(line) for line in record.lines],
    }
    for event in record.milestones:
        field, reached = _MILESTONE_FIELDS[event.milestone]
        values[field] = event.at
        values["status"] = reached
    return construct(cloud.CloudShipment, values)


__all__ = ["DOMAIN", "MODEL", "NAMES", "to_canonical", "from_canonical", "to_json_dict"]

"""order <-> cloud ``salesOrders``.

Named mappings:

* canonical ``allocated`` is the cloud's ``Released`` (released to the
  warehouse): a renaming, one to one;
* **many-to-one**: the cloud's ``PendingApproval`` (an approval workflow
  canonical does not model) becomes canonical ``on_hold``; canonical
  ``on_hold`` always goes back out as ``OnHold``.  So cloud -> canonical ->
  cloud turns ``PendingApproval`` into ``OnHold``; canonical -> cloud ->
  canonical stays the identity.
* **refused**: fractional or negative line quantities (canonical counts whole
  units), non-positive line sequences.
"""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from coexistence.canonical.models import Order, OrderChannel, OrderLine, OrderStatus
from coexistence.cloud import models as cloud
from coexistence.translate.cloud._common import (
    build_canonical,
    construct,
    quantity,
    status,
    to_json_dict,
)

DOMAIN = "order"
MODEL = cloud.CloudSalesOrder

_S = cloud.SalesOrderStatus
_STATUS_OUT = {
    OrderStatus.DRAFT: _S.DRAFT,
    OrderStatus.OPEN: _S.OPEN,
    OrderStatus.ON_HOLD: _S.ON_HOLD,
    OrderStatus.ALLOCATED: _S.RELEASED,
    OrderStatus.PARTIALLY_SHIPPED: _S.PARTIALLY_SHIPPED,
    OrderStatus.SHIPPED: _S.SHIPPED,
    OrderStatus.INVOICED: _S.INVOICED,
    OrderStatus.CLOSED: _S.CLOSED,
    OrderStatus.CANCELLED: _S.CANCELLED,
}
#: Many-to-one: PendingApproval folds into on_hold (see the module docstring).
_STATUS_IN = {v: k for k, v in _STATUS_OUT.items()} | {_S.PENDING_APPROVAL: OrderStatus.ON_HOLD}
_CHANNEL_OUT = {
    OrderChannel.ERP: cloud.SourceChannel.ERP,
    OrderChannel.CRM: cloud.SourceChannel.CRM,
    OrderChannel.EDI: cloud.SourceChannel.EDI,
    OrderChannel.PORTAL: cloud.SourceChannel.PORTAL,
}
_CHANNEL_IN = {v: k for k, v in _CHANNEL_OUT.items()}

#: Canonical field name -> cloud JSON name, to name cloud paths in errors.
NAMES = {
    "key": "number", "customer_key": "customerNumber", "ship_to_site_id": "shipToCode",
    "channel": "sourceChannel", "customer_po": "externalDocumentNumber",
    "currency": "currencyCode", "ordered_at": "orderDateTime",
    "requested_date": "requestedDeliveryDate", "lines": "salesOrderLines",
    "line_no": "sequence", "sku": "itemNumber", "unit_price": "unitPrice",
}


def to_canonical(doc: cloud.CloudSalesOrder) -> Order:
    key = doc.number
    lines = [
        {
            "line_no": line.sequence,
            "sku": line.item_number,
            "quantity": quantity(DOMAIN, key, f"salesOrderLines.{i}.quantity", line.quantity),
            "unit_price": line.unit_price,
        }
        for i, line in enumerate(doc.sales_order_lines)
    ]
    data = {
        "key": key,
        "customer_key": doc.customer_number,
        "ship_to_site_id": doc.ship_to_code,
        "status": status(DOMAIN, key, "status", doc.status, _STATUS_IN),
        "channel": status(DOMAIN, key, "sourceChannel", doc.source_channel, _CHANNEL_IN),
        "customer_po": doc.external_document_number,
        "currency": doc.currency_code,
        "ordered_at": doc.order_date_time,
        "requested_date": doc.requested_delivery_date,
        "lines": lines,
    }
    return build_canonical(Order, doc, data, NAMES)


def _line(line: OrderLine) -> cloud.CloudSalesOrderLine:
    return construct(cloud.CloudSalesOrderLine, {
        "sequence": line.line_no,
        "item_number": line.sku,
        "quantity": Decimal(line.quantity),
        "unit_price": line.unit_price,
    })


def from_canonical(
    record: Order, *, cloud_id: UUID | None = None, source_version: int | None = None
) -> cloud.CloudSalesOrder:
    # construct without validation: ``record`` is a validated canonical Order
    # (UTC-aware ordered_at, bounded text) whose constraints are at least as
    # tight as the cloud sales order's.
    return construct(cloud.CloudSalesOrder, {
        "odata_etag": None,
        "id": cloud_id,
        "number": record.key,
        "last_modified_date_time": None,
        "coexist_source_version": source_version,
        "customer_number": record.customer_key,
        "ship_to_code": record.ship_to_site_id,
        "status": _STATUS_OUT[record.status],
        "source_channel": _CHANNEL_OUT[record.channel],
        "external_document_number": record.customer_po,
        "currency_code": record.currency,
        "order_date_time": record.ordered_at,
        "requested_delivery_date": record.requested_date,
        "sales_order_lines": [_line(line) for line in record.lines],
    })


__all__ = ["DOMAIN", "MODEL", "NAMES", "to_canonical", "from_canonical", "to_json_dict"]

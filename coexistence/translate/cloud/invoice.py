"""invoice <-> cloud ``salesInvoices``.

Named mappings:

* canonical ``void`` is the cloud's ``Canceled``: a renaming, one to one;
* **refused**: a cloud ``Draft`` invoice has no canonical twin (a canonical
  invoice has been issued; a draft is not yet a receivable), so translating one
  is a ``TranslationError``; change capture should not forward drafts;
* **refused**: fractional or negative line quantities, negative amounts.
"""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from coexistence.canonical.models import Invoice, InvoiceLine, InvoiceStatus
from coexistence.cloud import models as cloud
from coexistence.translate.cloud._common import (
    build_canonical,
    construct,
    quantity,
    status,
    to_json_dict,
)

DOMAIN = "invoice"
MODEL = cloud.CloudSalesInvoice

_S = cloud.SalesInvoiceStatus
_STATUS_OUT = {
    InvoiceStatus.OPEN: _S.OPEN,
    InvoiceStatus.PARTIALLY_PAID: _S.PARTIALLY_PAID,
    InvoiceStatus.PAID: _S.PAID,
    InvoiceStatus.VOID: _S.CANCELED,
}
#: ``Draft`` is deliberately absent: no canonical twin (see the module docstring).
_STATUS_IN = {v: k for k, v in _STATUS_OUT.items()}

#: Canonical field name -> cloud JSON name, to name cloud paths in errors.
NAMES = {
    "key": "number", "order_key": "orderNumber", "customer_key": "customerNumber",
    "currency": "currencyCode", "issued_on": "invoiceDate", "due_on": "dueDate",
    "tax_amount": "totalTaxAmount", "amount_paid": "amountPaid",
    "lines": "salesInvoiceLines", "line_no": "sequence", "sku": "itemNumber",
    "unit_price": "unitPrice",
}


def to_canonical(doc: cloud.CloudSalesInvoice) -> Invoice:
    key = doc.number
    lines = [
        {
            "line_no": line.sequence,
            "sku": line.item_number,
            "description": line.description,
            "quantity": quantity(DOMAIN, key, f"salesInvoiceLines.{i}.quantity", line.quantity),
            "unit_price": line.unit_price,
        }
        for i, line in enumerate(doc.sales_invoice_lines)
    ]
    data = {
        "key": key,
        "order_key": doc.order_number,
        "customer_key": doc.customer_number,
        "status": status(DOMAIN, key, "status", doc.status, _STATUS_IN),
        "currency": doc.currency_code,
        "issued_on": doc.invoice_date,
        "due_on": doc.due_date,
        "tax_amount": doc.total_tax_amount,
        "amount_paid": doc.amount_paid,
        "lines": lines,
    }
    return build_canonical(Invoice, doc, data, NAMES)


def _line(line: InvoiceLine) -> cloud.CloudSalesInvoiceLine:
    return construct(cloud.CloudSalesInvoiceLine, {
        "sequence": line.line_no,
        "item_number": line.sku,
        "description": line.description,
        "quantity": Decimal(line.quantity),
        "unit_price": line.unit_price,
    })


def from_canonical(
    record: Invoice, *, cloud_id: UUID | None = None, source_version: int | None = None
) -> cloud.CloudSalesInvoice:
    # construct without validation: ``record`` is a validated canonical Invoice
    # whose constraints are at least as tight as the cloud sales invoice's.
    return construct(cloud.CloudSalesInvoice, {
        "odata_etag": None,
        "id": cloud_id,
        "number": record.key,
        "last_modified_date_time": None,
        "coexist_source_version": source_version,
        "order_number": record.order_key,
        "customer_number": record.customer_key,
        "status": _STATUS_OUT[record.status],
        "currency_code": record.currency,
        "invoice_date": record.issued_on,
        "due_date": record.due_on,
        "total_tax_amount": record.tax_amount,
        "amount_paid": record.amount_paid,
        "sales_invoice_lines": [_line(line) for line in record.lines],
    })


__all__ = ["DOMAIN", "MODEL", "NAMES", "to_canonical", "from_canonical", "to_json_dict"]

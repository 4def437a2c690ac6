"""Table tests: one canonical record per domain and the exact cloud JSON it becomes."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID

import pytest

from coexistence.canonical.models import (
    ContractPrice,
    Customer,
    InventoryBalance,
    Invoice,
    InvoiceStatus,
    Order,
    OrderStatus,
    Product,
    Shipment,
)
from coexistence.translate.cloud import (
    canonical_from_json,
    from_canonical,
    to_json_bytes,
    to_json_dict,
)

CLOUD_ID = UUID("0b7c1a52-3f3e-4c55-9a7e-2f1d7d0e9c11")
SERVER = {"@odata.etag": None, "id": str(CLOUD_ID), "lastModifiedDateTime": None}

CUSTOMER = Customer(
    key="10042", name="Acme Supply Co.", status="active", currency="USD",
    credit_limit=Decimal("25000.00"), credit_hold=True, terms="net30", tax_id="94-1234567",
    customer_group="RETAIL", region="WEST", contact_name="Ana Díaz",
    contact_email="ana@acme.example", contact_phone="+1 510 555 0100",
    sites=[{"site_id": "S001", "kind": "ship_to", "name": "Acme Dock 1",
            "line1": "1 Harbor Way", "line2": None, "city": "Oakland", "region": "CA",
            "postal_code": "94607", "country": "US"}],
)
CUSTOMER_JSON = {
    **SERVER, "number": "10042", "coexistSourceVersion": 3, "displayName": "Acme Supply Co.",
    "status": "Active", "currencyCode": "USD", "creditLimit": "25000.00", "creditHold": True,
    "paymentTermsCode": "Net30", "taxRegistrationNumber": "94-1234567",
    "customerGroupCode": "RETAIL", "salesRegionCode": "WEST", "contactName": "Ana Díaz",
    "email": "ana@acme.example", "phoneNumber": "+1 510 555 0100",
    "addresses": [{"code": "S001", "addressType": "ShipTo", "name": "Acme Dock 1",
                   "addressLine1": "1 Harbor Way", "addressLine2": None, "city": "Oakland",
                   "state": "CA", "postalCode": "94607", "country": "US"}],
}

PRODUCT = Product(
    key="WID-01000", description="Widget, blue", unit="BX", weight_kg=Decimal("1.250"),
    status="discontinued", currency="EUR", list_price=Decimal("12.50"),
    standard_cost=Decimal("7.1234"),
)
PRODUCT_JSON = {
    **SERVER, "number": "WID-01000", "coexistSourceVersion": 3, "displayName": "Widget, blue",
    "baseUnitOfMeasureCode": "BX", "netWeightKg": "1.250", "status": "Discontinued",
    "currencyCode": "EUR", "unitPrice": "12.50", "unitCost": "7.1234",
}

PRICE = ContractPrice(
    key="7001", customer_key="10042", sku="WID-01000", currency="USD",
    breaks=[{"min_quantity": 1, "unit_price": Decimal("11.00")},
            {"min_quantity": 100, "unit_price": Decimal("9.75")}],
    valid_from=date(2026, 1, 1), valid_to=None,
)
PRICE_JSON = {
    **SERVER, "number": "7001", "coexistSourceVersion": 3, "customerNumber": "10042",
    "itemNumber": "WID-01000", "currencyCode": "USD", "startingDate": "2026-01-01",
    "endingDate": None,
    "priceBreaks": [{"minimumQuantity": "1", "unitPrice": "11.00"},
                    {"minimumQuantity": "100", "unitPrice": "9.75"}],
}

INVENTORY = InventoryBalance(key="DAL1:WID-01000", warehouse="DAL1", sku="WID-01000",
                             on_hand=5, allocated=8)
INVENTORY_JSON = {
    **SERVER, "number": "DAL1:WID-01000", "coexistSourceVersion": 3, "locationCode": "DAL1",
    "itemNumber": "WID-01000", "quantityOnHand": "5", "quantityAllocated": "8",
    "availableToPromise": "0",
}

ORDER = Order(
    key="500123", customer_key="10042", ship_to_site_id="S001", status="allocated",
    channel="edi", customer_po="PO-9981", currency="USD",
    ordered_at=datetime(2026, 3, 2, 14, 30, 0, 125000, tzinfo=UTC),
    requested_date=date(2026, 3, 9),
    lines=[{"line_no": 1, "sku": "WID-01000", "quantity": 24, "unit_price": Decimal("9.75")}],
)
ORDER_JSON = {
    **SERVER, "number": "500123", "coexistSourceVersion": 3, "customerNumber": "10042",
    "shipToCode": "S001", "status": "Released", "sourceChannel": "Edi",
    "externalDocumentNumber": "PO-9981", "currencyCode": "USD",
    "orderDateTime": "2026-03-02T14:30:00.125000Z", "requestedDeliveryDate": "2026-03-09",
    "salesOrderLines": [{"sequence": 1, "itemNumber": "WID-01000", "quantity": "24",
                         "unitPrice": "9.75"}],
}

SHIPMENT = Shipment(
    key="800001", order_key="500123", warehouse="DAL1", carrier="UPS",
    tracking_number="1Z999AA10123456784",
    milestones=[{"milestone": "picked", "at": datetime(2026, 3, 3, 9, 0, tzinfo=UTC)},
                {"milestone": "shipped", "at": datetime(2026, 3, 3, 17, 5, tzinfo=UTC)}],
    lines=[{"line_no": 1, "order_line_no": 1, "sku": "WID-01000", "quantity": 24}],
)
SHIPMENT_JSON = {
    **SERVER, "number": "800001", "coexistSourceVersion": 3, "orderNumber": "500123",
    "locationCode": "DAL1", "shippingAgentCode": "UPS",
    "packageTrackingNumber": "1Z999AA10123456784", "status": "Shipped",
    "pickedDateTime": "2026-03-03T09:00:00Z", "packedDateTime": None,
    "shippedDateTime": "2026-03-03T17:05:00Z", "deliveredDateTime": None,
    "shipmentLines": [{"sequence": 1, "orderLineSequence": 1, "itemNumber": "WID-01000",
                       "quantity": "24"}],
}

INVOICE = Invoice(
    key="900001", order_key="500123", customer_key="10042", status="void", currency="USD",
    issued_on=date(2026, 3, 4), due_on=date(2026, 4, 3), tax_amount=Decimal("19.31"),
    amount_paid=Decimal("0"),
    lines=[{"line_no": 1, "sku": "WID-01000", "description": "Widget, blue", "quantity": 24,
            "unit_price": Decimal("9.75")}],
)
INVOICE_JSON = {
    **SERVER, "number": "900001", "coexistSourceVersion": 3, "orderNumber": "500123",
    "customerNumber": "10042", "status": "Canceled", "currencyCode": "USD",
    "invoiceDate": "2026-03-04", "dueDate": "2026-04-03", "totalTaxAmount": "19.31",
    "amountPaid": "0",
    "salesInvoiceLines": [{"sequence": 1, "itemNumber": "WID-01000",
                           "description": "Widget, blue", "quantity": "24",
                           "unitPrice": "9.75"}],
}

TABLE = [
    ("customer", CUSTOMER, CUSTOMER_JSON),
    ("product", PRODUCT, PRODUCT_JSON),
    ("price", PRICE, PRICE_JSON),
    ("inventory", INVENTORY, INVENTORY_JSON),
    ("order", ORDER, ORDER_JSON),
    ("shipment", SHIPMENT, SHIPMENT_JSON),
    ("invoice", INVOICE, INVOICE_JSON),
]
table = pytest.mark.parametrize(("domain", "record", "expected"), TABLE, ids=[t[0] for t in TABLE])


@table
def test_a_canonical_record_becomes_exactly_this_cloud_json(domain, record, expected):
    doc = from_canonical(record, cloud_id=CLOUD_ID, source_version=3)
    assert to_json_dict(doc) == expected


@table
def test_this_cloud_json_becomes_exactly_this_canonical_record(domain, record, expected):
    assert canonical_from_json(domain, expected) == record


@table
def test_a_write_body_is_the_document_without_server_fields(domain, record, expected):
    body = to_json_dict(from_canonical(record, source_version=3), body=True)
    assert body == {k: v for k, v in expected.items() if k not in SERVER}


@table
def test_json_bytes_carry_the_same_document_as_the_json_dict(domain, record, expected):
    doc = from_canonical(record, cloud_id=CLOUD_ID, source_version=3)
    assert json.loads(to_json_bytes(doc)) == expected
    assert json.loads(to_json_bytes(doc, body=True)) == to_json_dict(doc, body=True)


# --------------------------------------------------------------------------- named lossy spots


def test_a_pending_approval_order_folds_into_on_hold_and_goes_back_as_on_hold():
    pending = dict(ORDER_JSON, status="PendingApproval")
    record = canonical_from_json("order", pending)
    assert record.status is OrderStatus.ON_HOLD
    assert to_json_dict(from_canonical(record))["status"] == "OnHold"


def test_an_allocated_order_is_released_in_the_cloud():
    assert to_json_dict(from_canonical(ORDER))["status"] == "Released"
    assert canonical_from_json("order", ORDER_JSON).status is OrderStatus.ALLOCATED


def test_a_void_invoice_is_canceled_in_the_cloud():
    assert canonical_from_json("invoice", INVOICE_JSON).status is InvoiceStatus.VOID


def test_whole_quantities_written_with_decimals_are_accepted():
    doc = dict(ORDER_JSON, salesOrderLines=[dict(ORDER_JSON["salesOrderLines"][0],
                                                 quantity="24.000")])
    assert canonical_from_json("order", doc).lines[0].quantity == 24


def test_cloud_timestamps_in_another_zone_are_the_same_instant_in_canonical():
    doc = dict(ORDER_JSON, orderDateTime="2026-03-02T09:30:00.125-05:00")
    assert canonical_from_json("order", doc).ordered_at == ORDER.ordered_at


def test_server_fields_on_a_read_document_do_not_reach_canonical():
    doc = dict(CUSTOMER_JSON, **{"@odata.etag": 'W/"9"',
                                 "lastModifiedDateTime": "2026-03-05T10:00:00Z"})
    assert canonical_from_json("customer", doc) == CUSTOMER

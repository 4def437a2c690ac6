"""Small canonical records for channel tests: one helper per domain, defaults filled in."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from coexistence.canonical.models import (
    ContractPrice,
    Customer,
    InventoryBalance,
    Invoice,
    Order,
    Product,
    Shipment,
)

AT = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def customer(key: str, **kw) -> Customer:
    data = dict(key=key, name=f"Customer {key}", status="active", currency="USD",
                credit_limit=Decimal("5000.00"), credit_hold=False, terms="net30",
                tax_id="TX-" + key, customer_group="RETAIL", region="WEST",
                contact_name="Pat", contact_email="pat@example.com",
                sites=({"site_id": f"{key}-S1", "kind": "ship_to", "name": "Dock",
                        "line1": "1 Main St", "city": "Reno", "region": "NV",
                        "postal_code": "89501", "country": "US"},))
    data.update(kw)
    return Customer.model_validate(data)


def product(sku: str, **kw) -> Product:
    data = dict(key=sku, description=f"Widget {sku}", unit="EA", weight_kg=Decimal("1.5"),
                status="active", currency="USD", list_price=Decimal("10.00"),
                standard_cost=Decimal("6.00"))
    data.update(kw)
    return Product.model_validate(data)


def price(key: str, customer_key: str, sku: str, **kw) -> ContractPrice:
    data = dict(key=key, customer_key=customer_key, sku=sku, currency="USD",
                breaks=({"min_quantity": 1, "unit_price": Decimal("9.00")},
                        {"min_quantity": 50, "unit_price": Decimal("8.00")}),
                valid_from=date(2026, 1, 1), valid_to=None)
    data.update(kw)
    return ContractPrice.model_validate(data)


def inventory(warehouse: str, sku: str, on_hand: int = 100, allocated: int = 30
              ) -> InventoryBalance:
    return InventoryBalance(key=f"{warehouse}:{sku}", warehouse=warehouse, sku=sku,
                            on_hand=on_hand, allocated=allocated)


def order(key: str, customer_key: str, **kw) -> Order:
    data = dict(key=key, customer_key=customer_key, status="open", channel="erp",
                currency="USD", ordered_at=AT,
                lines=({"line_no": 1, "sku": "WID-1", "quantity": 3,
                        "unit_price": Decimal("9.00")},))
    data.update(kw)
    return Order.model_validate(data)


def shipment(key: str, order_key: str, **kw) -> Shipment:
    data = dict(key=key, order_key=order_key, warehouse="W01", carrier="UPS",
                tracking_number="1Z999",
                milestones=({"milestone": "picked", "at": AT},),
                lines=({"line_no": 1, "order_line_no": 1, "sku": "WID-1", "quantity": 3},))
    data.update(kw)
    return Shipment.model_validate(data)


def invoice(key: str, order_key: str, customer_key: str, **kw) -> Invoice:
    data = dict(key=key, order_key=order_key, customer_key=customer_key, status="open",
                currency="USD", issued_on=date(2026, 3, 3), due_on=date(2026, 4, 2),
                tax_amount=Decimal("2.16"), amount_paid=Decimal("0"),
                lines=({"line_no": 1, "sku": "WID-1", "description": "Widget", "quantity": 3,
                        "unit_price": Decimal("9.00")},))
    data.update(kw)
    return Invoice.model_validate(data)


#: The customer most CLI, trace and capture tests write: "Acme Supply", key 10042, as a
#: person types it into either ERP (no tax id, no sites).
ACME = Customer.model_validate({
    "schema_version": 2, "key": "10042", "name": "Acme Supply", "status": "active",
    "currency": "USD", "credit_limit": "5000", "credit_hold": False, "terms": "net30",
    "customer_group": "RETAIL", "region": "WEST",
})

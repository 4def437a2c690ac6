"""Documents of the sample distributor: orders, shipments, invoices.

Order ``i`` belongs to customer ``i // orders_per_customer``.  Its status
follows ``LIFECYCLE`` (position ``i % len(LIFECYCLE)``), which also says
whether the order has a shipment (and at which milestone stage) and an
invoice (and in which status).  Any ``len(LIFECYCLE)`` consecutive orders
therefore hold every order status, every milestone stage (none, picked,
packed, shipped, delivered) and every invoice status, and shipment ``k`` or
invoice ``k`` maps to its order in O(1), keeping every record a function of
``(seed, index)`` and the scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from coexistence.canonical.models import (
    Invoice,
    InvoiceStatus,
    Milestone,
    Order,
    OrderChannel,
    OrderStatus,
    Shipment,
    SiteKind,
)
from coexistence.sample import words
from coexistence.sample.masters import (
    FX_FROM_USD,
    PRODUCT_NUMBER_BASE,
    STREAM_INVOICE,
    STREAM_ORDER,
    STREAM_SHIPMENT,
    between,
    customer_facts,
    customer_key,
    pick,
    product_facts,
    rng_for,
    sku,
    warehouse_code,
)

#: Orders are placed in the year from this instant.
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
#: Order / shipment / invoice ``k`` has canonical key ``str(DOCUMENT_KEY_BASE + k)``.
DOCUMENT_KEY_BASE = 100_000
_PAYMENT_DAYS = {"prepaid": 0, "cod": 0, "net15": 15, "net30": 30, "net45": 45, "net60": 60,
                 "net90": 90}


@dataclass(frozen=True, slots=True)
class Stage:
    """One position of the order lifecycle: status, shipment progress, invoice status."""

    status: OrderStatus
    #: ``None``: no shipment; otherwise how many milestones it has reached (0-4).
    milestones: int | None = None
    invoice: InvoiceStatus | None = None


LIFECYCLE: tuple[Stage, ...] = (
    Stage(OrderStatus.OPEN),
    Stage(OrderStatus.DRAFT),
    Stage(OrderStatus.OPEN),
    Stage(OrderStatus.ON_HOLD),
    Stage(OrderStatus.ALLOCATED, milestones=0),
    Stage(OrderStatus.ALLOCATED, milestones=1),
    Stage(OrderStatus.ALLOCATED, milestones=2),
    Stage(OrderStatus.PARTIALLY_SHIPPED, milestones=3),
    Stage(OrderStatus.SHIPPED, milestones=3),
    Stage(OrderStatus.SHIPPED, milestones=4),
    Stage(OrderStatus.INVOICED, milestones=4, invoice=InvoiceStatus.OPEN),
    Stage(OrderStatus.INVOICED, milestones=4, invoice=InvoiceStatus.PARTIALLY_PAID),
    Stage(OrderStatus.CLOSED, milestones=4, invoice=InvoiceStatus.PAID),
    Stage(OrderStatus.CLOSED, milestones=4, invoice=InvoiceStatus.PAID),
    Stage(OrderStatus.CANCELLED, invoice=InvoiceStatus.VOID),
    Stage(OrderStatus.CANCELLED),
)
_SHIPPED_POSITIONS = tuple(p for p, s in enumerate(LIFECYCLE) if s.milestones is not None)
_INVOICED_POSITIONS = tuple(p for p, s in enumerate(LIFECYCLE) if s.invoice is not None)
#: Minimum lines of a partially shipped order, so that one line can stay unshipped.
_PARTIAL_MIN_LINES = 2


def document_key(k: int) -> str:
    return str(DOCUMENT_KEY_BASE + k)


def _count(orders: int, positions: tuple[int, ...]) -> int:
    full, rest = divmod(orders, len(LIFECYCLE))
    return full * len(positions) + sum(1 for p in positions if p < rest)


def _order_index(k: int, positions: tuple[int, ...]) -> int:
    cycle, slot = divmod(k, len(positions))
    return cycle * len(LIFECYCLE) + positions[slot]


def shipment_count(orders: int) -> int:
    return _count(orders, _SHIPPED_POSITIONS)


def invoice_count(orders: int) -> int:
    return _count(orders, _INVOICED_POSITIONS)


def shipment_order_index(k: int) -> int:
    return _order_index(k, _SHIPPED_POSITIONS)


def invoice_order_index(k: int) -> int:
    return _order_index(k, _INVOICED_POSITIONS)


def _quantize(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def order_facts(
    seed: int, i: int, *, products: int, orders_per_customer: int, max_lines: int
) -> dict[str, Any]:
    """The fields of order ``i`` as a plain dict (lines carry SKU indexes in ``_sku_index``)."""
    rng = rng_for(seed, STREAM_ORDER, i)
    ci = i // orders_per_customer
    cust, _ = customer_facts(seed, ci)
    stage = LIFECYCLE[i % len(LIFECYCLE)]
    wanted = between(rng, 1, max_lines + 1)
    if stage.status is OrderStatus.PARTIALLY_SHIPPED:
        wanted = max(wanted, _PARTIAL_MIN_LINES)
    n_lines = min(wanted, products)
    fx = FX_FROM_USD[cust["currency"]]
    lines = []
    for n, pi in enumerate(rng.sample(range(products), n_lines)):
        list_usd = product_facts(seed, pi)["list_price"]
        lines.append({
            "line_no": n + 1,
            "sku": sku(pi),
            # Single-line orders get at least 2 units so a partial shipment can ship half.
            "quantity": between(rng, 2, 60) if n_lines == 1 else between(rng, 1, 60),
            "unit_price": _quantize(list_usd * fx * between(rng, 75, 101) / 100),
        })
    channel = rng.choices(tuple(OrderChannel), (40, 20, 25, 15))[0]
    ordered_at = EPOCH + timedelta(seconds=between(rng, 0, 365 * 86_400))
    ship_tos = [s["site_id"] for s in cust["sites"] if s["kind"] is SiteKind.SHIP_TO]
    return {
        "key": document_key(i),
        "customer_key": customer_key(ci),
        "ship_to_site_id": pick(rng, ship_tos),
        "status": stage.status,
        "channel": channel,
        "customer_po": (
            f"PO-{ordered_at.year}-{between(rng, 0, 10**6):06d}"
            if channel in (OrderChannel.EDI, OrderChannel.PORTAL) or rng.random() < 0.3
            else None
        ),
        "currency": cust["currency"],
        "ordered_at": ordered_at,
        "requested_date": (
            (ordered_at + timedelta(days=between(rng, 2, 21))).date()
            if rng.random() < 0.7 else None
        ),
        "lines": lines,
    }


def order(seed: int, i: int, **scale: int) -> Order:
    """Order ``i`` (scale: ``products``, ``orders_per_customer``, ``max_lines``)."""
    return Order.model_validate(order_facts(seed, i, **scale))


def _milestone_times(seed: int, oi: int, ordered_at: datetime) -> list[datetime]:
    # Drawn from the order's index, so a shipment and its invoice agree on the delivery day.
    rng = rng_for(seed, STREAM_SHIPMENT, oi)
    picked = ordered_at + timedelta(minutes=between(rng, 60, 48 * 60))
    packed = picked + timedelta(minutes=between(rng, 15, 8 * 60))
    shipped = packed + timedelta(minutes=between(rng, 30, 12 * 60))
    delivered = shipped + timedelta(minutes=between(rng, 12 * 60, 5 * 24 * 60))
    return [picked, packed, shipped, delivered]


def shipment(seed: int, k: int, *, warehouses: int, **scale: int) -> Shipment:
    """Shipment ``k``: of order ``shipment_order_index(k)``, from one of ``warehouses``."""
    oi = shipment_order_index(k)
    facts = order_facts(seed, oi, **scale)
    stage = LIFECYCLE[oi % len(LIFECYCLE)]
    rng = rng_for(seed, STREAM_SHIPMENT, oi + (1 << 39))
    lines = facts["lines"]
    if stage.status is OrderStatus.PARTIALLY_SHIPPED:
        shipped = [
            {**lines[0], "quantity": lines[0]["quantity"] // 2}
        ] if len(lines) == 1 else lines[:-1]
    else:
        shipped = lines
    times = _milestone_times(seed, oi, facts["ordered_at"])
    reached = stage.milestones or 0
    carrier = pick(rng, words.CARRIERS) if reached >= 1 else None
    return Shipment.model_validate({
        "key": document_key(k),
        "order_key": facts["key"],
        "warehouse": warehouse_code(between(rng, 0, warehouses)),
        "carrier": carrier,
        "tracking_number": (
            f"1Z{rng.getrandbits(64):016X}" if reached >= 3 else None
        ),
        "milestones": [
            {"milestone": m, "at": t}
            for m, t in zip(tuple(Milestone)[:reached], times, strict=False)
        ],
        "lines": [
            {"line_no": n + 1, "order_line_no": ln["line_no"], "sku": ln["sku"],
             "quantity": ln["quantity"]}
            for n, ln in enumerate(shipped)
        ],
    })


def invoice(seed: int, k: int, **scale: int) -> Invoice:
    """Invoice ``k``: of order ``invoice_order_index(k)``; tax at its customer's country rate."""
    oi = invoice_order_index(k)
    facts = order_facts(seed, oi, **scale)
    stage = LIFECYCLE[oi % len(LIFECYCLE)]
    rng = rng_for(seed, STREAM_INVOICE, oi)
    cust, country = customer_facts(seed, oi // scale["orders_per_customer"])
    if stage.milestones == 4:
        issued = _milestone_times(seed, oi, facts["ordered_at"])[-1].date()
    else:  # invoiced before shipping, then voided with the cancelled order
        issued = (facts["ordered_at"] + timedelta(days=1)).date()
    lines = [
        {"line_no": ln["line_no"], "sku": ln["sku"],
         "description": product_facts(seed, _sku_index(ln["sku"]))["description"],
         "quantity": ln["quantity"], "unit_price": ln["unit_price"]}
        for ln in facts["lines"]
    ]
    subtotal = sum((ln["unit_price"] * ln["quantity"] for ln in lines), Decimal(0))
    tax = _quantize(subtotal * Decimal(country.tax_rate))
    total = subtotal + tax
    if stage.invoice is InvoiceStatus.PAID:
        paid = total
    elif stage.invoice is InvoiceStatus.PARTIALLY_PAID:
        paid = _quantize(total * between(rng, 10, 90) / 100) or Decimal("0.01")
    else:
        paid = Decimal("0.00")
    return Invoice.model_validate({
        "key": document_key(k),
        "order_key": facts["key"],
        "customer_key": facts["customer_key"],
        "status": stage.invoice,
        "currency": facts["currency"],
        "issued_on": issued,
        "due_on": issued + timedelta(days=_PAYMENT_DAYS[cust["terms"]]),
        "tax_amount": tax,
        "amount_paid": paid,
        "lines": lines,
    })


def _sku_index(code: str) -> int:
    return int(code.rsplit("-", 1)[1]) - PRODUCT_NUMBER_BASE

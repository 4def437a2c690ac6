"""A small distributor for API tests: records, consumers and their tokens.

Keys are numeric so the same world seeds the legacy reference ERP (zero-padded
numeric keys), the cloud simulator and the in-memory fakes.
"""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal

from coexistence.flags import FlagSource, FlagState, Mode, Rollout
from coexistence.router import routed_version
from tests.support import records as r
from workers.api.auth import Consumers, token_hash

ACCOUNT, CHILD, OTHER, HELD = "10001", "10002", "10003", "10004"
SKU, SKU2, OLD = "WID-1000", "WID-2000", "OLD-9000"

TOKENS = {"portal": "tok-portal", "inquiry": "tok-inquiry", "crm": "tok-crm",
          "partner": "tok-partner", "held": "tok-held"}


def consumers() -> Consumers:
    return Consumers.from_json({"consumers": [
        {"name": "acme-portal", "role": "portal", "account": ACCOUNT, "children": [CHILD],
         "token_sha256": token_hash(TOKENS["portal"])},
        {"name": "held-portal", "role": "portal", "account": HELD,
         "token_sha256": token_hash(TOKENS["held"])},
        {"name": "service-desk", "role": "inquiry", "token_sha256": token_hash(TOKENS["inquiry"])},
        {"name": "crm", "role": "crm", "token_sha256": token_hash(TOKENS["crm"])},
        {"name": "globex-edi", "role": "partner", "account": OTHER,
         "token_sha256": token_hash(TOKENS["partner"])},
    ]})


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


#: The account's credit limit in each ERP, so a test can tell which one answered.
LIMITS = {"L": Decimal("1000.00"), "C": Decimal("2000.00")}


def records(tag: str = ""):
    """The world; ``tag`` changes a visible field so two ERPs can hold different states."""
    po = f"PO{tag}" if tag else None
    return [
        r.customer(ACCOUNT, credit_limit=LIMITS.get(tag, Decimal("1000.00"))),
        r.customer(CHILD), r.customer(OTHER),
        r.customer(HELD, credit_hold=True),
        r.product(SKU), r.product(SKU2, list_price=Decimal("20.00")),
        r.product(OLD, status="discontinued"),
        r.price("2001", ACCOUNT, SKU, valid_from=date(2020, 1, 1)),
        r.price("2003", OTHER, SKU, valid_from=date(2020, 1, 1),
                breaks=({"min_quantity": 1, "unit_price": Decimal("7.00")},)),
        r.inventory("W01", SKU, 100, 30), r.inventory("W02", SKU, 10, 0),
        r.order("300001", ACCOUNT, customer_po=po, lines=(
            {"line_no": 1, "sku": SKU, "quantity": 10, "unit_price": Decimal("9.00")},)),
        r.order("300002", OTHER, customer_po=po),
        r.order("300003", ACCOUNT, status="closed", customer_po=po),
        r.shipment("400001", "300001", tracking_number=f"1Z{tag or 'X'}"),
        r.invoice("500001", "300003", ACCOUNT, amount_paid=Decimal("0"), lines=(
            {"line_no": 1, "sku": SKU, "description": "Widget", "quantity": 10,
             "unit_price": Decimal("9.00")},)),
    ]


def seed(erp, items, version: int = 1) -> None:
    for record in items:
        erp.upsert(record, source_version=routed_version(0, version),
                   idempotency_key=str(uuid.uuid4()))


def flags(**modes: str) -> FlagSource:
    source = FlagSource()
    for domain, mode in modes.items():
        source.states[domain] = FlagState(domain, Mode(mode), Mode(mode), Rollout(), 1)
    return source


def set_mode(source: FlagSource, domain: str, mode: str, *, base: str | None = None,
             rollout: Rollout | None = None) -> FlagState:
    old = source.state(domain)
    state = FlagState(domain, Mode(mode), Mode(base or mode), rollout or Rollout(),
                      old.version + 1)
    source.states[domain] = state
    return state

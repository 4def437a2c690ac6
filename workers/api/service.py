"""What the API does, without HTTP: inquiry answers and portal order intake.

``Inquiry`` reads through ``SorReader`` (the SoR per record, pins honoured)
and ``InquiryCache``; every answer is serialised through the one policy
(``coexistence.policy``) for the caller's scope.  ``OrderIntake`` validates a
portal order against the SoRs (customer, credit hold, ship-to, SKUs, prices),
then writes it as a channel command through the router's own
``route_command`` handler, in this process, and reports the SoR's answer.

Why in-process and synchronous: the caller needs the SoR's answer (its order
number, or why it was refused) in the response, the write goes through exactly
the code the ``route_command`` actor runs (same decision, same writer
``COEXPORTAL``, same idempotency key per Idempotency-Key), and the SoR's change
capture then routes the order on to the shadow and the channels like any SoR
change.  Waiting on the bus instead would need the ledger (not built yet) and
would add a second place where a request can be lost between HTTP and SoR.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from bus.envelope import new_envelope
from bus.errors import BusinessError
from coexistence.canonical.models import Order, OrderChannel, OrderStatus
from coexistence.errors import TranslationError
from coexistence.flags import FlagSource
from coexistence.policy import (
    NotVisible,
    Rows,
    Scope,
    grant_for,
    serialise,
    visible,
    visible_fields,
)
from coexistence.router import decide_command
from workers.api.sor import UNAVAILABLE, InquiryCache, SorReader, SorUnavailable, Source
from workers.router import handlers, queues

#: Orders in these statuses are open and not yet invoiced (exposure counts their total).
UNINVOICED_OPEN = frozenset({OrderStatus.OPEN, OrderStatus.ON_HOLD, OrderStatus.ALLOCATED,
                             OrderStatus.PARTIALLY_SHIPPED, OrderStatus.SHIPPED})
OPEN_INVOICE = frozenset({"open", "partially_paid"})


class ApiError(Exception):
    """An answer other than success, as a problem: status, code, detail, field."""

    def __init__(self, status: int, code: str, detail: str, field: str | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.headers = dict(headers or {})


class Miss(Exception):
    """A cache-only evaluation needed a read that is not cached."""


@dataclass
class Freshness:
    cached: bool = True
    stale: bool = False
    age_s: float = 0.0

    def add(self, cached: bool, stale: bool, age_s: float) -> None:
        self.cached = self.cached and cached
        self.stale = self.stale or stale
        self.age_s = max(self.age_s, age_s)


class Reads:
    """The SoR reads of one answer, through the cache; ``cached_only`` never reads a SoR."""

    def __init__(self, reader: SorReader, cache: InquiryCache, cached_only: bool) -> None:
        self.reader = reader
        self.cache = cache
        self.cached_only = cached_only
        self.sources: dict[tuple, Source] = {}
        self.freshness = Freshness()

    def _through(self, op: tuple, domain: str, compute: Callable[[], Any]) -> Any:
        versions = (self.reader.flags.state(domain).version,)
        entry = self.cache.fresh(op, versions)
        if entry is not None:
            value, sources = entry.value
            self.freshness.add(True, False, self.cache.age_s(entry))
        elif self.cached_only:
            raise Miss()
        else:
            try:
                value, sources = compute()
            except SorUnavailable:
                entry = self.cache.stale(op)
                if entry is None:
                    raise
                value, sources = entry.value
                self.freshness.add(True, True, self.cache.age_s(entry))
            else:
                self.cache.put(op, versions, (value, sources))
                self.freshness.add(False, False, 0.0)
        for s in sources:
            self.sources[(s.domain, s.system, s.mode, s.pinned, s.flag_version)] = s
        return value

    def get(self, domain: str, key: str):
        def compute():
            record, source = self.reader.get(domain, key)
            return record, [source]
        return self._through(("get", domain, key), domain, compute)

    def find(self, domain: str, field: str, value: str):
        return self._through(("find", domain, field, value), domain,
                             lambda: self.reader.find(domain, field, value))

    def meta(self) -> dict[str, Any]:
        return {"answered_by": [s.to_dict() for s in self.sources.values()],
                "cached": self.freshness.cached, "stale": self.freshness.stale,
                "age_s": round(self.freshness.age_s, 3), "max_age_s": self.cache.ttl_s}


def _scope_allows(scope: Scope, domain: str, customer: str) -> None:
    try:
        grant = grant_for(scope, domain)
    except NotVisible:
        raise ApiError(403, "forbidden", f"role {scope.role} may not read {domain}") from None
    if grant.rows is Rows.OWN and not scope.owns(customer):
        raise ApiError(403, "forbidden",
                       f"customer {customer} is not in {scope.name}'s scope", "customer")


def _money(value: Decimal) -> str:
    """Two decimals unless the value needs more (the legacy ERP keeps 1/10,000 units)."""
    cents = value.quantize(Decimal("0.01"))
    return str(cents) if cents == value else format(value.normalize(), "f")


class Inquiry:
    def __init__(self, reader: SorReader, cache: InquiryCache,
                 today: Callable[[], date] = lambda: datetime.now(UTC).date()) -> None:
        self.reader = reader
        self.cache = cache
        self.today = today

    def reads(self, cached_only: bool) -> Reads:
        return Reads(self.reader, self.cache, cached_only)

    # ------------------------------------------------------------------ credit

    def credit(self, reads: Reads, scope: Scope, key: str) -> dict[str, Any]:
        _scope_allows(scope, "customer", key)
        fields = visible_fields(scope, "customer")
        if not {"credit_limit", "credit_hold"} <= fields:
            raise ApiError(403, "forbidden", f"role {scope.role} may not read customer credit")
        customer = reads.get("customer", key)
        if customer is None:
            raise ApiError(404, "not_found", f"no customer {key}", "key")
        orders = reads.find("order", "customer_key", key)
        invoices = reads.find("invoice", "customer_key", key)
        exposure = Decimal(0)
        open_orders = open_invoices = 0
        for o in orders:
            if o.status in UNINVOICED_OPEN and o.currency == customer.currency:
                exposure += o.total
                open_orders += 1
        for inv in invoices:
            if inv.status in OPEN_INVOICE and inv.currency == customer.currency:
                exposure += max(inv.total - inv.amount_paid, Decimal(0))
                open_invoices += 1
        return {"customer_key": key, "currency": customer.currency,
                "credit_limit": _money(customer.credit_limit),
                "credit_hold": customer.credit_hold, "exposure": _money(exposure),
                "available_credit": _money(max(customer.credit_limit - exposure, Decimal(0))),
                "open_orders": open_orders, "open_invoices": open_invoices}

    # ------------------------------------------------------------------ price

    def price(self, reads: Reads, scope: Scope, customer: str, sku: str, qty: int
              ) -> dict[str, Any]:
        _scope_allows(scope, "price", customer)
        today = self.today()
        found = [p for p in reads.find("price", "customer_key", customer)
                 if p.sku == sku and p.valid_from <= today
                 and (p.valid_to is None or today <= p.valid_to)]
        if not found:
            raise ApiError(404, "not_found", f"no contract price for customer {customer} and "
                           f"sku {sku} valid on {today.isoformat()}", "sku")
        agreement = max(found, key=lambda p: (p.valid_from, p.key))
        applicable = [b for b in agreement.breaks if b.min_quantity <= qty]
        if not applicable:
            raise ApiError(422, "below_smallest_break",
                           f"quantity {qty} is below the smallest break "
                           f"({agreement.breaks[0].min_quantity})", "qty")
        shown = serialise(scope, agreement)
        breaks = [{"min_quantity": b["min_quantity"], "unit_price": b["unit_price"]}
                  for b in shown["breaks"]]
        chosen = applicable[-1]
        return {"customer_key": customer, "sku": sku, "quantity": qty,
                "currency": shown["currency"], "unit_price": _money(chosen.unit_price),
                "applied_break": {"min_quantity": chosen.min_quantity,
                                  "unit_price": _money(chosen.unit_price)},
                "agreement_key": agreement.key, "valid_from": shown["valid_from"],
                "valid_to": shown["valid_to"], "breaks": breaks}

    # ------------------------------------------------------------------ availability

    def availability(self, reads: Reads, scope: Scope, sku: str, warehouse: str | None
                     ) -> dict[str, Any]:
        _scope_allows(scope, "inventory", "")
        if warehouse:
            record = reads.get("inventory", f"{warehouse}:{sku}")
            records = [record] if record is not None else []
        else:
            records = reads.find("inventory", "sku", sku)
        if not records:
            where = f" in warehouse {warehouse}" if warehouse else ""
            raise ApiError(404, "not_found", f"no stock record for sku {sku}{where}", "sku")
        balances = []
        for rec in records:
            shown = serialise(scope, rec)
            balances.append({k: shown.get(k) for k in (
                "warehouse", "sku", "on_hand", "allocated", "available_to_promise")})
        return {"sku": sku, "warehouse": warehouse,
                "available_to_promise": sum(r.available_to_promise for r in records),
                "balances": balances}

    # ------------------------------------------------------------------ order

    def order(self, reads: Reads, scope: Scope, key: str) -> dict[str, Any]:
        try:
            grant_for(scope, "order")
        except NotVisible:
            raise ApiError(403, "forbidden", f"role {scope.role} may not read orders") from None
        record = reads.get("order", key)
        shown = visible(scope, record) if record is not None else None
        if shown is None:
            # Another customer's order is "not found" too: its existence is not the caller's.
            raise ApiError(404, "not_found", f"no order {key} visible to {scope.name}", "key")
        shipments = [s for s in (visible(scope, x, owner=record.customer_key)
                                 for x in reads.find("shipment", "order_key", key))
                     if s is not None]
        invoices = [i for i in (visible(scope, x) for x in reads.find("invoice", "order_key",
                                                                     key)) if i is not None]
        return {"order": shown, "shipments": shipments, "invoices": invoices}


# --------------------------------------------------------------------------- orders


class OrderIntake:
    """Portal order -> checked against the SoRs -> a ``portal`` command through route_command."""

    def __init__(self, reader: SorReader, erps: Mapping[str, Any], flags: FlagSource,
                 send: handlers.Send) -> None:
        self.reader = reader
        self.erps = erps
        self.flags = flags
        self.send = send

    def build(self, request: dict[str, Any], *, order_key: str, ordered_at: datetime
              ) -> Order:
        """The canonical order, checked against the SoRs; ``ApiError`` names what is wrong."""
        customer_key = request["customer_key"]
        customer, _ = self.reader.get("customer", customer_key)
        if customer is None:
            raise ApiError(422, "unknown_customer", f"no customer {customer_key}",
                           "customer_key")
        if customer.credit_hold:
            raise ApiError(422, "credit_hold",
                           f"customer {customer_key} is on credit hold; orders are refused "
                           "until it is released", "customer_key")
        if customer.status != "active":
            raise ApiError(422, "customer_not_active",
                           f"customer {customer_key} is {customer.status}", "customer_key")
        ship_to = request.get("ship_to_site_id")
        if ship_to and not any(s.site_id == ship_to and s.kind == "ship_to"
                               for s in customer.sites):
            raise ApiError(422, "unknown_ship_to",
                           f"customer {customer_key} has no ship-to site {ship_to}",
                           "ship_to_site_id")
        contracts, _ = self.reader.find("price", "customer_key", customer_key)
        today = ordered_at.date()
        lines, seen = [], set()
        for i, line in enumerate(request["lines"]):
            where = f"lines[{i}]"
            line_no = line.get("line_no") or i + 1
            if line_no in seen:
                raise ApiError(422, "duplicate_line_no", f"line number {line_no} is used twice",
                               f"{where}.line_no")
            seen.add(line_no)
            sku = line["sku"]
            product, _ = self.reader.get("product", sku)
            if product is None:
                raise ApiError(422, "unknown_sku", f"no product {sku}", f"{where}.sku")
            if product.status != "active":
                raise ApiError(422, "sku_not_orderable", f"product {sku} is {product.status}",
                               f"{where}.sku")
            price = _unit_price(contracts, product, sku, line["quantity"], customer.currency,
                                today)
            if price is None:
                raise ApiError(422, "no_price", f"no price for {sku} in {customer.currency}",
                               f"{where}.sku")
            lines.append({"line_no": line_no, "sku": sku, "quantity": line["quantity"],
                          "unit_price": price})
        try:
            return Order.model_validate({
                "key": order_key, "customer_key": customer_key, "ship_to_site_id": ship_to,
                "status": OrderStatus.OPEN, "channel": OrderChannel.PORTAL,
                "customer_po": request.get("customer_po"), "currency": customer.currency,
                "ordered_at": ordered_at, "requested_date": request.get("requested_date"),
                "lines": lines})
        except ValueError as exc:
            raise ApiError(422, "invalid_order", str(exc).splitlines()[0]) from None

    def write(self, record: Order, *, message_id: str, correlation_id: str) -> dict[str, Any]:
        """Send the order to its SoR through ``route_command``; the accepted order, or
        ``ApiError`` (the SoR refused) or ``SorUnavailable``."""
        state = self.flags.state("order")
        # One flag state for the decision reported and the one route_command takes.
        snapshot = FlagSource({"order": state})
        decision = decide_command("order", record, state)
        env = new_envelope(domain="order", kind=queues.KIND_COMMAND, key=record.key,
                           payload={"record": record.model_dump(mode="json"),
                                    "channel": "portal"},
                           source_system="portal", source_version=1,
                           flag_version=state.version, message_id=message_id,
                           correlation_id=correlation_id)
        try:
            handlers.route_command(env, self.erps, snapshot, self.send)
        except TranslationError as exc:
            raise ApiError(422, "refused_by_sor", str(exc), exc.field) from None
        except BusinessError as exc:
            raise ApiError(422, "refused_by_sor", f"the {decision.sor} ERP refused the order: "
                           f"{exc}") from None
        except UNAVAILABLE as exc:
            raise SorUnavailable(decision.sor, "order", exc) from None
        return {"order_key": record.key, "status": "accepted", "system": decision.sor,
                "mode": decision.mode, "flag_version": state.version,
                "currency": record.currency, "total": _money(record.total),
                "lines": [{"line_no": ln.line_no, "sku": ln.sku, "quantity": ln.quantity,
                           "unit_price": _money(ln.unit_price)} for ln in record.lines]}


def _unit_price(contracts, product, sku: str, qty: int, currency: str, today: date
                ) -> Decimal | None:
    valid = [p for p in contracts if p.sku == sku and p.currency == currency
             and p.valid_from <= today and (p.valid_to is None or today <= p.valid_to)]
    if valid:
        agreement = max(valid, key=lambda p: (p.valid_from, p.key))
        applicable = [b for b in agreement.breaks if b.min_quantity <= qty]
        if applicable:
            return applicable[-1].unit_price
    if product.currency == currency:
        return product.list_price
    return None

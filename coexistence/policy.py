"""The one field and row policy: what each consumer role may read and write.

Every exit that shows canonical data to someone outside coexist (the governed
API, portal webhooks, the CRM channel, the EDI channel) serialises through
``serialise`` and checks inbound commands with ``check_write``; nothing else
decides what a consumer sees.

The table is **default deny**:

* a role sees only the domains ``POLICY`` names for it;
* within a domain, only the field paths its ``Grant`` names (``"lines.sku"``
  is the ``sku`` of every order line): a field added to a canonical model, or to
  one of its nested lines, stays invisible until the table names it;
* rows: ``Rows.OWN`` shows only rows owned by a customer in the consumer's
  scope (the portal's account and its children, a trading partner's
  customers); ``Rows.ALL`` every row (shared data such as products, or roles
  that serve every customer).

Who owns a row: ``OWNER_FIELD`` names the field that holds the owning
customer; a shipment names only its order, so the caller passes the order's
customer as ``owner`` (a row whose owner is unknown is not shown).

Derived values (available to promise, totals, open balance) are computed from
the record and shown only when the grant names them, like fields.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from coexistence.canonical import MODELS, CanonicalRecord
from coexistence.errors import CoexistError


class Role(StrEnum):
    #: A B2B portal user: one customer account and its children in a hierarchy.
    PORTAL = "portal"
    #: An EDI trading partner: the documents of the customers it trades for.
    PARTNER = "partner"
    #: The CRM channel: accounts, order, shipment and invoice status of every customer.
    CRM = "crm"
    #: Sales and service inquiry: live answers about every customer, never costs.
    INQUIRY = "inquiry"


class Rows(StrEnum):
    #: Every row of the domain (shared data, or a role that serves every customer).
    ALL = "all"
    #: Rows owned by a customer in the consumer's scope.
    OWN = "own"


@dataclass(frozen=True, slots=True)
class Grant:
    """What one role may do with one domain."""

    read: frozenset[str]
    write: frozenset[str] = frozenset()
    rows: Rows = Rows.OWN


def _paths(*names: str) -> frozenset[str]:
    return frozenset(names)


_SITE = tuple(f"sites.{f}" for f in (
    "site_id", "kind", "name", "line1", "line2", "city", "region", "postal_code", "country"))
_ORDER_LINES = ("lines.line_no", "lines.sku", "lines.quantity", "lines.unit_price")
_SHIPMENT = ("key", "schema_version", "order_key", "warehouse", "carrier", "tracking_number",
             "milestones.milestone", "milestones.at", "lines.line_no", "lines.order_line_no",
             "lines.sku", "lines.quantity")
_ORDER = ("key", "schema_version", "customer_key", "ship_to_site_id", "status", "channel",
          "customer_po", "currency", "ordered_at", "requested_date", *_ORDER_LINES, "total")
_INVOICE = ("key", "schema_version", "order_key", "customer_key", "status", "currency",
            "issued_on", "due_on", "tax_amount", "amount_paid", "lines.line_no", "lines.sku",
            "lines.description", "lines.quantity", "lines.unit_price", "subtotal", "total",
            "open_balance")
_PRICE = ("key", "schema_version", "customer_key", "sku", "currency", "breaks.min_quantity",
          "breaks.unit_price", "valid_from", "valid_to")
#: What an order command from outside may set; the key, status, channel, time and
#: (for the portal) the prices are coexist's or the SoR's to decide.
_ORDER_COMMAND = ("customer_key", "ship_to_site_id", "customer_po", "requested_date",
                  "lines.line_no", "lines.sku", "lines.quantity")

#: role -> domain -> grant.  A role or domain not named here sees nothing.
POLICY: Mapping[Role, Mapping[str, Grant]] = types.MappingProxyType({
    Role.PORTAL: {
        "customer": Grant(_paths("key", "schema_version", "name", "status", "currency",
                                 "credit_limit", "credit_hold", "terms", *_SITE)),
        # Never standard_cost: the portal sees list prices, not what the goods cost us.
        "product": Grant(_paths("key", "schema_version", "description", "unit", "weight_kg",
                                "status", "currency", "list_price"), rows=Rows.ALL),
        "price": Grant(_paths(*_PRICE)),
        # What can be promised, not the warehouse's books.
        "inventory": Grant(_paths("key", "schema_version", "warehouse", "sku",
                                  "available_to_promise"), rows=Rows.ALL),
        "order": Grant(_paths(*_ORDER), write=_paths(*_ORDER_COMMAND)),
        "shipment": Grant(_paths(*_SHIPMENT)),
        "invoice": Grant(_paths(*_INVOICE)),
    },
    Role.PARTNER: {
        "customer": Grant(_paths("key", "schema_version", "name", *_SITE)),
        "product": Grant(_paths("key", "schema_version", "description", "unit", "weight_kg",
                                "status"), rows=Rows.ALL),
        "order": Grant(_paths(*_ORDER),
                       write=_paths(*_ORDER_COMMAND, "currency", "lines.unit_price")),
        "shipment": Grant(_paths(*_SHIPMENT)),
        "invoice": Grant(_paths(*(f for f in _INVOICE if f != "open_balance"))),
    },
    Role.CRM: {
        "customer": Grant(
            _paths("key", "schema_version", "name", "status", "currency", "credit_limit",
                   "credit_hold", "terms", "tax_id", "customer_group", "region",
                   "contact_name", "contact_email", "contact_phone", *_SITE),
            write=_paths("name", "tax_id", "contact_name", "contact_email", "contact_phone",
                         *_SITE),
            rows=Rows.ALL),
        "order": Grant(_paths("key", "schema_version", "customer_key", "status", "channel",
                              "customer_po", "currency", "ordered_at", "requested_date",
                              "total"), rows=Rows.ALL),
        "shipment": Grant(_paths("key", "schema_version", "order_key", "warehouse", "carrier",
                                 "tracking_number", "milestones.milestone", "milestones.at"),
                          rows=Rows.ALL),
        "invoice": Grant(_paths("key", "schema_version", "order_key", "customer_key", "status",
                                "currency", "issued_on", "due_on", "tax_amount", "amount_paid",
                                "total", "open_balance"), rows=Rows.ALL),
    },
    Role.INQUIRY: {
        "customer": Grant(_paths("key", "schema_version", "name", "status", "currency",
                                 "credit_limit", "credit_hold", "terms", "customer_group",
                                 "region", *_SITE), rows=Rows.ALL),
        "product": Grant(_paths("key", "schema_version", "description", "unit", "weight_kg",
                                "status", "currency", "list_price"), rows=Rows.ALL),
        "price": Grant(_paths(*_PRICE), rows=Rows.ALL),
        "inventory": Grant(_paths("key", "schema_version", "warehouse", "sku", "on_hand",
                                  "allocated", "available_to_promise"), rows=Rows.ALL),
        "order": Grant(_paths(*_ORDER), rows=Rows.ALL),
        "shipment": Grant(_paths(*_SHIPMENT), rows=Rows.ALL),
        "invoice": Grant(_paths(*_INVOICE), rows=Rows.ALL),
    },
})

#: domain -> the field holding the customer that owns the row (``None``: the caller
#: resolves it; shipments name only their order).  Domains not listed have no owner.
OWNER_FIELD: Mapping[str, str | None] = types.MappingProxyType({
    "customer": "key",
    "price": "customer_key",
    "order": "customer_key",
    "invoice": "customer_key",
    "shipment": None,
})


def _decimal(value: Decimal) -> str:
    # As pydantic writes Decimals in JSON mode, so a derived value reads like a field.
    return str(value)


#: domain -> derived name -> how to compute it from the record (shown only when granted).
DERIVED: Mapping[str, Mapping[str, Callable[[Any], Any]]] = types.MappingProxyType({
    "inventory": {"available_to_promise": lambda r: r.available_to_promise},
    "order": {"total": lambda r: _decimal(r.total)},
    "invoice": {
        "subtotal": lambda r: _decimal(r.subtotal),
        "total": lambda r: _decimal(r.total),
        "open_balance": lambda r: _decimal(max(r.total - r.amount_paid, Decimal(0))),
    },
})


class PolicyError(CoexistError):
    """Base of the policy's refusals."""


class NotVisible(PolicyError):
    """The consumer may not see this domain (``reason="domain"``) or this row (``"row"``)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class NotPermitted(PolicyError):
    """A command sets a field (``path``) or a row the consumer may not write."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


class PolicyConfigError(ValueError):
    """The policy table names a domain or a field path that does not exist."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Who is asking: a role and, for ``Rows.OWN`` grants, the customers it may see.

    ``customers=None`` means every customer, which only roles without ``Rows.OWN``
    grants may have (``validate_scope``).
    """

    role: Role
    customers: frozenset[str] | None = field(default=None)
    #: For logs and audit: the consumer's configured name (never its credential).
    name: str = ""

    def owns(self, customer: str | None) -> bool:
        if self.customers is None:
            return True
        return customer is not None and customer in self.customers


def validate_scope(scope: Scope) -> Scope:
    """Refuse a scope that would see every customer through an ``own rows`` grant."""
    if scope.customers is None and any(
            g.rows is Rows.OWN for g in POLICY.get(scope.role, {}).values()):
        raise PolicyConfigError(
            f"consumer {scope.name or '?'}: role {scope.role} sees only its own customers' "
            "rows; name its customer account(s)")
    if scope.customers is not None and not scope.customers:
        raise PolicyConfigError(f"consumer {scope.name or '?'}: an empty customer scope")
    return scope


# --------------------------------------------------------------------------- reading


def grant_for(scope: Scope, domain: str) -> Grant:
    grant = POLICY.get(scope.role, {}).get(domain)
    if grant is None:
        raise NotVisible(f"role {scope.role} may not read {domain}", "domain")
    return grant


def can_read(scope: Scope, domain: str) -> bool:
    return domain in POLICY.get(scope.role, {})


def owner_of(domain: str, record: CanonicalRecord | Mapping[str, Any]) -> str | None:
    """The customer that owns a row, when the row itself says (see ``OWNER_FIELD``)."""
    name = OWNER_FIELD.get(domain)
    if name is None:
        return None
    value = record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)
    return value if isinstance(value, str) else None


def row_visible(scope: Scope, domain: str, record: CanonicalRecord | Mapping[str, Any],
                owner: str | None = None) -> bool:
    """Whether the row may be shown to ``scope`` (the domain must be granted too)."""
    grant = POLICY.get(scope.role, {}).get(domain)
    if grant is None:
        return False
    if grant.rows is Rows.ALL:
        return True
    return scope.owns(owner if owner is not None else owner_of(domain, record))


def serialise(scope: Scope, record: CanonicalRecord, *, owner: str | None = None
              ) -> dict[str, Any]:
    """The record as JSON for ``scope``: only granted fields, or ``NotVisible``.

    ``owner`` is the owning customer when the record does not name it (shipments).
    """
    domain = record.domain
    grant = grant_for(scope, domain)
    if not row_visible(scope, domain, record, owner):
        raise NotVisible(f"{domain} {record.key} is not in {scope.name or scope.role}'s scope",
                         "row")
    data = _filter(record.model_dump(mode="json"), grant.read, "")
    for name, compute in DERIVED.get(domain, {}).items():
        if name in grant.read:
            data[name] = compute(record)
    return data


def visible(scope: Scope, record: CanonicalRecord, *, owner: str | None = None
            ) -> dict[str, Any] | None:
    """``serialise``, or ``None`` when the consumer may not see the record."""
    try:
        return serialise(scope, record, owner=owner)
    except NotVisible:
        return None


def filter_fields(scope: Scope, domain: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Only the granted paths of an already-serialised record (no row check)."""
    return _filter(dict(data), grant_for(scope, domain).read, "")


def visible_fields(scope: Scope, domain: str) -> frozenset[str]:
    """The field paths (and derived names) ``scope`` may read of ``domain``."""
    grant = POLICY.get(scope.role, {}).get(domain)
    return grant.read if grant else frozenset()


def _filter(data: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in data.items():
        path = prefix + name
        if path in allowed:
            out[name] = value
            continue
        nested = path + "."
        if isinstance(value, list | tuple) and any(a.startswith(nested) for a in allowed):
            out[name] = [_filter(v, allowed, nested) if isinstance(v, Mapping) else v
                         for v in value]
        elif isinstance(value, Mapping) and any(a.startswith(nested) for a in allowed):
            out[name] = _filter(value, allowed, nested)
    return out


# --------------------------------------------------------------------------- writing


def check_write(scope: Scope, domain: str, data: Mapping[str, Any], *,
                owner: str | None = None) -> None:
    """Refuse a command that sets a path ``scope`` may not write or a row it does not own.

    ``data`` is the command's JSON as the consumer sent it (before coexist fills in
    what it decides itself); ``NotPermitted`` names the first offending path.
    """
    grant = POLICY.get(scope.role, {}).get(domain)
    if grant is None or not grant.write:
        raise NotPermitted(f"role {scope.role} may not write {domain}", domain)
    for path in _set_paths(data, ""):
        if path not in grant.write:
            raise NotPermitted(f"role {scope.role} may not set {domain}.{path}", path)
    if grant.rows is Rows.OWN:
        customer = owner if owner is not None else owner_of(domain, data)
        if not scope.owns(customer):
            field_name = OWNER_FIELD.get(domain) or domain
            raise NotPermitted(
                f"{domain} for customer {customer!r} is not in {scope.name or scope.role}'s "
                "scope", field_name)


def _set_paths(data: Mapping[str, Any], prefix: str) -> Iterable[str]:
    for name, value in data.items():
        if value is None:
            continue
        path = prefix + name
        if isinstance(value, list | tuple) and value and all(isinstance(v, Mapping)
                                                            for v in value):
            seen: dict[str, None] = {}
            for item in value:
                seen.update(dict.fromkeys(_set_paths(item, path + ".")))
            yield from seen
        elif isinstance(value, Mapping):
            yield from _set_paths(value, path + ".")
        else:
            yield path


# --------------------------------------------------------------------------- validation


def field_paths(model: type[BaseModel], prefix: str = "") -> frozenset[str]:
    """Every leaf field path of a model (``lines.sku``), nested models included."""
    out: set[str] = set()
    for name, info in model.model_fields.items():
        inner = _nested_model(info.annotation)
        if inner is None:
            out.add(prefix + name)
        else:
            out |= field_paths(inner, f"{prefix}{name}.")
    return frozenset(out)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def validate_policy(table: Mapping[Role, Mapping[str, Grant]] = POLICY) -> None:
    """Refuse a table naming an unknown domain or path (called at start and in tests)."""
    for role, grants in table.items():
        for domain, grant in grants.items():
            model = MODELS.get(domain)
            if model is None:
                raise PolicyConfigError(f"policy {role}: unknown domain {domain!r}")
            known = field_paths(model) | set(DERIVED.get(domain, {}))
            for path in sorted(grant.read | grant.write):
                if path not in known:
                    raise PolicyConfigError(f"policy {role}.{domain}: no field {path!r}")
            if grant.rows is Rows.OWN and domain not in OWNER_FIELD:
                raise PolicyConfigError(
                    f"policy {role}.{domain}: own rows, but {domain} has no owning customer")

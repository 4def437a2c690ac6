"""The one field and row policy: for every role, exactly the fields and rows it sees."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import create_model

from coexistence.canonical.models import Order
from coexistence.policy import (
    POLICY,
    NotPermitted,
    NotVisible,
    PolicyConfigError,
    Role,
    Scope,
    check_write,
    field_paths,
    serialise,
    validate_policy,
    validate_scope,
    visible,
)
from tests.support import records as r

PORTAL = Scope(Role.PORTAL, frozenset({"C1", "C2"}), "acme-portal")  # C2 is C1's child
PARTNER = Scope(Role.PARTNER, frozenset({"C3"}), "globex-edi")
CRM = Scope(Role.CRM, None, "crm")
INQUIRY = Scope(Role.INQUIRY, None, "service-desk")

ORDERS = {"O1": "C1", "O2": "C2", "O3": "C3"}
WORLD = [
    r.customer("C1"), r.customer("C2"), r.customer("C3"),
    r.product("WID-1"),
    r.price("P1", "C1", "WID-1"), r.price("P3", "C3", "WID-1"),
    r.inventory("W01", "WID-1"),
    r.order("O1", "C1"), r.order("O2", "C2"), r.order("O3", "C3"),
    r.shipment("S1", "O1"), r.shipment("S3", "O3"),
    r.invoice("I1", "O1", "C1"), r.invoice("I3", "O3", "C3"),
]


def _owner(record):
    return ORDERS.get(record.order_key) if record.domain == "shipment" else None


def _seen(scope: Scope) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for record in WORLD:
        if visible(scope, record, owner=_owner(record)) is not None:
            out.setdefault(record.domain, set()).add(record.key)
    return out


def _paths(data, prefix="") -> set[str]:
    out = set()
    for name, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                out |= _paths(item, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def _fields(scope: Scope) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for record in WORLD:
        data = visible(scope, record, owner=_owner(record))
        if data is not None:
            out.setdefault(record.domain, set()).update(_paths(data))
    return out


def _set(text: str) -> set[str]:
    return set(text.split())


SITE = _set("sites.site_id sites.kind sites.name sites.line1 sites.line2 sites.city "
            "sites.region sites.postal_code sites.country")
ORDER = _set("key schema_version customer_key ship_to_site_id status channel customer_po "
             "currency ordered_at requested_date lines.line_no lines.sku lines.quantity "
             "lines.unit_price total")
SHIPMENT = _set("key schema_version order_key warehouse carrier tracking_number "
                "milestones.milestone milestones.at lines.line_no lines.order_line_no "
                "lines.sku lines.quantity")
INVOICE = _set("key schema_version order_key customer_key status currency issued_on due_on "
               "tax_amount amount_paid lines.line_no lines.sku lines.description "
               "lines.quantity lines.unit_price subtotal total open_balance")
PRICE = _set("key schema_version customer_key sku currency breaks.min_quantity "
             "breaks.unit_price valid_from valid_to")


def test_the_portal_sees_its_account_and_children_and_shared_data_only():
    assert _seen(PORTAL) == {
        "customer": {"C1", "C2"}, "product": {"WID-1"}, "price": {"P1"},
        "inventory": {"W01:WID-1"}, "order": {"O1", "O2"}, "shipment": {"S1"},
        "invoice": {"I1"},
    }


def test_the_portal_sees_exactly_these_fields_never_cost_or_internal_segments():
    assert _fields(PORTAL) == {
        "customer": _set("key schema_version name status currency credit_limit credit_hold "
                         "terms") | SITE,
        "product": _set("key schema_version description unit weight_kg status currency "
                        "list_price"),
        "price": PRICE,
        "inventory": _set("key schema_version warehouse sku available_to_promise"),
        "order": ORDER, "shipment": SHIPMENT, "invoice": INVOICE,
    }


def test_a_trading_partner_sees_only_its_own_customers_documents():
    assert _seen(PARTNER) == {
        "customer": {"C3"}, "product": {"WID-1"}, "order": {"O3"}, "shipment": {"S3"},
        "invoice": {"I3"},
    }
    assert _fields(PARTNER) == {
        "customer": _set("key schema_version name") | SITE,
        "product": _set("key schema_version description unit weight_kg status"),
        "order": ORDER, "shipment": SHIPMENT, "invoice": INVOICE - {"open_balance"},
    }


def test_the_crm_sees_every_account_and_document_status_but_no_lines_prices_or_stock():
    assert _seen(CRM) == {
        "customer": {"C1", "C2", "C3"}, "order": {"O1", "O2", "O3"},
        "shipment": {"S1", "S3"}, "invoice": {"I1", "I3"},
    }
    assert _fields(CRM) == {
        "customer": _set("key schema_version name status currency credit_limit credit_hold "
                         "terms tax_id customer_group region contact_name contact_email "
                         "contact_phone") | SITE,
        "order": _set("key schema_version customer_key status channel customer_po currency "
                      "ordered_at requested_date total"),
        "shipment": _set("key schema_version order_key warehouse carrier tracking_number "
                         "milestones.milestone milestones.at"),
        "invoice": _set("key schema_version order_key customer_key status currency issued_on "
                        "due_on tax_amount amount_paid total open_balance"),
    }


def test_inquiry_sees_every_row_but_never_standard_cost_tax_ids_or_contacts():
    assert _seen(INQUIRY) == {d: {x.key for x in WORLD if x.domain == d}
                              for d in {x.domain for x in WORLD}}
    fields = _fields(INQUIRY)
    assert fields["product"] == _set("key schema_version description unit weight_kg status "
                                     "currency list_price")
    assert fields["customer"] == _set("key schema_version name status currency credit_limit "
                                      "credit_hold terms customer_group region") | SITE
    assert fields["inventory"] == _set("key schema_version warehouse sku on_hand allocated "
                                       "available_to_promise")
    assert (fields["order"], fields["shipment"], fields["invoice"], fields["price"]) == (
        ORDER, SHIPMENT, INVOICE, PRICE)


def test_derived_values_are_computed_from_the_record():
    inv = r.invoice("I9", "O1", "C1", amount_paid=Decimal("10.00"))
    data = serialise(INQUIRY, inv)
    assert (data["subtotal"], data["total"], data["open_balance"]) == ("27.00", "29.16", "19.16")
    assert serialise(PORTAL, r.inventory("W01", "X", 10, 25))["available_to_promise"] == 0


def test_a_field_added_to_a_canonical_model_stays_invisible_until_the_table_names_it():
    order_v2 = create_model("Order", __base__=Order, gross_margin=(Decimal, ...))
    for scope, customer in ((PORTAL, "C1"), (PARTNER, "C3"), (CRM, "C1"), (INQUIRY, "C1")):
        record = order_v2.model_validate({**r.order("O1", customer).model_dump(),
                                          "gross_margin": Decimal("3.10")})
        assert "gross_margin" in record.model_dump()
        assert "gross_margin" not in serialise(scope, record)


def test_a_field_added_to_a_nested_line_stays_invisible_too():
    from coexistence.policy import filter_fields

    data = r.order("O1", "C1").model_dump(mode="json")
    data["lines"][0]["unit_cost"] = "4.00"
    for scope in (PORTAL, PARTNER, INQUIRY):
        assert "unit_cost" not in filter_fields(scope, "order", data)["lines"][0]


def test_a_row_out_of_scope_or_a_domain_not_granted_is_refused_with_the_reason():
    with pytest.raises(NotVisible) as row:
        serialise(PORTAL, r.price("P3", "C3", "WID-1"))
    with pytest.raises(NotVisible) as domain:
        serialise(CRM, r.product("WID-1"))
    assert (row.value.reason, domain.value.reason) == ("row", "domain")


def test_a_shipment_whose_order_owner_is_unknown_is_not_shown_to_an_own_rows_role():
    assert visible(PORTAL, r.shipment("S1", "O1")) is None
    assert visible(CRM, r.shipment("S1", "O1")) is not None


def test_the_portal_may_order_for_its_accounts_setting_only_the_command_fields():
    command = {"customer_key": "C2", "customer_po": "PO-1",
               "lines": [{"line_no": 1, "sku": "WID-1", "quantity": 4}]}
    check_write(PORTAL, "order", command)
    with pytest.raises(NotPermitted) as price:
        check_write(PORTAL, "order", {**command, "lines": [{"line_no": 1, "sku": "WID-1",
                                                            "quantity": 4, "unit_price": "1"}]})
    with pytest.raises(NotPermitted) as other:
        check_write(PORTAL, "order", {**command, "customer_key": "C3"})
    with pytest.raises(NotPermitted) as domain:
        check_write(PORTAL, "customer", {"name": "x"})
    assert (price.value.path, other.value.path, domain.value.path) == (
        "lines.unit_price", "customer_key", "customer")


def test_the_table_names_only_fields_that_exist():
    validate_policy()
    bad = {Role.PORTAL: {"order": POLICY[Role.PORTAL]["order"].__class__(
        frozenset({"key", "lines.cost"}))}}
    with pytest.raises(PolicyConfigError, match="lines.cost"):
        validate_policy(bad)


def test_field_paths_walk_nested_lines():
    assert {"lines.sku", "lines.unit_price", "customer_key"} <= field_paths(Order)
    assert "lines" not in field_paths(Order)


def test_an_own_rows_role_must_name_its_customers():
    with pytest.raises(PolicyConfigError):
        validate_scope(Scope(Role.PORTAL, None, "nobody"))
    with pytest.raises(PolicyConfigError):
        validate_scope(Scope(Role.PARTNER, frozenset(), "empty"))
    assert validate_scope(CRM) is CRM

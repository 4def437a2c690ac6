"""The canonical model's own guarantees: frozen, strict, versioned with upcasting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from coexistence.canonical import DOMAINS, MODELS, UPSTREAM, decode
from coexistence.canonical.models import Customer, Order
from coexistence.canonical.upcast import upcast
from coexistence.errors import BusinessError, TranslationError

V1_CUSTOMER = {
    "key": "10042",
    "name": "Acme Supply",
    "status": "active",
    "credit_limit_cents": 1_500_050,
    "credit_hold": False,
    "terms": "net30",
    "customer_group": "RETAIL",
    "region": "WEST",
}

ORDER = {
    "key": "SO-1",
    "customer_key": "10042",
    "status": "open",
    "channel": "edi",
    "currency": "USD",
    "ordered_at": "2026-03-01T09:30:00+02:00",
    "lines": [{"line_no": 1, "sku": "WID-1", "quantity": 3, "unit_price": "9.99"}],
}


def test_a_v1_customer_payload_decodes_into_todays_model():
    customer = decode("customer", V1_CUSTOMER)
    assert isinstance(customer, Customer)
    assert customer.schema_version == 2
    assert customer.credit_limit == Decimal("15000.50")
    assert customer.currency == "USD"


def test_the_v1_to_v2_upcast_is_a_pure_function_of_its_input():
    before = dict(V1_CUSTOMER)
    upcast("customer", before, 2)
    assert before == V1_CUSTOMER


def test_a_payload_from_a_newer_build_is_refused_with_a_business_error():
    with pytest.raises(TranslationError, match="schema_version") as info:
        decode("customer", {**V1_CUSTOMER, "schema_version": 9})
    assert isinstance(info.value, BusinessError)


def test_canonical_records_are_frozen():
    customer = decode("customer", V1_CUSTOMER)
    with pytest.raises(ValidationError):
        customer.name = "Other"  # type: ignore[misc]


def test_unknown_fields_are_refused_and_named():
    with pytest.raises(TranslationError) as info:
        decode("order", {**ORDER, "colour": "red"})
    assert info.value.field == "colour"
    assert info.value.domain == "order"


def test_datetimes_must_carry_a_timezone_and_are_normalised_to_utc():
    order = decode("order", ORDER)
    assert isinstance(order, Order)
    assert order.ordered_at == datetime(2026, 3, 1, 7, 30, tzinfo=UTC)
    assert order.ordered_at.utcoffset() == timedelta(0)
    with pytest.raises(TranslationError) as info:
        decode("order", {**ORDER, "ordered_at": "2026-03-01T09:30:00"})
    assert info.value.field == "ordered_at"


def test_money_needs_a_known_iso_currency():
    with pytest.raises(TranslationError) as info:
        decode("order", {**ORDER, "currency": "XYZ"})
    assert info.value.field == "currency"
    assert info.value.value == "XYZ"


def test_negative_quantities_are_refused_with_the_field_path():
    bad = {**ORDER, "lines": [{**ORDER["lines"][0], "quantity": -2}]}
    with pytest.raises(TranslationError) as info:
        decode("order", bad)
    assert info.value.field == "lines.0.quantity"
    assert info.value.value == -2


def test_every_domain_is_registered_in_dependency_order():
    assert DOMAINS == ("customer", "product", "price", "inventory", "order", "shipment", "invoice")
    for domain, upstream in UPSTREAM.items():
        assert domain in MODELS
        for up in upstream:
            assert DOMAINS.index(up) < DOMAINS.index(domain)


def test_an_order_total_is_the_sum_of_its_lines():
    order = decode("order", {**ORDER, "lines": [
        {"line_no": 1, "sku": "A", "quantity": 2, "unit_price": "1.25"},
        {"line_no": 2, "sku": "B", "quantity": 1, "unit_price": "10"},
    ]})
    assert order.total == Decimal("12.50")


def test_timezones_other_than_utc_compare_equal_after_normalisation():
    a = decode("order", ORDER)
    b = decode("order", {**ORDER, "ordered_at": datetime(2026, 3, 1, 7, 30, tzinfo=UTC)})
    assert a == b

"""The sample generator: valid, deterministic, sliceable, referentially consistent."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from coexistence.canonical import DOMAINS, decode
from coexistence.canonical.models import (
    CustomerStatus,
    InvoiceStatus,
    OrderStatus,
    SiteKind,
)
from coexistence.legacy.models import NAME_WIDTH
from coexistence.sample import MAX_PRICE_BREAKS, SampleSpec, iter_customers, iter_products, masters

SPEC = SampleSpec(customers=12, seed=3, products=25, warehouses=2, prices_per_customer=3,
                  orders_per_customer=4, max_order_lines=5)


@pytest.fixture(scope="module")
def sample() -> dict[str, list]:
    return {d: list(SPEC.iter(d)) for d in DOMAINS}


def test_every_record_survives_a_json_round_trip_through_the_canonical_decoder(sample):
    for domain, records in sample.items():
        assert len(records) == SPEC.count(domain) > 0
        for record in records:
            assert decode(domain, json.loads(record.model_dump_json())) == record


def test_keys_are_unique_within_each_domain(sample):
    for domain, records in sample.items():
        keys = [r.key for r in records]
        assert len(set(keys)) == len(keys), domain


def test_the_same_seed_gives_the_same_records_and_another_seed_different_ones(sample):
    masters.customer_facts.cache_clear()
    masters.product_facts.cache_clear()
    again = {d: list(SPEC.iter(d)) for d in DOMAINS}
    assert again == sample
    other = SampleSpec(**{**_fields(SPEC), "seed": 4})
    assert list(other.iter("customer")) != sample["customer"]
    assert list(other.iter("order")) != sample["order"]


def _fields(spec: SampleSpec) -> dict:
    return {name: getattr(spec, name) for name in spec.__slots__}


def test_any_slice_or_single_record_equals_the_same_part_of_the_full_stream(sample):
    for domain, records in sample.items():
        masters.customer_facts.cache_clear()
        assert list(SPEC.iter(domain, start=3, stop=7)) == records[3:7]
        last = len(records) - 1
        assert SPEC.record(domain, last) == records[last]
    assert list(iter_customers(5, seed=3, start=2)) == sample["customer"][2:5]
    assert list(iter_products(4, seed=3)) == sample["product"][:4]


def test_a_record_deep_in_a_million_customer_sample_is_computed_without_its_predecessors():
    big = SampleSpec(customers=1_000_000, seed=3)
    masters.customer_facts.cache_clear()
    masters.product_facts.cache_clear()
    last_customer = big.record("customer", 999_999)
    last_invoice = big.record("invoice", big.count("invoice") - 1)
    # Work counted, not timed: a handful of customers' and products' facts, not a million.
    assert masters.customer_facts.cache_info().misses <= 2
    assert masters.product_facts.cache_info().misses <= 20
    assert last_customer.key == "1009999"
    assert last_invoice.customer_key == last_customer.key


def test_prices_name_existing_customers_and_distinct_products_with_at_most_five_breaks(sample):
    customers = {c.key: c for c in sample["customer"]}
    skus = {p.key for p in sample["product"]}
    per_customer = Counter()
    pairs = set()
    for price in sample["price"]:
        assert price.sku in skus and price.customer_key in customers
        assert price.currency == customers[price.customer_key].currency
        assert 1 <= len(price.breaks) <= MAX_PRICE_BREAKS
        assert price.valid_to is None or price.valid_to > price.valid_from
        per_customer[price.customer_key] += 1
        pairs.add((price.customer_key, price.sku))
    assert set(per_customer.values()) == {SPEC.prices_per_customer}
    assert len(pairs) == len(sample["price"])
    assert {len(p.breaks) for p in sample["price"]} >= {1, MAX_PRICE_BREAKS}
    assert any(p.valid_to is None for p in sample["price"])


def test_inventory_holds_each_warehouse_and_sku_once(sample):
    skus = {p.key for p in sample["product"]}
    cells = {(b.warehouse, b.sku) for b in sample["inventory"]}
    assert {s for _, s in cells} == skus
    assert len({w for w, _ in cells}) == SPEC.warehouses
    assert len(cells) == SPEC.warehouses * SPEC.products


def test_orders_name_existing_customers_their_ship_to_sites_and_existing_skus(sample):
    customers = {c.key: c for c in sample["customer"]}
    skus = {p.key for p in sample["product"]}
    for order in sample["order"]:
        customer = customers[order.customer_key]
        ship_tos = {s.site_id for s in customer.sites if s.kind is SiteKind.SHIP_TO}
        assert order.ship_to_site_id in ship_tos
        assert order.currency == customer.currency
        assert {line.sku for line in order.lines} <= skus
        assert [line.line_no for line in order.lines] == list(range(1, len(order.lines) + 1))
        assert len({line.sku for line in order.lines}) == len(order.lines)


def test_shipments_ship_lines_of_existing_orders_and_never_more_than_ordered(sample):
    orders = {o.key: o for o in sample["order"]}
    for shipment in sample["shipment"]:
        order = orders[shipment.order_key]
        assert order.status in (OrderStatus.ALLOCATED, OrderStatus.PARTIALLY_SHIPPED,
                                OrderStatus.SHIPPED, OrderStatus.INVOICED, OrderStatus.CLOSED)
        ordered = {line.line_no: line for line in order.lines}
        for line in shipment.lines:
            assert line.sku == ordered[line.order_line_no].sku
            assert line.quantity <= ordered[line.order_line_no].quantity
        shipped = sum(line.quantity for line in shipment.lines)
        partial = shipped < sum(line.quantity for line in order.lines)
        assert partial == (order.status is OrderStatus.PARTIALLY_SHIPPED)
        times = [m.at for m in shipment.milestones]
        assert times == sorted(times) and all(t > order.ordered_at for t in times)


def test_invoices_bill_the_lines_of_existing_orders_of_the_same_customer(sample):
    orders = {o.key: o for o in sample["order"]}
    for invoice in sample["invoice"]:
        order = orders[invoice.order_key]
        assert invoice.customer_key == order.customer_key
        assert invoice.currency == order.currency
        assert [(i.sku, i.quantity, i.unit_price) for i in invoice.lines] == [
            (o.sku, o.quantity, o.unit_price) for o in order.lines
        ]
        assert invoice.due_on >= invoice.issued_on
        if invoice.status is InvoiceStatus.PAID:
            assert invoice.amount_paid == invoice.total
        elif invoice.status is InvoiceStatus.PARTIALLY_PAID:
            assert 0 < invoice.amount_paid < invoice.total
        else:
            assert invoice.amount_paid == 0


def test_the_sample_holds_every_order_status_milestone_stage_and_invoice_status(sample):
    assert {o.status for o in sample["order"]} == set(OrderStatus)
    assert {len(s.milestones) for s in sample["shipment"]} == {0, 1, 2, 3, 4}
    assert {i.status for i in sample["invoice"]} == set(InvoiceStatus)


def test_any_sixteen_consecutive_orders_hold_every_order_status():
    spec = SampleSpec(customers=40, seed=9, orders_per_customer=1)
    statuses = [o.status for o in spec.iter("order")]
    for start in range(len(statuses) - 16):
        assert set(statuses[start:start + 16]) == set(OrderStatus)


def test_text_is_mixed_case_with_accents_and_some_names_overflow_the_legacy_column():
    customers = list(iter_customers(300, seed=1))
    names = [c.name for c in customers]
    assert any(len(n) > NAME_WIDTH for n in names)
    assert any(len(n) <= NAME_WIDTH for n in names)
    assert any(not n.isascii() for n in names)
    assert all(n != n.upper() for n in names if any(ch.isalpha() for ch in n))
    assert all(c.contact_email.isascii() for c in customers)
    assert all(c.status is not CustomerStatus.PROSPECT for c in customers)
    assert all(c.sites[0].kind is SiteKind.BILL_TO for c in customers)
    assert {c.currency for c in customers} >= {"USD", "CAD", "MXN", "EUR", "GBP"}


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"customers": -1}, "customers"),
        ({"products": 0}, "products"),
        ({"warehouses": 0}, "warehouses"),
        ({"products": 2, "prices_per_customer": 3}, "prices_per_customer"),
        ({"seed": -5}, "seed"),
        ({"max_order_lines": 0}, "max_order_lines"),
    ],
)
def test_a_bad_scale_is_refused_with_a_message_naming_the_argument(fields, named):
    with pytest.raises(ValueError, match=named):
        SampleSpec(**{"customers": 1, **fields})


def test_an_index_outside_the_sample_is_refused():
    with pytest.raises(IndexError, match="order index 48"):
        SPEC.record("order", SPEC.count("order"))
    with pytest.raises(ValueError, match="unknown domain 'widget'"):
        SPEC.count("widget")

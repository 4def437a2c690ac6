"""Properties of the sample at any seed and scale (hypothesis), not just the fixed ones."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coexistence.canonical import DOMAINS
from coexistence.canonical.models import OrderStatus, SiteKind
from coexistence.sample import SampleSpec
from coexistence.sample.documents import DOCUMENT_KEY_BASE
from coexistence.translate.cloud import CLOUD_TRANSLATORS
from coexistence.translate.legacy import LEGACY_TRANSLATORS

specs = st.builds(
    SampleSpec,
    customers=st.integers(1, 5_000_000),
    seed=st.integers(0, 2**32),
    products=st.integers(1, 100_000),
    warehouses=st.integers(1, 99),
    prices_per_customer=st.integers(0, 1),
    orders_per_customer=st.integers(1, 20),
    max_order_lines=st.integers(1, 12),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, domain=st.sampled_from(DOMAINS), where=st.floats(0, 1))
def test_any_record_of_any_sample_translates_through_both_erps(spec, domain, where):
    count = spec.count(domain)
    if count == 0:
        return
    record = spec.record(domain, min(int(where * count), count - 1))
    legacy = LEGACY_TRANSLATORS[domain]
    assert legacy.to_canonical(*legacy.from_canonical(record)) == legacy.normalise(record)
    cloud = CLOUD_TRANSLATORS[domain]
    assert cloud.to_canonical(cloud.from_canonical(record)) == record


@settings(max_examples=40, deadline=None)
@given(spec=specs, where=st.floats(0, 1))
def test_any_shipment_ships_lines_of_its_order_to_a_ship_to_of_its_customer(spec, where):
    k = min(int(where * spec.count("shipment")), spec.count("shipment") - 1)
    if k < 0:
        return
    shipment = spec.record("shipment", k)
    order_index = int(shipment.order_key) - DOCUMENT_KEY_BASE
    order = spec.record("order", order_index)
    customer = spec.record("customer", order_index // spec.orders_per_customer)
    assert order.customer_key == customer.key
    assert order.ship_to_site_id in {
        s.site_id for s in customer.sites if s.kind is SiteKind.SHIP_TO
    }
    lines = {line.line_no: line for line in order.lines}
    for line in shipment.lines:
        assert line.sku == lines[line.order_line_no].sku
        assert line.quantity <= lines[line.order_line_no].quantity
    assert order.status is not OrderStatus.DRAFT

"""The router end to end on fakes: capture -> decisions -> outbox -> writers, in one thread."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from sqlalchemy import text

from coexistence.canonical import decode
from coexistence.canonical.models import OrderStatus
from coexistence.flags import Rollout, percent_to_buckets
from coexistence.writes import OwnershipViolationReported, StrayWrite
from tests.support.router_harness import Harness

CUSTOMER = decode("customer", {
    "schema_version": 2, "key": "10042", "name": "Acme Supply", "status": "active",
    "currency": "USD", "credit_limit": "5000", "credit_hold": False, "terms": "net30",
    "customer_group": "RETAIL", "region": "WEST", "contact_email": "buyer@acme.test",
})
ORDER = decode("order", {
    "key": "SO-1", "customer_key": "10042", "status": "open", "channel": "erp",
    "currency": "USD", "ordered_at": "2026-03-01T09:30:00Z",
    "lines": [{"line_no": 1, "sku": "WID-1", "quantity": 3, "unit_price": "9.99"}],
})


@pytest.fixture
def h(tmp_path):
    harness = Harness.on_sqlite(tmp_path / "state.db")
    yield harness
    harness.engine.dispose()


def test_in_legacy_mode_nothing_is_written_to_the_cloud_but_channels_hear_the_sor(h):
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    h.settle()
    assert h.cloud.get("customer", "10042") is None
    assert [e.kind for e in h.events["10042"]] == ["event"]


def test_in_shadow_mode_a_legacy_change_reaches_the_cloud_once_and_its_echo_stops_there(h):
    h.set_mode("customer", "shadow")
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    h.settle()
    assert h.cloud.get("customer", "10042") == CUSTOMER
    cloud_writes = h.cloud.read(0, 100)
    assert [c.writer for c in cloud_writes] == ["COEXIST"]
    assert h.captured.echoes == 1
    assert len(h.legacy.read(0, 100)) == 1  # no write came back into the legacy ERP
    assert h.business_errors == []


def test_a_stray_write_into_the_shadow_is_reported_and_overwritten_from_the_sor(h):
    h.set_mode("customer", "shadow")
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    h.settle()
    h.cloud.person_upsert(CUSTOMER.model_copy(update={"credit_hold": True}), "cloud.user")
    h.settle()
    assert h.cloud.get("customer", "10042") == CUSTOMER
    [(actor, _env, exc)] = h.business_errors
    assert isinstance(exc, StrayWrite)
    assert "cloud.user" in str(exc) and "credit_hold" in str(exc)


def test_a_stray_write_repeated_after_a_repair_is_repaired_again(h):
    h.set_mode("customer", "shadow")
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    h.settle()
    for hold in (True, False, True):
        h.cloud.person_upsert(CUSTOMER.model_copy(update={"credit_hold": hold,
                                                          "name": f"X{hold}"}), "cloud.user")
        h.settle()
        assert h.cloud.get("customer", "10042") == CUSTOMER
    assert len(h.business_errors) == 3


def test_after_the_switch_to_cloud_the_cloud_is_the_sor_and_the_legacy_erp_follows(h):
    h.set_mode("customer", "shadow")
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    h.settle()
    h.set_mode("customer", "cloud")
    changed = CUSTOMER.model_copy(update={"credit_limit": Decimal("7500")})
    h.cloud.person_upsert(changed, "cloud.user")
    h.settle()
    assert h.legacy.get("customer", "10042") == changed
    # A late person's write into the legacy ERP is now the stray one.
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    h.settle()
    assert h.legacy.get("customer", "10042") == changed
    assert isinstance(h.business_errors[-1][2], StrayWrite)


def test_an_open_order_stays_with_the_erp_it_was_created_in_after_the_switch(h):
    h.set_mode("order", "shadow")
    h.legacy.person_upsert(ORDER, "JSMITH")
    h.settle()
    h.set_mode("order", "cloud")
    allocated = ORDER.model_copy(update={"status": OrderStatus.ALLOCATED})
    h.legacy.person_upsert(allocated, "JSMITH")
    h.settle()
    assert h.cloud.get("order", "SO-1") == allocated
    assert h.business_errors == []
    # Once closed it follows the flag: a later legacy edit is a stray write (reported only).
    closed = ORDER.model_copy(update={"status": OrderStatus.CLOSED})
    h.legacy.person_upsert(closed, "JSMITH")
    h.settle()
    h.legacy.person_upsert(closed.model_copy(update={"customer_po": "LATE"}), "JSMITH")
    h.settle()
    assert isinstance(h.business_errors[-1][2], StrayWrite)
    assert h.cloud.get("order", "SO-1") == closed


def test_a_crm_command_goes_to_the_sor_first_then_the_shadow_keeping_erp_owned_fields(h):
    h.set_mode("customer", "shadow")
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    h.settle()
    from_crm = CUSTOMER.model_copy(update={"contact_email": "new@acme.test",
                                           "credit_limit": Decimal("1")})
    h.command(from_crm, "crm", version=1)
    h.settle()
    expected = CUSTOMER.model_copy(update={"contact_email": "new@acme.test"})
    assert h.legacy.get("customer", "10042") == expected
    assert h.cloud.get("customer", "10042") == expected
    assert [c.writer for c in h.legacy.read(0, 10)] == ["JSMITH", "COEXCRM"]
    [(_a, _e, exc)] = h.business_errors
    assert isinstance(exc, OwnershipViolationReported) and "credit_limit" in str(exc)


def test_a_crm_command_differing_only_by_the_legacy_erps_normalisation_is_not_reported(h):
    # The legacy ERP (the SoR) holds the company as it holds every name: upper case (its
    # translator's normalisation).  The CRM's command carries the name and address as the
    # person typed them: that is no attempt to change them, and nobody's violation.
    from coexistence.translate.legacy import normalise

    typed = decode("customer", {
        **CUSTOMER.model_dump(mode="json"),
        "sites": [{"site_id": "1", "kind": "bill_to", "name": "Acme Supply",
                   "line1": "54 Market St", "region": "CO", "city": "Denver",
                   "postal_code": "80054", "country": "US"}]})
    held = normalise(typed)
    assert held.name == "ACME SUPPLY"
    h.set_mode("customer", "shadow")
    h.legacy.person_upsert(held, "JSMITH")
    h.settle()
    h.command(typed.model_copy(update={"contact_email": "new@acme.test"}), "crm", version=1)
    h.settle()
    assert h.business_errors == []
    expected = held.model_copy(update={"contact_email": "new@acme.test"})
    assert h.legacy.get("customer", "10042") == expected
    # A real change of the name from the CRM is still refused and reported.
    h.command(typed.model_copy(update={"name": "Acme Supplies"}), "crm", version=2)
    h.settle()
    [(_a, _e, exc)] = h.business_errors
    assert isinstance(exc, OwnershipViolationReported) and "Acme Supplies" in str(exc)
    assert h.legacy.get("customer", "10042").name == "ACME SUPPLY"


def test_a_person_changing_crm_owned_contacts_in_the_erp_is_not_propagated(h):
    h.set_mode("customer", "shadow")
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    h.settle()
    h.legacy.person_upsert(CUSTOMER.model_copy(update={"contact_email": "typo@x.test"}), "JSMITH")
    h.settle()
    assert h.cloud.get("customer", "10042").contact_email == "buyer@acme.test"
    assert isinstance(h.business_errors[-1][2], OwnershipViolationReported)


def test_a_percentage_rollout_moves_only_the_selected_keys(h):
    customers = [CUSTOMER.model_copy(update={"key": str(10000 + i)}) for i in range(200)]
    h.set_mode("customer", "shadow")
    for c in customers:
        h.legacy.person_upsert(c, "JSMITH")
    h.settle()
    state = h.set_mode("customer", "cloud", Rollout(percent_to_buckets(25)), base="shadow")
    moved = [c for c in customers if state.mode_for(c.key) == "cloud"]
    assert 20 < len(moved) < 80
    for c in customers:
        h.cloud.person_upsert(c.model_copy(update={"name": "Renamed"}), "cloud.user")
    h.settle()
    for c in customers:
        expected = "Renamed" if c in moved else c.name
        assert h.legacy.get("customer", c.key).name == expected
        assert h.cloud.get("customer", c.key).name == expected
    assert len(h.business_errors) == len(customers) - len(moved)


def test_a_delete_in_the_sor_deletes_the_shadow(h):
    h.set_mode("customer", "shadow")
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    h.settle()
    h.legacy.person_delete("customer", "10042", "JSMITH")
    h.settle()
    assert h.cloud.get("customer", "10042") is None


def test_every_message_one_change_causes_carries_that_changes_correlation_id(h):
    h.set_mode("customer", "shadow")
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    h.settle()
    h.cloud.person_upsert(CUSTOMER.model_copy(update={"credit_hold": True}), "cloud.user")
    h.settle()
    [(_actor, report, _exc)] = h.business_errors
    # The report of the stray write and the repair it caused share one correlation id.
    with h.engine.connect() as conn:
        rows = conn.execute(text("SELECT payload FROM outbox")).scalars().all()
    envelopes = [json.loads(r) for r in rows]
    stray_family = [e for e in envelopes if e["correlation_id"] == report.correlation_id]
    assert sorted(e["kind"] for e in stray_family) == ["repair", "stray_write"]
    routed_family = {e["correlation_id"] for e in envelopes if e["kind"] in ("upsert", "event")}
    assert len(routed_family) == 1 and report.correlation_id not in routed_family

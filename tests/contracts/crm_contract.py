"""The contract every ``coexistence.crm.ports.Crm`` implementation keeps.

Subclass ``CrmContract`` (named ``Test...``) and provide a ``harness`` fixture yielding a
``CrmHarness`` on an EMPTY CRM.  The same tests run against the in-memory fake and the
HTTP adapter over the CRM simulator, so the fake cannot drift from the real thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from coexistence.canonical import CanonicalRecord
from coexistence.crm.ports import (
    COEXIST_CLIENT,
    EXTERNAL_ID,
    VERSION_FIELD,
    Absent,
    Crm,
    CrmPaused,
    CrmUnavailable,
    CrmUpsert,
    Refused,
    ReplayExpired,
    Retry,
    Stale,
    Synced,
)
from coexistence.sample import SampleSpec

SPEC = SampleSpec(customers=40, seed=3)


@dataclass
class CrmHarness:
    """What the contract needs from one implementation besides the port."""

    crm: Crm
    #: A person creates a record in the UI: (sobject, fields, allow_duplicate) -> CRM id.
    person_create: Callable[[str, dict, bool], str]
    #: The next ``times`` saves of the record keyed ``key`` fail UNABLE_TO_LOCK_ROW.
    lock: Callable[[str, int], None]
    #: The org's API budget is spent (True) or back (False).
    pause: Callable[[bool], None]
    #: The next request fails 503.
    unavailable: Callable[[], None]
    #: Drop every retained change event (retention passed).
    expire_events: Callable[[], None]


def record(domain: str, i: int) -> CanonicalRecord:
    return SPEC.record(domain, i)


def item(rec: CanonicalRecord | None, version: int, *, domain: str | None = None,
         key: str | None = None, sor: str = "legacy") -> CrmUpsert:
    domain = domain or rec.domain  # type: ignore[union-attr]
    key = key or rec.key  # type: ignore[union-attr]
    return CrmUpsert(domain, key, rec, version, f"corr-{domain}-{key}-{version}", sor)


def customer_of(domain: str, i: int) -> CanonicalRecord:
    rec = record(domain, i)
    return next(c for c in SPEC.iter("customer") if c.key == rec.customer_key)


class CrmContract:
    @pytest.fixture
    def harness(self) -> CrmHarness:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    @pytest.fixture
    def crm(self, harness) -> Crm:
        return harness.crm

    # ----------------------------------------------------------------- writes

    def test_a_new_account_is_created_then_updated_in_place(self, crm):
        c = record("customer", 1)
        first = crm.upsert("customer", [item(c, 5)])
        assert isinstance(first[0], Synced) and first[0].created is True
        changed = c.model_copy(update={"credit_hold": not c.credit_hold})
        second = crm.upsert("customer", [item(changed, 6)])
        assert second == [Synced(c.key, first[0].crm_id, False)]
        shown = crm.find("customer", c.key)
        assert shown.id == first[0].crm_id and shown.version == 6
        assert shown.fields["Credit_Hold__c"] is changed.credit_hold
        assert shown.fields["AccountNumber"] == c.key
        assert shown.fields["Coexist_Correlation_Id__c"] == f"corr-customer-{c.key}-6"
        assert shown.fields["ERP_System__c"] == "Legacy ERP"

    def test_results_come_back_one_per_record_in_request_order(self, crm):
        customers = [record("customer", i) for i in range(5)]
        results = crm.upsert("customer", [item(c, 3) for c in customers])
        assert [r.key for r in results] == [c.key for c in customers]
        assert all(isinstance(r, Synced) and r.created for r in results)

    def test_an_older_version_is_stale_and_changes_nothing(self, crm):
        c = record("customer", 2)
        crm.upsert("customer", [item(c, 10)])
        older = c.model_copy(update={"name": "Someone Else Entirely"})
        assert crm.upsert("customer", [item(older, 9)]) == [Stale(c.key)]
        shown = crm.find("customer", c.key)
        assert shown.fields["Name"] == c.name and shown.version == 10

    def test_an_equal_version_is_written_again(self, crm):
        c = record("customer", 3)
        first = crm.upsert("customer", [item(c, 10)])[0]
        assert crm.upsert("customer", [item(c, 10)]) == [Synced(c.key, first.crm_id, False)]

    def test_a_delete_shows_as_deleted_in_erp_and_an_unknown_one_is_absent(self, crm):
        c = record("customer", 4)
        crm.upsert("customer", [item(c, 1)])
        results = crm.upsert("customer", [item(None, 2, domain="customer", key=c.key),
                                          item(None, 2, domain="customer", key="99999")])
        assert isinstance(results[0], Synced) and results[1] == Absent("99999")
        shown = crm.find("customer", c.key)
        assert shown.fields["ERP_Deleted__c"] is True and shown.fields["Name"] == c.name
        assert crm.find("customer", "99999") is None

    def test_documents_show_their_status_and_link_to_their_parents(self, crm):
        order, shipment, invoice = record("order", 5), record("shipment", 0), record("invoice", 0)
        parents = {customer_of("order", 5), customer_of("invoice", 0)}
        crm.upsert("customer", [item(c, 1) for c in parents])
        ship_order = next(o for o in SPEC.iter("order") if o.key == shipment.order_key)
        inv_order = next(o for o in SPEC.iter("order") if o.key == invoice.order_key)
        more = {c for o in (ship_order, inv_order)
                for c in SPEC.iter("customer") if c.key == o.customer_key} - parents
        if more:
            crm.upsert("customer", [item(c, 1) for c in more])
        orders = {o.key: o for o in (order, ship_order, inv_order)}
        assert all(isinstance(r, Synced)
                   for r in crm.upsert("order", [item(o, 1) for o in orders.values()]))
        assert isinstance(crm.upsert("shipment", [item(shipment, 1)])[0], Synced)
        assert isinstance(crm.upsert("invoice", [item(invoice, 1)])[0], Synced)
        shown = crm.find("order", order.key)
        assert shown.fields["Status"] == order.status.value.replace("_", " ").title()
        account = crm.find("customer", order.customer_key)
        assert shown.fields["AccountId"] == account.id
        ship = crm.find("shipment", shipment.key)
        assert ship.fields["Order__c"] == crm.find("order", shipment.order_key).id
        if shipment.milestones:
            assert ship.fields["Picked_At__c"] is not None
        inv = crm.find("invoice", invoice.key)
        assert inv.fields["Status__c"] == invoice.status.value.replace("_", " ").title()

    def test_a_document_whose_account_is_not_in_the_crm_yet_is_retried(self, crm):
        order = record("order", 6)
        [result] = crm.upsert("order", [item(order, 1)])
        assert isinstance(result, Retry) and result.key == order.key
        assert crm.find("order", order.key) is None

    def test_a_locked_row_is_retried_and_its_neighbours_are_written(self, harness, crm):
        a, b, c = (record("customer", i) for i in (7, 8, 9))
        harness.lock(b.key, 1)
        results = crm.upsert("customer", [item(x, 1) for x in (a, b, c)])
        assert isinstance(results[0], Synced) and isinstance(results[2], Synced)
        assert isinstance(results[1], Retry) and results[1].code == "UNABLE_TO_LOCK_ROW"
        assert isinstance(crm.upsert("customer", [item(b, 1)])[0], Synced)

    def test_a_duplicate_company_is_refused_naming_the_account_it_matches(self, crm):
        c = record("customer", 10)
        first = crm.upsert("customer", [item(c, 1)])[0]
        twin = c.model_copy(update={"key": "77777", "name": c.name.upper() + " INC."})
        [result] = crm.upsert("customer", [item(twin, 1)])
        assert isinstance(result, Refused) and result.code == "DUPLICATES_DETECTED"
        assert result.matched_ids == (first.crm_id,)
        assert crm.find("customer", "77777") is None

    def test_the_duplicate_rule_follows_a_rename(self, crm):
        c = record("customer", 13)
        first = crm.upsert("customer", [item(c, 1)])[0]
        other = c.model_copy(update={"key": "77778", "name": "Unrelated Widgets"})
        assert isinstance(crm.upsert("customer", [item(other, 1)])[0], Synced)
        # Renamed to the first's company: now its duplicate.
        [result] = crm.upsert("customer", [item(other.model_copy(update={"name": c.name}), 2)])
        assert isinstance(result, Refused) and result.code == "DUPLICATES_DETECTED"
        assert result.matched_ids == (first.crm_id,)
        # The first renamed away: its old name is free for the other.
        assert isinstance(crm.upsert("customer", [item(
            c.model_copy(update={"name": "Renamed Away Ltd"}), 2)])[0], Synced)
        assert isinstance(crm.upsert("customer", [item(
            other.model_copy(update={"name": c.name}), 3)])[0], Synced)

    # ----------------------------------------------------------------- whole requests

    def test_a_spent_budget_pauses_and_writes_nothing(self, harness, crm):
        harness.pause(True)
        c = record("customer", 11)
        with pytest.raises(CrmPaused):
            crm.upsert("customer", [item(c, 1)])
        harness.pause(False)
        assert crm.find("customer", c.key) is None

    def test_an_unavailable_crm_is_a_technical_error_and_writes_nothing(self, harness, crm):
        harness.unavailable()
        c = record("customer", 12)
        with pytest.raises(CrmUnavailable):
            crm.upsert("customer", [item(c, 1)])
        assert crm.find("customer", c.key) is None

    def test_budget_reports_what_was_used_of_the_allowance(self, crm):
        crm.upsert("customer", [item(record("customer", 13), 1)])
        budget = crm.budget()
        assert budget.max > 0 and 1 <= budget.used <= budget.max

    # ----------------------------------------------------------------- people and the feed

    def test_the_feed_tells_people_s_changes_from_coexist_s_echoes(self, harness, crm):
        crm.upsert("customer", [item(record("customer", 14), 1)])
        person = harness.person_create("Account", {"Name": "Walk-in Hardware",
                                                   "BillingPostalCode": "30301"}, False)
        changes = crm.changes(0, 100)
        ours = [c for c in changes if c.is_echo]
        theirs = [c for c in changes if c.record_id == person]
        assert ours and all(c.client == COEXIST_CLIENT for c in ours)
        assert [c.change_type for c in theirs] == ["CREATE"]
        assert theirs[0].client is None and theirs[0].fields["Name"] == "Walk-in Hardware"
        assert [c.replay_id for c in changes] == sorted(c.replay_id for c in changes)
        after = changes[0].replay_id
        assert [c.replay_id for c in crm.changes(after, 100)] == \
            [c.replay_id for c in changes[1:]]

    def test_an_expired_replay_id_is_refused_not_skipped(self, harness, crm):
        crm.upsert("customer", [item(record("customer", 15), 1)])
        harness.expire_events()
        with pytest.raises(ReplayExpired):
            crm.changes(0, 100)

    def test_get_reads_a_person_s_record_by_its_crm_id(self, harness, crm):
        person = harness.person_create("Account", {"Name": "Walk-in Hardware"}, False)
        shown = crm.get("Account", person)
        assert shown.fields["Name"] == "Walk-in Hardware" and shown.key is None
        assert crm.get("Account", "001Dx0000099999AAA") is None

    def test_link_keys_a_person_s_account_once_and_refuses_a_key_already_held(
            self, harness, crm):
        c = record("customer", 16)
        held = crm.upsert("customer", [item(c, 1)])[0]
        person = harness.person_create("Account", {"Name": "Brand New Co"}, False)
        assert crm.link(person, "88888", correlation_id="corr-link") == \
            Synced("88888", person, False)
        assert crm.find("customer", "88888").id == person
        other = harness.person_create("Account", {"Name": "Another New Co"}, False)
        refused = crm.link(other, c.key, correlation_id="corr-link-2")
        assert isinstance(refused, Refused) and refused.code == "DUPLICATE_VALUE"
        assert refused.matched_ids == (held.crm_id,)
        assert crm.get("Account", other).key is None

    def test_duplicates_of_names_accounts_the_rule_reported_together(self, harness, crm):
        c = record("customer", 17)
        synced = crm.upsert("customer", [item(c, 1)])[0]
        bill_to = next(s for s in c.sites if s.kind == "bill_to")
        twin = harness.person_create("Account", {
            "Name": c.name.lower(), "BillingPostalCode": bill_to.postal_code}, True)
        found = crm.duplicates_of(twin)
        assert [(d.id, d.key) for d in found] == [(synced.crm_id, c.key)]
        assert found[0].fields[EXTERNAL_ID] == c.key
        assert VERSION_FIELD in found[0].fields

"""Canonical -> CRM mapping: every value the CRM's picklists allow, parents by external id,
coexist's stamps on every record, and the named losses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coexistence.canonical.models import CustomerStatus, InvoiceStatus, OrderStatus, PaymentTerms
from coexistence.crm import mapping
from coexistence.crm.ports import CORRELATION_FIELD, EXTERNAL_ID, VERSION_FIELD
from coexistence.sample import SampleSpec
from workers.crm_sim import schema

SPEC = SampleSpec(customers=64, seed=5)
DOMAINS = ("customer", "order", "shipment", "invoice")
OBJECT = {"customer": "Account", "order": "Order", "shipment": "Shipment__c",
          "invoice": "Invoice__c"}


def test_every_canonical_status_and_term_is_a_value_the_crm_picklists_allow():
    account = schema.OBJECTS["Account"].fields
    assert set(mapping.TERMS.values()) <= set(account["Payment_Terms__c"].picklist)
    assert {mapping.TERMS[t] for t in PaymentTerms} == set(mapping.TERMS.values())
    assert {mapping.ACCOUNT_STATUS[s] for s in CustomerStatus} <= set(
        account["Account_Status__c"].picklist)
    assert {mapping.ORDER_STATUS[s] for s in OrderStatus} == set(
        schema.OBJECTS["Order"].fields["Status"].picklist)
    assert {mapping.INVOICE_STATUS[s] for s in InvoiceStatus} == set(
        schema.OBJECTS["Invoice__c"].fields["Status__c"].picklist)


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_mapped_field_exists_in_the_crm_and_is_writable(domain):
    obj = schema.OBJECTS[OBJECT[domain]]
    for i in range(16):
        fields = mapping.to_sobject(SPEC.record(domain, i), version=7, correlation_id="c",
                                    sor="cloud")
        for name, value in fields.items():
            f = obj.fields.get(name) or obj.relationships.get(name)
            assert f is not None and f.updateable, name
            if name not in obj.relationships:
                schema.coerce(obj, f, value)  # raises on a value the CRM would refuse
        assert fields[EXTERNAL_ID] == SPEC.record(domain, i).key
        assert fields[VERSION_FIELD] == 7 and fields[CORRELATION_FIELD] == "c"
        assert fields["ERP_System__c"] == "Cloud ERP" and fields["ERP_Deleted__c"] is False


@pytest.mark.parametrize("sobject", ["Order", "Shipment__c", "Invoice__c"])
def test_the_document_field_lists_are_what_the_mapping_writes(sobject):
    domain = next(d for d, o in OBJECT.items() if o == sobject)
    written = mapping.to_sobject(SPEC.record(domain, 0), version=1, correlation_id="c",
                                 sor="legacy")
    relationships = schema.OBJECTS[sobject].relationships
    names = {relationships[k].name if k in relationships else k for k in written}
    assert names - mapping.STAMP_FIELDS - {VERSION_FIELD, CORRELATION_FIELD} == \
        set(mapping.DOCUMENT_FIELDS[sobject])


def test_documents_name_their_parents_by_coexist_s_key_never_an_erp_id():
    order, invoice = SPEC.record("order", 3), SPEC.record("invoice", 3)
    assert mapping.order_fields(order)["Account"] == {EXTERNAL_ID: order.customer_key}
    fields = mapping.invoice_fields(invoice)
    assert fields["Account__r"] == {EXTERNAL_ID: invoice.customer_key}
    assert fields["Order__r"] == {EXTERNAL_ID: invoice.order_key}


def test_a_shipment_shows_each_milestone_and_the_last_as_its_status():
    shipments = [SPEC.record("shipment", i) for i in range(16)]
    for s in shipments:
        fields = mapping.shipment_fields(s)
        reached = {e.milestone for e in s.milestones}
        for milestone, name in mapping.MILESTONE_FIELD.items():
            assert (fields[name] is not None) == (milestone in reached)
        expected = s.last_milestone.value.title() if s.last_milestone else mapping.PLANNED
        assert fields["Status__c"] == expected


def test_a_delete_is_a_flag_with_the_version_not_a_crm_delete():
    fields = mapping.deleted_sobject("invoice", "7", version=9, correlation_id="c", sor="legacy")
    assert fields == {EXTERNAL_ID: "7", VERSION_FIELD: 9, CORRELATION_FIELD: "c",
                      "ERP_System__c": "Legacy ERP", "ERP_Deleted__c": True}


@settings(max_examples=50)
@given(st.integers(0, 63))
def test_an_account_s_addresses_read_back_as_the_customer_s_first_sites(i):
    customer = SPEC.record("customer", i)
    fields = mapping.account_fields(customer)
    back = mapping.sites_from_account(fields)
    originals = [next(s for s in customer.sites if s.kind == k) for k in ("bill_to", "ship_to")
                 if any(s.kind == k for s in customer.sites)]
    assert [(s.kind, s.line1, s.city, s.postal_code, s.country) for s in back] == \
        [(s.kind, s.line1, s.city[:mapping.CITY_CHARS], s.postal_code, s.country)
         for s in originals]


def test_long_streets_and_cities_are_cut_to_the_crm_s_lengths_as_named():
    customer = SPEC.record("customer", 0)
    site = customer.sites[0].model_copy(update={"line1": "x" * 200, "line2": "y" * 200,
                                                "city": "z" * 100})
    fields = mapping.account_fields(customer.model_copy(update={"sites": (site,)}))
    assert len(fields["BillingStreet"]) == mapping.STREET_CHARS
    assert fields["BillingCity"] == "z" * mapping.CITY_CHARS
    assert "255" in mapping.LOSS_TRUNCATED_ADDRESS and "40" in mapping.LOSS_TRUNCATED_ADDRESS


def test_contact_values_come_from_the_crm_contact_and_clear_when_it_is_gone():
    assert mapping.contact_values({"FirstName": "Ana", "LastName": "Ruiz", "Email": "a@b.co",
                                   "Phone": "555"}) == {
        "contact_name": "Ana Ruiz", "contact_email": "a@b.co", "contact_phone": "555"}
    assert mapping.contact_values(None) == {"contact_name": None, "contact_email": None,
                                            "contact_phone": None}


def test_owned_fields_are_what_coexist_writes_and_crm_only_fields_are_not():
    assert mapping.owned_fields_changed("Account", ("Credit_Limit__c", "Description", "Phone",
                                                    "LastModifiedDate")) == ["Credit_Limit__c"]
    assert mapping.owned_fields_changed("Order", ("Status", "Description")) == ["Status"]
    assert mapping.owned_fields_changed("Contact", ("Email",)) == []

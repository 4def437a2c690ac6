"""Field ownership: non-owners' changes to owned fields are kept out and reported."""

from __future__ import annotations

from decimal import Decimal

import pytest

from coexistence.canonical import decode
from coexistence.ownership import (
    FIELD_OWNERSHIP,
    OwnershipConfigError,
    merge_owned,
    validate_ownership,
)

BASE = decode("customer", {
    "schema_version": 2, "key": "10042", "name": "Acme", "status": "active", "currency": "USD",
    "credit_limit": "5000", "credit_hold": False, "terms": "net30",
    "customer_group": "RETAIL", "region": "WEST", "contact_email": "a@acme.test",
})


def test_the_shipped_ownership_table_is_valid():
    validate_ownership(FIELD_OWNERSHIP)


@pytest.mark.parametrize(
    "table",
    [{"custard": {}}, {"customer": {"colour": "crm"}}, {"customer": {"name": "fax"}}],
)
def test_an_ownership_table_naming_unknown_things_is_refused_at_start(table):
    with pytest.raises(OwnershipConfigError):
        validate_ownership(table)


def test_the_crm_cannot_change_a_credit_limit_and_the_attempt_is_reported():
    incoming = BASE.model_copy(update={"credit_limit": Decimal("99999"),
                                       "contact_email": "new@acme.test"})
    merged, violations = merge_owned(BASE, incoming, "crm")
    assert merged.credit_limit == Decimal("5000")
    assert merged.contact_email == "new@acme.test"
    assert [(v.field, v.owner, v.refused) for v in violations] == [
        ("credit_limit", "erp", Decimal("99999"))
    ]


def test_the_erp_cannot_change_the_crms_contacts():
    incoming = BASE.model_copy(update={"contact_email": "typo@acme.test", "credit_hold": True})
    merged, violations = merge_owned(BASE, incoming, "erp")
    assert merged.contact_email == "a@acme.test"
    assert merged.credit_hold is True
    assert [v.field for v in violations] == ["contact_email"]


def test_a_new_record_is_taken_whole():
    merged, violations = merge_owned(None, BASE, "crm")
    assert merged == BASE and violations == ()


WALK_IN = decode("customer", {
    "schema_version": 2, "key": "9000000054", "name": "Walk-In Chaos 54", "status": "active",
    "currency": "USD", "credit_limit": "0", "credit_hold": False, "terms": "net30",
    "customer_group": "RETAIL", "region": "WEST",
    "sites": [{"site_id": "1", "kind": "bill_to", "name": "Walk-In Chaos 54",
               "line1": "54 Market St", "region": "CO",
               "city": "Denver", "postal_code": "80054", "country": "US"}],
})


def test_a_difference_the_legacy_erps_normalisation_made_is_no_violation():
    # The CRM-typed customer, as the legacy ERP holds it (upper case) after coexist wrote it
    # there: the CRM's record again is no attempt to change its name or sites.
    from coexistence.translate.legacy import normalise

    held = normalise(WALK_IN)
    assert held.name == "WALK-IN CHAOS 54" and held.sites[0].city == "DENVER"
    incoming = WALK_IN.model_copy(update={"contact_name": "Dana Chaos"})
    merged, violations = merge_owned(held, incoming, "crm")
    assert violations == ()
    assert merged.name == held.name and merged.sites == held.sites  # the held values stay
    assert merged.contact_name == "Dana Chaos"


def test_a_real_change_beside_a_case_only_difference_is_still_reported():
    from coexistence.translate.legacy import normalise

    held = normalise(WALK_IN)
    incoming = WALK_IN.model_copy(update={"name": "Walk-In Chaos 55"})
    merged, violations = merge_owned(held, incoming, "crm")
    assert [(v.field, v.kept, v.refused) for v in violations] == [
        ("name", "WALK-IN CHAOS 54", "Walk-In Chaos 55")]
    assert merged.name == "WALK-IN CHAOS 54"

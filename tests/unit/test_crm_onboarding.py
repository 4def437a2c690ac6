"""Onboarding: a person's new CRM account links to the customer it already is, or asks
for exactly one new one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from coexistence.crm import onboarding
from coexistence.crm.onboarding import Candidate, Create, DuplicateInCrm, Known, Link
from coexistence.sample import SampleSpec

SPEC = SampleSpec(customers=50, seed=9)


def test_company_keys_ignore_case_punctuation_accents_and_legal_forms():
    same = ["ACME Supply, Inc.", "Acme Supply", "acme supply inc", "Acme  Supply LLC",
            "Acmé Supply Corp.", "ACME-SUPPLY Ltd"]
    assert {onboarding.company_key(n) for n in same} == {"acme supply"}
    assert onboarding.company_key("Acme Supply & Tools") == "acme supply and tools"
    assert onboarding.company_key("Acme Tools") != onboarding.company_key("Acme Supply")


def account(name: str, postal: str = "80202", tax: str | None = None, crm_id: str = "001A"):
    return Candidate.of(crm_id, {"Name": name, "BillingPostalCode": postal, "Tax_Id__c": tax})


def test_a_tax_id_match_links_whatever_the_name():
    known = [Known("10042", "acme supply", frozenset({"80202"}), "822054282")]
    assert onboarding.decide(account("Totally Different", "11111", "82-2054282"), known) == \
        Link("10042", "tax_id")


def test_a_name_needs_a_postal_code_of_one_of_the_customer_s_sites():
    known = [Known("10042", "acme supply", frozenset({"80202", "30301"}), "")]
    assert onboarding.decide(account("Acme Supply Inc", "30301"), known) == \
        Link("10042", "name_and_postal_code")
    assert onboarding.decide(account("Acme Supply Inc", "99999"), known) == Create()


def test_the_crm_s_own_duplicate_report_wins_over_everything():
    known = [Known("10042", "acme supply", frozenset({"80202"}), "")]
    decision = onboarding.decide(account("Acme Supply"), known,
                                 [("001B", None), ("001C", "10077")])
    assert decision == DuplicateInCrm("10077", "001C")


def test_several_matching_customers_link_to_the_lowest_key_whatever_the_order():
    twins = [Known(k, "acme supply", frozenset({"80202"}), "") for k in ("10100", "9999", "10042")]
    for order in (twins, twins[::-1]):
        assert onboarding.decide(account("Acme Supply"), order) == \
            Link("9999", "name_and_postal_code")


def test_an_existing_erp_customer_is_found_from_its_canonical_record():
    customer = SPEC.record("customer", 7)
    bill_to = next(s for s in customer.sites if s.kind == "bill_to")
    typed = account(customer.name.upper().replace(",", ""), bill_to.postal_code)
    assert onboarding.decide(typed, [Known.of(c) for c in SPEC.iter("customer")]) == \
        Link(customer.key, "name_and_postal_code")


def test_a_new_customer_starts_on_hold_with_no_credit_and_the_account_s_addresses():
    customer = onboarding.new_customer("9000000001", {
        "Name": "Walk-in Hardware", "BillingStreet": "1 Main St", "BillingCity": "Denver",
        "BillingState": "CO", "BillingPostalCode": "80202", "BillingCountry": "US",
        "CurrencyIsoCode": "CAD", "Tax_Id__c": "99-1"})
    assert customer.key == "9000000001" and customer.currency == "CAD"
    assert customer.credit_hold is True and customer.credit_limit == 0
    assert customer.terms == "prepaid" and customer.tax_id == "99-1"
    assert [(s.kind, s.postal_code) for s in customer.sites] == [("bill_to", "80202")]


# ---------------------------------------------------------------------------- properties

_SUFFIXES = ["", " Inc.", " Inc", ", Inc.", " LLC", " Corp", " Ltd.", " Co."]


def _variant(base: str, draw_case: int, suffix: str) -> str:
    text = [base.lower(), base.upper(), base.title(), base][draw_case % 4]
    return text + suffix


def onboard_all(accounts: list[tuple[str, str, str | None]], existing: list[Known]
                ) -> tuple[dict[str, str], list[str]]:
    """Onboard accounts in order the way the handler does: each decision becomes known to
    the next.  Returns (crm id -> customer key, keys created)."""
    known = list(existing)
    created: list[str] = []
    assigned: dict[str, str] = {}
    for n, (name, postal, tax) in enumerate(accounts):
        candidate = account(name, postal, tax, crm_id=f"001{n:03d}")
        decision = onboarding.decide(candidate, known)
        if isinstance(decision, Link):
            assigned[candidate.crm_id] = decision.customer_key
        else:
            key = str(9_000_000_001 + len(created))
            created.append(key)
            known.append(candidate.known_as(key))
            assigned[candidate.crm_id] = key
    return assigned, created


@settings(max_examples=200)
@given(base=st.sampled_from(["Acme Supply", "Keystone Safety Services", "Blue River Tools"]),
       typings=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(_SUFFIXES)),
                        min_size=2, max_size=5),
       postal=st.sampled_from(["80202", "30301-1234", "EC1A 1BB"]))
def test_the_same_company_typed_several_times_creates_exactly_one_customer(base, typings,
                                                                            postal):
    accounts = [(_variant(base, case, suffix), postal, None) for case, suffix in typings]
    assigned, created = onboard_all(accounts, [])
    assert len(created) == 1 and set(assigned.values()) == set(created)


@settings(max_examples=200)
@given(i=st.integers(0, 49), typings=st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(_SUFFIXES)), min_size=1, max_size=4))
def test_a_company_that_exists_in_the_erp_creates_no_customer(i, typings):
    customer = SPEC.record("customer", i)
    bill_to = next(s for s in customer.sites if s.kind == "bill_to")
    base = onboarding.company_key(customer.name)
    accounts = [(_variant(base, case, suffix), bill_to.postal_code, None)
                for case, suffix in typings]
    assigned, created = onboard_all(accounts, [Known.of(c) for c in SPEC.iter("customer")])
    assert created == [] and len(set(assigned.values())) == 1
    # The sample, like a real estate, has a few look-alike customers: any of them is the
    # same company (the lowest key, whatever order they were read in).
    [linked] = set(assigned.values())
    twin = next(c for c in SPEC.iter("customer") if c.key == linked)
    assert onboarding.company_key(twin.name) == base
    assert bill_to.postal_code in {s.postal_code for s in twin.sites}
    assert linked == min((c.key for c in SPEC.iter("customer")
                          if onboarding.company_key(c.name) == base
                          and bill_to.postal_code in {s.postal_code for s in c.sites}),
                         key=lambda k: (len(k), k))


@settings(max_examples=100)
@given(st.lists(st.sampled_from(["Acme Supply", "Acme Tools", "Blue River", "Red Hill"]),
                min_size=1, max_size=8, unique=True))
def test_different_companies_each_get_their_own_customer(names):
    assigned, created = onboard_all([(n, "80202", None) for n in names], [])
    assert len(created) == len(names) == len(set(assigned.values()))


ACCOUNT = {"Name": "Walk-in Hardware & Garden Supply of Denver", "BillingStreet": "1 Main St",
           "BillingCity": "Denver", "BillingState": "CO", "BillingPostalCode": "80202",
           "BillingCountry": "US"}


def test_the_sor_s_copy_of_a_numbered_create_is_recognised_before_its_number_is_known():
    body = onboarding.new_customer("0", ACCOUNT)
    # The legacy ERP keeps names upper case, cut to 30 characters.
    legacy = body.model_copy(update={"key": "100000", "name": body.name.upper()[:30]})
    assert onboarding.is_created_from(legacy, body)
    assert onboarding.is_created_from(body.model_copy(update={"key": "500000"}), body)
    # The same tax id is the same company whatever the name.
    taxed = onboarding.new_customer("0", {**ACCOUNT, "Tax_Id__c": "84-1234567"})
    assert onboarding.is_created_from(
        legacy.model_copy(update={"name": "Other", "tax_id": "841234567"}), taxed)


def test_another_customer_is_not_taken_for_a_pending_create():
    body = onboarding.new_customer("0", ACCOUNT)
    elsewhere = onboarding.new_customer("0", {**ACCOUNT, "BillingPostalCode": "10001"})
    assert not onboarding.is_created_from(elsewhere.model_copy(update={"key": "7"}), body)
    other = onboarding.new_customer("0", {**ACCOUNT, "Name": "Walk-in Lumber"})
    assert not onboarding.is_created_from(other.model_copy(update={"key": "8"}), body)
    # A longer name is not a cut copy of a shorter one.
    assert not onboarding.is_created_from(
        body.model_copy(update={"key": "9", "name": body.name + " East"}), body)

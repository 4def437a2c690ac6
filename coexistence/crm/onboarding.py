"""Onboarding a person's new CRM account without creating a second customer.

A sales rep types a new account into the CRM.  Before coexist asks the system of record
to create a customer, it looks for one that already exists:

1. the CRM's own duplicate rule: when it reported the new account together with an
   account coexist already keys by a customer, the new one is a duplicate inside the CRM
   (``DuplicateInCrm``: reported for a person to merge; no ERP customer is created);
2. the tax id (normalised): the same tax id is the same company (``Link``);
3. the company name, normalised (case, accents, punctuation and the legal-form words
   Inc, Corp, Co, LLC, Ltd... dropped), together with a postal code the customer has at
   one of its sites (``Link``);

and otherwise asks for a new customer (``Create``).  ``known`` holds the ERP's customers
and the customers onboarding already asked for that the SoR may not have created yet, so
the same company typed twice in quick succession still ends as one customer.

The matching is coexist's own, written apart from the CRM simulator's duplicate rule
(``workers.crm_sim.duplicates``): two systems, two implementations, and a disagreement
between them shows up in tests instead of being shared.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from coexistence.canonical.models import Customer, CustomerStatus, PaymentTerms
from coexistence.crm.mapping import sites_from_account

#: Words that name a legal form, not a company.
LEGAL_FORMS: frozenset[str] = frozenset({
    "inc", "incorporated", "corp", "corporation", "co", "company", "llc", "ltd", "limited",
    "plc", "lp", "llp", "gmbh", "sa", "sarl", "bv", "ag",
})
_NON_WORD = re.compile(r"[^0-9a-z]+")


def company_key(name: str | None) -> str:
    """The company name as onboarding compares it: ``"ACME Supply, Inc."`` -> ``"acme supply"``."""
    if not name:
        return ""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    folded = folded.replace("&", " and ")
    return " ".join(w for w in _NON_WORD.split(folded) if w and w not in LEGAL_FORMS)


def postal_key(postal: str | None) -> str:
    return re.sub(r"[^0-9A-Z]", "", (postal or "").upper())


def tax_key(tax_id: str | None) -> str:
    return re.sub(r"[^0-9A-Z]", "", (tax_id or "").upper())


@dataclass(frozen=True, slots=True)
class Known:
    """A customer as matching sees it."""

    customer_key: str
    name_key: str
    postal_keys: frozenset[str]
    tax_key: str

    @classmethod
    def of(cls, customer: Customer) -> Known:
        return cls(customer.key, company_key(customer.name),
                   frozenset(k for s in customer.sites if (k := postal_key(s.postal_code))),
                   tax_key(customer.tax_id))


@dataclass(frozen=True, slots=True)
class Candidate:
    """A person's new CRM account as matching sees it."""

    crm_id: str
    name_key: str
    postal_keys: frozenset[str]
    tax_key: str

    @classmethod
    def of(cls, crm_id: str, fields: Mapping[str, Any]) -> Candidate:
        postals = (postal_key(fields.get("BillingPostalCode")),
                   postal_key(fields.get("ShippingPostalCode")))
        return cls(crm_id, company_key(fields.get("Name")), frozenset(p for p in postals if p),
                   tax_key(fields.get("Tax_Id__c")))

    def known_as(self, customer_key: str) -> Known:
        """How this account matches later candidates once it is customer ``customer_key``."""
        return Known(customer_key, self.name_key, self.postal_keys, self.tax_key)


@dataclass(frozen=True, slots=True)
class Link:
    """The account is customer ``customer_key``: key it by that customer, create nothing."""

    customer_key: str
    reason: Literal["tax_id", "name_and_postal_code"]


@dataclass(frozen=True, slots=True)
class DuplicateInCrm:
    """The CRM already shows customer ``customer_key`` as account ``other_crm_id``."""

    customer_key: str
    other_crm_id: str


@dataclass(frozen=True, slots=True)
class Create:
    """No customer matches: the SoR must create one."""


Decision = Link | DuplicateInCrm | Create


def match(candidate: Candidate, known: Iterable[Known]) -> Link | None:
    """The customer ``candidate`` is, by tax id first, then name and postal code."""
    by_name: list[str] = []
    by_tax: list[str] = []
    for k in known:
        if candidate.tax_key and k.tax_key == candidate.tax_key:
            by_tax.append(k.customer_key)
        elif (candidate.name_key and k.name_key == candidate.name_key
              and candidate.postal_keys & k.postal_keys):
            by_name.append(k.customer_key)
    # Several matches are several ERP customers already alike: link to the lowest key, so
    # the choice does not depend on the order they were read in.
    if by_tax:
        return Link(min(by_tax, key=_key_order), "tax_id")
    if by_name:
        return Link(min(by_name, key=_key_order), "name_and_postal_code")
    return None


def decide(candidate: Candidate, known: Iterable[Known],
           crm_duplicates: Iterable[tuple[str, str | None]] = ()) -> Decision:
    """What onboarding does with ``candidate``.

    ``crm_duplicates``: (CRM id, customer key or None) of the accounts the CRM's duplicate
    rule reported together with the candidate.
    """
    linked = sorted((key, crm_id) for crm_id, key in crm_duplicates if key)
    if linked:
        return DuplicateInCrm(linked[0][0], linked[0][1])
    found = match(candidate, known)
    return found if found is not None else Create()


@dataclass(frozen=True, slots=True)
class OnboardingDefaults:
    """What a customer created from a CRM account starts with, until the ERP's credit
    department sets it: no credit, on hold, prepaid."""

    currency: str = "USD"
    customer_group: str = "CRM"
    region: str = "NEW"
    credit_limit: Decimal = Decimal("0")
    credit_hold: bool = True
    terms: PaymentTerms = PaymentTerms.PREPAID


def new_customer(key: str, fields: Mapping[str, Any],
                 defaults: OnboardingDefaults = OnboardingDefaults()) -> Customer:
    """The customer to create in the SoR for a person's CRM account (number ``key``)."""
    currency = fields.get("CurrencyIsoCode") or defaults.currency
    return Customer(
        key=key,
        name=(fields.get("Name") or "").strip()[:120],
        status=CustomerStatus.ACTIVE,
        currency=currency,
        credit_limit=defaults.credit_limit,
        credit_hold=defaults.credit_hold,
        terms=defaults.terms,
        tax_id=(fields.get("Tax_Id__c") or None) and str(fields["Tax_Id__c"])[:20],
        customer_group=defaults.customer_group,
        region=defaults.region,
        sites=sites_from_account(fields),
    )


def is_created_from(customer: Customer, body: Customer) -> bool:
    """Whether ``customer`` (as its SoR holds it now) is the one a numbered create of
    ``body`` made, before coexist knows its number: the same tax id, or the same name
    (case aside; the SoR may have cut it to its width) at one of the same postal codes
    (any, when the body had none).  A customer that only looks alike answers ``True``
    too: that only delays it (see ``workers.crm.consumer``)."""
    if (tax := tax_key(body.tax_id)) and tax == tax_key(customer.tax_id):
        return True
    held, asked = _name_fold(customer.name), _name_fold(body.name)
    if not held or not asked.startswith(held):
        return False
    wanted = {k for s in body.sites if (k := postal_key(s.postal_code))}
    return not wanted or bool(wanted & {k for s in customer.sites
                                        if (k := postal_key(s.postal_code))})


def _name_fold(name: str | None) -> str:
    return " ".join((name or "").casefold().split())


def _key_order(key: str) -> tuple[int, str]:
    return (len(key), key)

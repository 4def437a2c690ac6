"""The cloud side's digest without the canonical detour, for the domains that have one.

``record_digest(normalise(canonical_from_json(doc)))`` (the oracle) validates the
cloud document, builds and validates a canonical record, dumps and re-validates
it in legacy normal form, builds the legacy rows as dicts and hashes them: about
three quarters of a cold run's CPU on the cloud side.  ``cloud_digest`` computes
the same (digest, natural-key hash) from the validated cloud document alone: the
legacy row values straight from its fields, with the same text helpers.

It only answers when every check the oracle would make is proven to pass (the
canonical constraints, the legacy normalisation's re-validation, the legacy row
form's refusals: key digits, site codes, blank names, amounts); anything else
returns ``None`` and the caller takes the oracle, which names the defect.
tests/unit/test_reconcile_fast.py holds both equal over generated and mutated
documents.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal

from coexistence.canonical.models import ISO_CURRENCIES
from coexistence.errors import CoexistError
from coexistence.legacy.models import (
    CITY_WIDTH,
    EMAIL_WIDTH,
    GROUP_WIDTH,
    NAME_WIDTH,
    PHONE_WIDTH,
    SITE_WIDTH,
    STATE_WIDTH,
    TAXID_WIDTH,
    ZIP_WIDTH,
)
from coexistence.reconcile.digest import digest_columns, natural_key_hash, values_digest
from coexistence.translate.common import (
    Where,
    char,
    char_keep_case,
    fit_optional_text,
    fit_optional_text_keep_case,
    fit_text,
    round_cents,
    to_cents,
)
from coexistence.translate.legacy import customer as legacy_customer

# pydantic's patterns are Rust regexes anchored with ^...$ (no "before a final
# newline" as Python's $): fullmatch is the same test.
_is_key = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*").fullmatch

_CUSTOMER_HEAD = (
    "CUSTNO",
    "CUSTNAME",
    "CUSTSTAT",
    "CURRCODE",
    "CRLIMIT",
    "CRHOLD",
    "TERMSCD",
    "TAXID",
    "CUSTGRP",
    "REGION",
    "CONTNAME",
    "CONTEMAIL",
    "CONTPHONE",
)
_CUSTOMER_CHILD = (
    "CUSTNO",
    "SITENO",
    "SITETYPE",
    "SITENAME",
    "ADDR1",
    "ADDR2",
    "CITY",
    "STATE",
    "ZIPCODE",
    "COUNTRY",
)
# The tuples below are built in this column order; a changed table must change them.
assert digest_columns("customer") == (_CUSTOMER_HEAD, _CUSTOMER_CHILD)


def _customer_maps():
    from coexistence.translate.cloud import customer as cloud_customer

    status = {c: legacy_customer.STATUS_CODES[s] for c, s in cloud_customer._STATUS_IN.items()}
    terms = {c: legacy_customer.TERMS_CODES[t] for c, t in cloud_customer._TERMS_IN.items()}
    kind = {c: (k, legacy_customer.SITE_CODES[k]) for c, k in cloud_customer._KIND_IN.items()}
    return status, terms, kind


_STATUS, _TERMS, _KIND = _customer_maps()
_BILL_TO = legacy_customer.SITE_CODES[legacy_customer.SiteKind.BILL_TO]
_WHERE = Where("customer", None)


def _customer(doc) -> tuple[int, int | None] | None:
    key = doc.number
    # Canonical Key, then the legacy CUSTNO (pad_number: digits, no leading zero, <= 10).
    if not (len(key) <= 10 and key.isascii() and key.isdigit() and (key[0] != "0" or key == "0")):
        return None
    custno = key.zfill(10)
    status = _STATUS.get(doc.status)
    terms = _TERMS.get(doc.payment_terms_code)
    credit_limit = doc.credit_limit
    tax_id, group, region = (
        doc.tax_registration_number,
        doc.customer_group_code,
        doc.sales_region_code,
    )
    contact, email, phone = doc.contact_name, doc.email, doc.phone_number
    name = doc.display_name
    # Canonical Customer's constraints (the cloud model already holds the text valid
    # Unicode, the decimal finite).
    if not (
        status is not None
        and terms is not None
        and 0 < len(name) <= 120
        and doc.currency_code in ISO_CURRENCIES
        and type(credit_limit) is Decimal
        and credit_limit >= 0
        and (tax_id is None or len(tax_id) <= 20)
        and len(group) <= 10
        and len(region) <= 10
        and (contact is None or len(contact) <= 200)
        and (email is None or len(email) <= 200)
        and (phone is None or len(phone) <= 30)
    ):
        return None
    # Legacy normal form (``normalise``), then the legacy row form (``from_canonical``).
    n_name = fit_text(name, NAME_WIDTH)
    if not n_name:
        return None  # normalise's re-validation refuses an empty name
    n_tax = fit_optional_text(tax_id, TAXID_WIDTH)
    try:
        cents = to_cents(round_cents(credit_limit), _WHERE, "credit_limit")
    except CoexistError:
        return None
    header = (
        custno,
        char(n_name, NAME_WIDTH),
        status,
        doc.currency_code,
        cents,
        "Y" if doc.credit_hold else "N",
        terms,
        char(n_tax, TAXID_WIDTH),
        char(fit_text(group, GROUP_WIDTH), GROUP_WIDTH),
        char(fit_text(region, GROUP_WIDTH), GROUP_WIDTH),
        char(fit_optional_text(contact, NAME_WIDTH), NAME_WIDTH),
        char_keep_case(fit_optional_text_keep_case(email, EMAIL_WIDTH), EMAIL_WIDTH),
        char(fit_optional_text(phone, PHONE_WIDTH), PHONE_WIDTH),
    )
    sites = []
    for a in doc.addresses:
        site_id = a.code
        kind = _KIND.get(a.address_type)
        line2 = a.address_line2
        # Canonical Site (Key, Text <= 200, region <= 40, postal 1..12; the country is
        # checked by the cloud model), then code(): upper-case, no space, <= 8.
        if not (
            kind is not None
            and len(site_id) <= SITE_WIDTH
            and _is_key(site_id)
            and site_id.upper() == site_id
            and len(a.name) <= 200
            and len(a.address_line1) <= 200
            and (line2 is None or len(line2) <= 200)
            and len(a.city) <= 200
            and len(a.state) <= 40
            and 0 < len(a.postal_code) <= 12
        ):
            return None
        postal = fit_text(a.postal_code, ZIP_WIDTH)
        if not postal:
            return None  # normalise's re-validation refuses an empty postal code
        sites.append(
            (
                custno,
                site_id.ljust(SITE_WIDTH),
                kind[1],
                char(fit_text(a.name, NAME_WIDTH), NAME_WIDTH),
                char(fit_text(a.address_line1, NAME_WIDTH), NAME_WIDTH),
                char(fit_optional_text(line2, NAME_WIDTH), NAME_WIDTH),
                char(fit_text(a.city, CITY_WIDTH), CITY_WIDTH),
                char(fit_text(a.state, STATE_WIDTH), STATE_WIDTH),
                char(postal, ZIP_WIDTH),
                a.country,
                site_id,
                postal,
            )
        )
    sites.sort(key=lambda s: s[1])
    for i in range(1, len(sites)):
        if sites[i][1] == sites[i - 1][1]:
            return None  # a repeated site: from_canonical refuses it
    children = tuple(s[:10] for s in sites)
    # Natural key of the normalised record: name, postal code of the first bill-to
    # by site id, tax id.
    bill_to = next((s[11] for s in sorted(sites, key=lambda s: s[10]) if s[2] == _BILL_TO), None)
    return values_digest(header, children), natural_key_hash((n_name, bill_to, n_tax))


#: Domain -> fast (digest, natural-key hash) of a validated cloud document, or ``None``
#: when the oracle must decide.
CLOUD_DIGESTS: dict[str, Callable] = {"customer": _customer}


def cloud_digest(domain: str, doc) -> tuple[int, int | None] | None:
    """(digest, natural-key hash) of a validated cloud document as the oracle computes
    them, or ``None`` when only the oracle can say (no fast path, or a check to make)."""
    fn = CLOUD_DIGESTS.get(domain)
    return fn(doc) if fn is not None else None

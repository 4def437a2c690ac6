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
from datetime import datetime
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
    """(digest, natural-key hash) of a validated cloud customer (``CloudCustomer``)."""
    got = _customer_values(
        doc.number, doc.status, doc.payment_terms_code, doc.currency_code, doc.credit_limit,
        doc.credit_hold, doc.tax_registration_number, doc.customer_group_code,
        doc.sales_region_code, doc.contact_name, doc.email, doc.phone_number, doc.display_name,
        [(a.code, a.address_type, a.name, a.address_line1, a.address_line2, a.city, a.state,
          a.postal_code, a.country) for a in doc.addresses])
    return None if got is None else got[:2]


def _customer_values(key, status_code, terms_code, currency, credit_limit, credit_hold, tax_id,
                     group, region, contact, email, phone, name, addresses,
                     ) -> tuple[int, int | None, tuple] | None:
    """(digest, natural-key hash, (header, children): the legacy row values digested)."""
    # Canonical Key, then the legacy CUSTNO (pad_number: digits, no leading zero, <= 10).
    if not (len(key) <= 10 and key.isascii() and key.isdigit() and (key[0] != "0" or key == "0")):
        return None
    custno = key.zfill(10)
    status = _STATUS.get(status_code)
    terms = _TERMS.get(terms_code)
    # Canonical Customer's constraints (the cloud model already holds the text valid
    # Unicode, the decimal finite).
    if not (
        status is not None
        and terms is not None
        and 0 < len(name) <= 120
        and currency in ISO_CURRENCIES
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
        currency,
        cents,
        "Y" if credit_hold else "N",
        terms,
        char(n_tax, TAXID_WIDTH),
        char(fit_text(group, GROUP_WIDTH), GROUP_WIDTH),
        char(fit_text(region, GROUP_WIDTH), GROUP_WIDTH),
        char(fit_optional_text(contact, NAME_WIDTH), NAME_WIDTH),
        char_keep_case(fit_optional_text_keep_case(email, EMAIL_WIDTH), EMAIL_WIDTH),
        char(fit_optional_text(phone, PHONE_WIDTH), PHONE_WIDTH),
    )
    sites = []
    for site_id, address_type, a_name, line1, line2, city, state, postal_code, country in (
            addresses):
        kind = _KIND.get(address_type)
        # Canonical Site (Key, Text <= 200, region <= 40, postal 1..12; the country is
        # checked by the cloud model), then code(): upper-case, no space, <= 8.
        if not (
            kind is not None
            and len(site_id) <= SITE_WIDTH
            and _is_key(site_id)
            and site_id.upper() == site_id
            and len(a_name) <= 200
            and len(line1) <= 200
            and (line2 is None or len(line2) <= 200)
            and len(city) <= 200
            and len(state) <= 40
            and 0 < len(postal_code) <= 12
        ):
            return None
        postal = fit_text(postal_code, ZIP_WIDTH)
        if not postal:
            return None  # normalise's re-validation refuses an empty postal code
        sites.append(
            (
                custno,
                site_id.ljust(SITE_WIDTH),
                kind[1],
                char(fit_text(a_name, NAME_WIDTH), NAME_WIDTH),
                char(fit_text(line1, NAME_WIDTH), NAME_WIDTH),
                char(fit_optional_text(line2, NAME_WIDTH), NAME_WIDTH),
                char(fit_text(city, CITY_WIDTH), CITY_WIDTH),
                char(fit_text(state, STATE_WIDTH), STATE_WIDTH),
                char(postal, ZIP_WIDTH),
                country,
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
    return values_digest(header, children), natural_key_hash((n_name, bill_to, n_tax)), (
        header, children)


# --------------------------------------------------------------------------- decoded JSON
#
# The same digest from the decoded JSON document (``json.loads``), without pydantic's
# validation of the cloud model: the checks below accept a document only where
# ``CloudCustomer`` would accept it with the same values (in JSON mode from the text and
# in Python mode from the decoded dict); anything they cannot vouch for (a field of
# another type, a snake_case or unknown name, a decimal, id or timestamp in a form other
# than the plainest, a string holding surrogates, which the JSON decoders treat
# differently) returns ``None``, and the caller validates the document with pydantic.

_plain_decimal = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,20})?").fullmatch
_plain_uuid = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}").fullmatch
# Years 1900-2999 only: ``astimezone`` (the model's UTC normalisation) cannot overflow.
_plain_datetime = re.compile(
    r"(?:19|2[0-9])[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])").fullmatch
_surrogate = re.compile("[\ud800-\udfff]").search
_COUNTRY = frozenset(chr(a) + chr(b) for a in range(65, 91) for b in range(65, 91))
_ADDRESS_FIELDS = frozenset({"code", "addressType", "name", "addressLine1", "addressLine2",
                             "city", "state", "postalCode", "country"})
_CUSTOMER_FIELDS = frozenset({
    "@odata.etag", "id", "number", "lastModifiedDateTime", "coexistSourceVersion",
    "displayName", "status", "currencyCode", "creditLimit", "creditHold", "paymentTermsCode",
    "taxRegistrationNumber", "customerGroupCode", "salesRegionCode", "contactName", "email",
    "phoneNumber", "addresses",
    # Server metadata no model holds: dropped before validation (``parse_document``).
    "lastModifiedBy",
})
_MISSING = object()


class _Refused(Exception):
    """A value the decoded-JSON path cannot vouch for (the caller validates instead)."""


def _text(value, max_len: int):
    """A JSON string of at most ``max_len`` characters, as the model validates it."""
    if type(value) is not str or len(value) > max_len or (
            not value.isascii() and _surrogate(value)):
        raise _Refused
    return value


def _optional_text(value, max_len: int):
    return None if value is None else _text(value, max_len)


def _customer_json(d) -> tuple[str, int, int | None, tuple] | None:
    """(key, digest, natural-key hash, legacy row values) of a decoded cloud customer
    document, or ``None``."""
    if type(d) is not dict or not d.keys() <= _CUSTOMER_FIELDS:
        return None
    try:
        key = _text(d["number"], 50)
        if not key:
            return None
        etag = d.get("@odata.etag")
        if etag is not None:
            _text(etag, 1 << 30)
        cloud_id = d.get("id")
        if cloud_id is not None and (type(cloud_id) is not str or not _plain_uuid(cloud_id)):
            return None
        modified = d.get("lastModifiedDateTime")
        if modified is not None:
            if type(modified) is not str or not _plain_datetime(modified):
                return None
            datetime.fromisoformat(modified)  # a real date and time (not 02-30, not 24:00)
        version = d.get("coexistSourceVersion")
        if version is not None and not (type(version) is int and 0 <= version < 1 << 63):
            return None
        limit = d["creditLimit"]
        if not ((type(limit) is str and _plain_decimal(limit))
                or (type(limit) is int and -(1 << 63) < limit < 1 << 63)):
            return None
        credit_limit = Decimal(limit)
        credit_hold = d["creditHold"]
        if type(credit_hold) is not bool:
            return None
        status, terms = d["status"], d["paymentTermsCode"]
        currency = d["currencyCode"]
        if type(status) is not str or type(terms) is not str or type(currency) is not str:
            return None
        raw_addresses = d.get("addresses", _MISSING)
        if raw_addresses is _MISSING:
            raw_addresses = []
        elif type(raw_addresses) is not list:
            return None
        addresses = []
        for a in raw_addresses:
            if type(a) is not dict or not a.keys() <= _ADDRESS_FIELDS:
                return None
            code = _text(a["code"], 50)
            country = a["country"]
            if not code or type(country) is not str or country not in _COUNTRY:
                return None
            address_type = a["addressType"]
            if type(address_type) is not str:
                return None
            addresses.append((
                code, address_type, _text(a["name"], 250), _text(a["addressLine1"], 250),
                _optional_text(a.get("addressLine2"), 250), _text(a["city"], 250),
                _text(a["state"], 250), _text(a["postalCode"], 20), country))
        got = _customer_values(
            key, status, terms, currency, credit_limit, credit_hold,
            _optional_text(d.get("taxRegistrationNumber"), 50),
            _text(d["customerGroupCode"], 20), _text(d["salesRegionCode"], 20),
            _optional_text(d.get("contactName"), 250), _optional_text(d.get("email"), 250),
            _optional_text(d.get("phoneNumber"), 50), _text(d["displayName"], 250), addresses)
    except (_Refused, KeyError, ValueError):
        return None
    return None if got is None else (key, *got)


#: Domain -> fast (digest, natural-key hash) of a validated cloud document, or ``None``
#: when the oracle must decide.
CLOUD_DIGESTS: dict[str, Callable] = {"customer": _customer}

#: Domain -> fast (key, digest, natural-key hash, legacy row values) of a decoded cloud
#: JSON document (no pydantic), or ``None`` when the validated path must decide.
JSON_DIGESTS: dict[str, Callable] = {"customer": _customer_json}


def record_of_rows(domain: str, rows: tuple) -> object:
    """The legacy-normalised canonical record of a cloud document from the legacy row
    values its fast digest was computed from (``JSON_DIGESTS``): the legacy translator
    reads them as it reads its own rows.  The legacy normal form is a fixed point of the
    translators, so this is ``normalise(canonical_from_json(doc))`` (held equal by
    tests/unit/test_reconcile_fast.py) at the cost of one legacy read, not three
    pydantic validations."""
    from coexistence.translate.legacy import LEGACY_TRANSLATORS

    head_cols, child_cols = digest_columns(domain)
    header, children = rows
    return LEGACY_TRANSLATORS[domain].to_canonical(
        dict(zip(head_cols, header, strict=True)),
        [dict(zip(child_cols, c, strict=True)) for c in children])


def cloud_digest(domain: str, doc) -> tuple[int, int | None] | None:
    """(digest, natural-key hash) of a validated cloud document as the oracle computes
    them, or ``None`` when only the oracle can say (no fast path, or a check to make)."""
    fn = CLOUD_DIGESTS.get(domain)
    return fn(doc) if fn is not None else None

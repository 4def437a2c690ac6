"""Customer: legacy CUSTMAST + CUSTSITE rows <-> canonical ``Customer``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from coexistence.canonical.models import (
    ISO_CURRENCIES,
    Customer,
    CustomerStatus,
    PaymentTerms,
    Site,
    SiteKind,
)
from coexistence.errors import TranslationError
from coexistence.legacy.models import (
    CITY_WIDTH,
    CUSTMAST,
    CUSTSITE,
    EMAIL_WIDTH,
    GROUP_WIDTH,
    KEY_WIDTH,
    NAME_WIDTH,
    PHONE_WIDTH,
    SITE_WIDTH,
    STATE_WIDTH,
    TAXID_WIDTH,
    ZIP_WIDTH,
)
from coexistence.translate.common import (
    LOSS_CENTS,
    LOSS_EMPTY_IS_NONE,
    LOSS_LINE_ORDER,
    LOSS_TRAILING_SPACES,
    LOSS_TRUNCATION,
    LOSS_UPPER_CASE,
    Where,
    char,
    char_keep_case,
    char_required,
    code,
    construct,
    fail,
    fit_optional_text,
    fit_optional_text_keep_case,
    fit_text,
    from_cents,
    is_key,
    pad_number,
    pydantic_text,
    round_cents,
    to_cents,
    uncode,
    unpad_number,
)
from coexistence.translate.legacy._base import (
    DEFAULT_WRITER,
    audit,
    code_map,
    currency,
    decode,
    flag,
    guard_columns,
    padded_codes,
    sort_unique,
    validate,
)

DOMAIN = "customer"
TABLE = CUSTMAST
CHILD_TABLE = CUSTSITE
KEY_COLUMNS = ("CUSTNO",)

#: The legacy ERP has no prospects: a prospect is kept as inactive and comes back inactive.
LOSS_PROSPECT = "status prospect stored as I (inactive), read back as inactive"

LOSSES: tuple[str, ...] = (
    LOSS_PROSPECT,
    LOSS_UPPER_CASE,  # every text column but CONTEMAIL
    LOSS_TRUNCATION,  # CUSTNAME 30, CONTNAME 30, CONTPHONE 20, CONTEMAIL 60, site columns
    LOSS_TRAILING_SPACES,
    LOSS_EMPTY_IS_NONE,  # tax id, contact name/e-mail/phone, address line 2
    LOSS_CENTS,  # CRLIMIT
    LOSS_LINE_ORDER,  # sites sorted by SITENO
)

STATUS_CODES: dict[CustomerStatus, str] = {
    CustomerStatus.ACTIVE: "A",
    CustomerStatus.INACTIVE: "I",
    CustomerStatus.BLOCKED: "H",
    CustomerStatus.PROSPECT: "I",  # LOSS_PROSPECT
}
_STATUS = code_map(STATUS_CODES)
_FOLDED_STATUS = {s: _STATUS[c] for s, c in STATUS_CODES.items()}

TERMS_CODES: dict[PaymentTerms, str] = padded_codes({
    PaymentTerms.PREPAID: "PP",
    PaymentTerms.COD: "COD",
    PaymentTerms.NET15: "N15",
    PaymentTerms.NET30: "N30",
    PaymentTerms.NET45: "N45",
    PaymentTerms.NET60: "N60",
    PaymentTerms.NET90: "N90",
}, 3)
_TERMS = code_map(TERMS_CODES, 3)

SITE_CODES: dict[SiteKind, str] = {SiteKind.BILL_TO: "B", SiteKind.SHIP_TO: "S"}
_SITE_KIND = code_map(SITE_CODES)

#: Canonical field -> legacy column, so validation errors name what the user sees.
COLUMNS: dict[str, str] = {
    "key": "CUSTNO", "name": "CUSTNAME", "status": "CUSTSTAT", "currency": "CURRCODE",
    "credit_limit": "CRLIMIT", "credit_hold": "CRHOLD", "terms": "TERMSCD", "tax_id": "TAXID",
    "customer_group": "CUSTGRP", "region": "REGION", "contact_name": "CONTNAME",
    "contact_email": "CONTEMAIL", "contact_phone": "CONTPHONE", "sites": "CUSTSITE",
}


def legacy_key(canonical_key: str) -> str:
    """``"10042"`` -> ``"0000010042"``."""
    return pad_number(canonical_key, KEY_WIDTH, Where(DOMAIN, canonical_key), "key")


def canonical_key(legacy_key: str) -> str:
    """``"0000010042"`` -> ``"10042"``."""
    return unpad_number(legacy_key, Where(DOMAIN, legacy_key), "CUSTNO")


def key_columns(legacy_key: str) -> dict[str, str]:
    """The header's key column values for a legacy key (for a WHERE clause)."""
    return {"CUSTNO": legacy_key}


#: Site field -> CUSTSITE column, for errors found by model validation.
SITE_COLUMNS: dict[str, str] = {
    "site_id": "SITENO", "kind": "SITETYPE", "name": "SITENAME", "line1": "ADDR1",
    "line2": "ADDR2", "city": "CITY", "region": "STATE", "postal_code": "ZIPCODE",
    "country": "COUNTRY",
}


def _bad_site(row: Mapping[str, Any], custno: str, where: Where) -> TranslationError:
    """Slow path: the precise error for a site row the fast path refused."""
    if row["CUSTNO"] != custno:
        return fail(where, "CUSTSITE.CUSTNO", row["CUSTNO"], "site of another customer")
    uncode(row["SITENO"], where, "CUSTSITE.SITENO")
    decode(_SITE_KIND, row["SITETYPE"], where, "CUSTSITE.SITETYPE", "site type")
    return fail(where, "CUSTSITE", None, "unreadable site row")


# The fast path: a record is built without pydantic's validation only when every
# value was checked below against the canonical constraints (coexistence/canonical/
# models.py: Key, Text, lengths, country, currency) and all its text is text
# pydantic accepts (``pydantic_text``).  Anything else (a value out of bounds, a lone
# surrogate) goes through ``validate``: the same TranslationError as ever.
# tests/unit/test_legacy_fast_path.py proves construct == model_validate.
_is_country = re.compile(r"[A-Z]{2}").fullmatch
#: ``model_fields_set`` of a validated Customer: every field but ``schema_version``.
_CUSTOMER_FIELDS_SET = frozenset(Customer.model_fields) - {"schema_version"}


def _read(
    header: Mapping[str, Any], children: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """The Customer's values, in field order, and whether they are proven valid."""
    custno = header["CUSTNO"]
    where = Where(DOMAIN, custno)
    sites = []
    proven = True
    # Hot path: inline reads; helpers only run to name what went wrong.
    for row in children:
        site_id = row["SITENO"].rstrip(" ")
        kind = _SITE_KIND.get(row["SITETYPE"])
        if row["CUSTNO"] != custno or kind is None or not site_id:
            raise _bad_site(row, custno, where)
        name = row["SITENAME"].rstrip(" ")
        line1 = row["ADDR1"].rstrip(" ")
        line2 = row["ADDR2"].rstrip(" ") or None
        city = row["CITY"].rstrip(" ")
        region = row["STATE"].rstrip(" ")
        postal_code = row["ZIPCODE"].rstrip(" ")
        country = row["COUNTRY"].rstrip(" ")
        sites.append({
            "site_id": site_id, "kind": kind, "name": name, "line1": line1, "line2": line2,
            "city": city, "region": region, "postal_code": postal_code, "country": country,
        })
        # Site: Key site_id, Text name/line1/line2/city, region <= 40, postal 1..12.
        if proven and not (
            len(site_id) <= 40 and is_key(site_id) and _is_country(country)
            and len(name) <= 200 and len(line1) <= 200 and len(city) <= 200
            and (line2 is None or len(line2) <= 200)
            and len(region) <= 40 and 0 < len(postal_code) <= 12
            and pydantic_text(name + line1 + city + region + postal_code + (line2 or ""))
        ):
            proven = False
    values = {
        "key": unpad_number(custno, where, "CUSTNO"),
        "schema_version": 2,
        "name": header["CUSTNAME"].rstrip(" "),
        "status": decode(_STATUS, header["CUSTSTAT"], where, "CUSTSTAT", "customer status"),
        "currency": currency(header["CURRCODE"], where),
        "credit_limit": from_cents(header["CRLIMIT"], where, "CRLIMIT"),
        "credit_hold": flag(header["CRHOLD"], where, "CRHOLD"),
        "terms": decode(_TERMS, header["TERMSCD"], where, "TERMSCD", "payment terms"),
        "tax_id": header["TAXID"].rstrip(" ") or None,
        "customer_group": header["CUSTGRP"].rstrip(" "),
        "region": header["REGION"].rstrip(" "),
        "contact_name": header["CONTNAME"].rstrip(" ") or None,
        "contact_email": header["CONTEMAIL"].rstrip(" ") or None,
        "contact_phone": header["CONTPHONE"].rstrip(" ") or None,
        "sites": sort_unique(sites, "site_id", where, "CUSTSITE.SITENO"),
    }
    if proven:
        # key: digits (unpad_number); status/terms: enum members (decode); credit
        # limit: a finite Decimal >= 0 (from_cents); credit hold: a bool (flag).
        v = values
        name, tax_id, email = v["name"], v["tax_id"], v["contact_email"]
        contact, phone = v["contact_name"], v["contact_phone"]
        group, region = v["customer_group"], v["region"]
        proven = (
            len(v["key"]) <= 40 and 0 < len(name) <= 120
            and v["currency"] in ISO_CURRENCIES
            and (tax_id is None or len(tax_id) <= 20)
            and len(group) <= 10 and len(region) <= 10
            and (contact is None or len(contact) <= 200)
            and (email is None or len(email) <= 200)
            and (phone is None or len(phone) <= 30)
            and pydantic_text(name + group + region + (tax_id or "") + (contact or "")
                              + (email or "") + (phone or ""))
        )
    return values, proven


def _build(values: dict[str, Any], proven: bool, where: Where) -> Customer:
    if proven:
        values["sites"] = tuple([construct(Site, site) for site in values["sites"]])
        return construct(Customer, values, set(_CUSTOMER_FIELDS_SET))
    del values["schema_version"]  # not given by the row: not in model_fields_set
    return validate(Customer, values, where, COLUMNS, SITE_COLUMNS)


@guard_columns(DOMAIN, KEY_COLUMNS, TABLE, CHILD_TABLE)
def to_canonical(header: Mapping[str, Any], children: Sequence[Mapping[str, Any]] = ()) -> Customer:
    """A CUSTMAST row and its CUSTSITE rows -> ``Customer``."""
    values, proven = _read(header, children)
    return _build(values, proven, Where(DOMAIN, header["CUSTNO"]))


def from_canonical(
    record: Customer, *, changed_by: str = DEFAULT_WRITER, changed_at: datetime | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``Customer`` -> (CUSTMAST row, CUSTSITE rows sorted by SITENO)."""
    where = Where(DOMAIN, record.key)
    custno = pad_number(record.key, KEY_WIDTH, where, "key")
    header = {
        "CUSTNO": custno,
        "CUSTNAME": char_required(record.name, NAME_WIDTH, where, "name"),
        "CUSTSTAT": STATUS_CODES[record.status],
        "CURRCODE": record.currency,
        "CRLIMIT": to_cents(record.credit_limit, where, "credit_limit"),
        "CRHOLD": "Y" if record.credit_hold else "N",
        "TERMSCD": TERMS_CODES[record.terms],
        "TAXID": char(record.tax_id, TAXID_WIDTH),
        "CUSTGRP": char(record.customer_group, GROUP_WIDTH),
        "REGION": char(record.region, GROUP_WIDTH),
        "CONTNAME": char(record.contact_name, NAME_WIDTH),
        "CONTEMAIL": char_keep_case(record.contact_email, EMAIL_WIDTH),
        "CONTPHONE": char(record.contact_phone, PHONE_WIDTH),
        **audit(changed_by, changed_at),
    }
    sites = [
        {
            "CUSTNO": custno,
            "SITENO": code(site.site_id, SITE_WIDTH, where, "sites.site_id"),
            "SITETYPE": SITE_CODES[site.kind],
            "SITENAME": char(site.name, NAME_WIDTH),
            "ADDR1": char(site.line1, NAME_WIDTH),
            "ADDR2": char(site.line2, NAME_WIDTH),
            "CITY": char(site.city, CITY_WIDTH),
            "STATE": char(site.region, STATE_WIDTH),
            "ZIPCODE": char_required(site.postal_code, ZIP_WIDTH, where, "sites.postal_code"),
            "COUNTRY": site.country,
        }
        for site in record.sites
    ]
    return header, sort_unique(sites, "SITENO", where, "sites.site_id")


def normalise(record: Customer) -> Customer:
    """What a trip through the legacy ERP makes of ``record`` (see ``LOSSES``)."""
    data = record.model_dump()
    data.update(
        name=fit_text(record.name, NAME_WIDTH),
        status=_FOLDED_STATUS[record.status],
        credit_limit=round_cents(record.credit_limit),
        tax_id=fit_optional_text(record.tax_id, TAXID_WIDTH),
        customer_group=fit_text(record.customer_group, GROUP_WIDTH),
        region=fit_text(record.region, GROUP_WIDTH),
        contact_name=fit_optional_text(record.contact_name, NAME_WIDTH),
        contact_email=fit_optional_text_keep_case(record.contact_email, EMAIL_WIDTH),
        contact_phone=fit_optional_text(record.contact_phone, PHONE_WIDTH),
        sites=[
            {
                **site.model_dump(),
                "name": fit_text(site.name, NAME_WIDTH),
                "line1": fit_text(site.line1, NAME_WIDTH),
                "line2": fit_optional_text(site.line2, NAME_WIDTH),
                "city": fit_text(site.city, CITY_WIDTH),
                "region": fit_text(site.region, STATE_WIDTH),
                "postal_code": fit_text(site.postal_code, ZIP_WIDTH),
            }
            for site in sorted(record.sites, key=lambda s: s.site_id)
        ],
    )
    return validate(Customer, data, Where(DOMAIN, record.key), {})

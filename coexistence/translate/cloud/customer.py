"""customer <-> cloud ``customers``.

Lossless both ways: every canonical status, term and site kind has exactly one
cloud twin, and the cloud's text limits are wider than canonical's.  Cloud
values canonical cannot hold (a 150-character name, a ``"ZAR"`` currency, a
negative credit limit) are refused with a ``TranslationError``.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from coexistence.canonical.models import Customer, CustomerStatus, PaymentTerms, Site, SiteKind
from coexistence.cloud import models as cloud
from coexistence.translate.cloud._common import (
    Names,
    build_canonical,
    construct,
    status,
    to_json_dict,
)

DOMAIN = "customer"
MODEL = cloud.CloudCustomer

_STATUS_OUT = {
    CustomerStatus.ACTIVE: cloud.CustomerStatus.ACTIVE,
    CustomerStatus.INACTIVE: cloud.CustomerStatus.INACTIVE,
    CustomerStatus.BLOCKED: cloud.CustomerStatus.BLOCKED,
    CustomerStatus.PROSPECT: cloud.CustomerStatus.PROSPECT,
}
_STATUS_IN = {v: k for k, v in _STATUS_OUT.items()}
_TERMS_OUT = {
    PaymentTerms.PREPAID: cloud.PaymentTermsCode.PREPAID,
    PaymentTerms.COD: cloud.PaymentTermsCode.COD,
    PaymentTerms.NET15: cloud.PaymentTermsCode.NET15,
    PaymentTerms.NET30: cloud.PaymentTermsCode.NET30,
    PaymentTerms.NET45: cloud.PaymentTermsCode.NET45,
    PaymentTerms.NET60: cloud.PaymentTermsCode.NET60,
    PaymentTerms.NET90: cloud.PaymentTermsCode.NET90,
}
_TERMS_IN = {v: k for k, v in _TERMS_OUT.items()}
_KIND_OUT = {
    SiteKind.BILL_TO: cloud.AddressType.BILL_TO,
    SiteKind.SHIP_TO: cloud.AddressType.SHIP_TO,
}
_KIND_IN = {v: k for k, v in _KIND_OUT.items()}

#: Canonical site field name -> cloud address JSON name.
ADDRESS_NAMES = {
    "site_id": "code", "kind": "addressType", "line1": "addressLine1",
    "line2": "addressLine2", "region": "state", "postal_code": "postalCode",
}
#: Canonical field name -> cloud JSON name, to name cloud paths in errors.
NAMES: Names = {
    "key": "number", "name": "displayName", "currency": "currencyCode",
    "credit_limit": "creditLimit", "credit_hold": "creditHold", "terms": "paymentTermsCode",
    "tax_id": "taxRegistrationNumber", "customer_group": "customerGroupCode",
    "region": "salesRegionCode", "contact_name": "contactName", "contact_email": "email",
    "contact_phone": "phoneNumber", "sites": ("addresses", ADDRESS_NAMES),
}


def to_canonical(doc: cloud.CloudCustomer) -> Customer:
    key = doc.number
    sites = []
    for i, a in enumerate(doc.addresses):
        sites.append({
            "site_id": a.code,
            "kind": status(DOMAIN, key, f"addresses.{i}.addressType", a.address_type, _KIND_IN),
            "name": a.name,
            "line1": a.address_line1,
            "line2": a.address_line2,
            "city": a.city,
            "region": a.state,
            "postal_code": a.postal_code,
            "country": a.country,
        })
    data: dict[str, Any] = {
        "key": key,
        "name": doc.display_name,
        "status": status(DOMAIN, key, "status", doc.status, _STATUS_IN),
        "currency": doc.currency_code,
        "credit_limit": doc.credit_limit,
        "credit_hold": doc.credit_hold,
        "terms": status(DOMAIN, key, "paymentTermsCode", doc.payment_terms_code, _TERMS_IN),
        "tax_id": doc.tax_registration_number,
        "customer_group": doc.customer_group_code,
        "region": doc.sales_region_code,
        "contact_name": doc.contact_name,
        "contact_email": doc.email,
        "contact_phone": doc.phone_number,
        "sites": sites,
    }
    return build_canonical(Customer, doc, data, NAMES)


def _address(site: Site) -> cloud.CloudCustomerAddress:
    # construct without validation: the site was validated as a canonical Site.
    return construct(cloud.CloudCustomerAddress, {
        "code": site.site_id,
        "address_type": _KIND_OUT[site.kind],
        "name": site.name,
        "address_line1": site.line1,
        "address_line2": site.line2,
        "city": site.city,
        "state": site.region,
        "postal_code": site.postal_code,
        "country": site.country,
    })


def from_canonical(
    record: Customer, *, cloud_id: UUID | None = None, source_version: int | None = None
) -> cloud.CloudCustomer:
    # construct without validation: ``record`` is a validated canonical Customer,
    # and every canonical constraint is at least as tight as the cloud one (the
    # round-trip property tests hold us to that), so re-validating only costs time.
    return construct(cloud.CloudCustomer, {
        "odata_etag": None,
        "id": cloud_id,
        "number": record.key,
        "last_modified_date_time": None,
        "coexist_source_version": source_version,
        "display_name": record.name,
        "status": _STATUS_OUT[record.status],
        "currency_code": record.currency,
        "credit_limit": record.credit_limit,
        "credit_hold": record.credit_hold,
        "payment_terms_code": _TERMS_OUT[record.terms],
        "tax_registration_number": record.tax_id,
        "customer_group_code": record.customer_group,
        "sales_region_code": record.region,
        "contact_name": record.contact_name,
        "email": record.contact_email,
        "phone_number": record.contact_phone,
        "addresses": [_address(s) for s in record.sites],
    })


__all__ = ["DOMAIN", "MODEL", "NAMES", "to_canonical", "from_canonical", "to_json_dict"]

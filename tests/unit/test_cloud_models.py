"""The cloud model accepts well-formed OData-style documents and rejects the rest."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from coexistence.cloud.models import (
    DOMAIN_MODELS,
    DOMAIN_RESOURCES,
    RESOURCE_MODELS,
    CloudCustomer,
    CloudItem,
    CloudSalesOrder,
)

CUSTOMER = {
    "number": "10042",
    "displayName": "Acme Supply",
    "status": "Active",
    "currencyCode": "USD",
    "creditLimit": "25000.00",
    "creditHold": False,
    "paymentTermsCode": "Net30",
    "customerGroupCode": "RETAIL",
    "salesRegionCode": "WEST",
    "addresses": [
        {
            "code": "SHIP1",
            "addressType": "ShipTo",
            "name": "Acme Dock 1",
            "addressLine1": "1 Harbor Way",
            "city": "Oakland",
            "state": "CA",
            "postalCode": "94607",
            "country": "US",
        }
    ],
}


def test_a_create_body_without_server_fields_is_valid():
    doc = CloudCustomer.model_validate_json(json.dumps(CUSTOMER))
    assert doc.id is None and doc.odata_etag is None and doc.last_modified_date_time is None
    assert doc.credit_limit == Decimal("25000.00")
    assert doc.addresses[0].address_line1 == "1 Harbor Way"


def test_a_read_document_carries_etag_id_and_a_utc_timestamp():
    body = dict(
        CUSTOMER,
        **{
            "@odata.etag": 'W/"3"',
            "id": "5b6f0e0e-8a51-4c1b-9d6a-1d2b3c4d5e6f",
            "lastModifiedDateTime": "2026-03-01T12:00:00+02:00",
            "coexistSourceVersion": 7,
        },
    )
    doc = CloudCustomer.model_validate(body)
    assert doc.last_modified_date_time == datetime(2026, 3, 1, 10, tzinfo=UTC)
    out = json.loads(doc.model_dump_json(by_alias=True))
    assert out["lastModifiedDateTime"] == "2026-03-01T10:00:00Z"
    assert out["@odata.etag"] == 'W/"3"'
    assert out["creditLimit"] == "25000.00"  # decimals are written as strings


def test_an_unknown_field_is_rejected_with_its_path():
    body = json.loads(json.dumps(CUSTOMER))
    body["addresses"][0]["planet"] = "Mars"
    with pytest.raises(ValidationError) as info:
        CloudCustomer.model_validate(body)
    (err,) = info.value.errors()
    assert err["loc"] == ("addresses", 0, "planet") and err["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("creditLimit", "NaN"),
        ("creditLimit", "lots"),
        ("creditHold", "yes"),
        ("status", "Sleeping"),
        ("currencyCode", "usd"),
        ("coexistSourceVersion", "7"),
        ("lastModifiedDateTime", "2026-03-01T12:00:00"),
    ],
)
def test_a_malformed_value_is_rejected(field, value):
    with pytest.raises(ValidationError) as info:
        CloudCustomer.model_validate_json(json.dumps(dict(CUSTOMER, **{field: value})))
    assert info.value.errors()[0]["loc"][0] == field


def test_a_sales_order_needs_a_timezone_on_its_order_time():
    with pytest.raises(ValidationError):
        CloudSalesOrder.model_validate(
            {
                "number": "SO1",
                "customerNumber": "10042",
                "status": "Open",
                "sourceChannel": "Edi",
                "currencyCode": "USD",
                "orderDateTime": "2026-01-01T00:00:00",
            }
        )


def test_every_domain_has_exactly_one_resource():
    assert set(DOMAIN_RESOURCES) == {
        "customer", "product", "price", "inventory", "order", "shipment", "invoice"
    }
    assert sorted(RESOURCE_MODELS) == sorted(DOMAIN_RESOURCES.values())
    assert DOMAIN_MODELS["product"] is CloudItem

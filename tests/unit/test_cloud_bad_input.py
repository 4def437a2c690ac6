"""A cloud document that cannot be translated raises TranslationError naming what and where.

Never a pydantic ValidationError: callers (adapters, the simulator's clients, the
exception store) only ever see ``TranslationError``, a business error.
"""

from __future__ import annotations

import copy
import json

import pytest

from bus.errors import is_business
from coexistence.errors import TranslationError
from coexistence.translate.cloud import canonical_from_json, parse_document
from tests.unit.test_cloud_tables import (
    CUSTOMER_JSON,
    INVENTORY_JSON,
    INVOICE_JSON,
    ORDER_JSON,
    PRICE_JSON,
    PRODUCT_JSON,
    SHIPMENT_JSON,
)

DOCS = {
    "customer": CUSTOMER_JSON, "product": PRODUCT_JSON, "price": PRICE_JSON,
    "inventory": INVENTORY_JSON, "order": ORDER_JSON, "shipment": SHIPMENT_JSON,
    "invoice": INVOICE_JSON,
}


def _with(domain: str, path: str, value):
    """A copy of the domain's good document with ``path`` (dotted) set or, for ..., removed."""
    doc = copy.deepcopy(DOCS[domain])
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = doc
    for p in parents:
        target = target[p]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return doc


BAD = [
    # (case, domain, field path, bad value; ... = missing)
    ("missing currency", "customer", "currencyCode", ...),
    ("missing currency", "invoice", "currencyCode", ...),
    ("unsupported currency", "product", "currencyCode", "ZAR"),
    ("malformed currency", "price", "currencyCode", "dollars"),
    ("negative quantity", "order", "salesOrderLines.0.quantity", "-3"),
    ("negative quantity", "inventory", "quantityOnHand", "-1"),
    ("zero quantity on a line", "shipment", "shipmentLines.0.quantity", "0"),
    ("fractional quantity", "invoice", "salesInvoiceLines.0.quantity", "2.5"),
    ("fractional break", "price", "priceBreaks.0.minimumQuantity", "0.5"),
    ("quantity out of range", "inventory", "quantityAllocated", "1E+999999"),
    ("negative amount", "product", "unitCost", "-0.01"),
    ("negative amount", "invoice", "totalTaxAmount", "-5"),
    ("non-finite amount", "customer", "creditLimit", "NaN"),
    ("not a number", "price", "priceBreaks.1.unitPrice", "cheap"),
    ("unknown status", "order", "status", "Frozen"),
    ("status without canonical twin", "invoice", "status", "Draft"),
    ("unknown enum code", "product", "baseUnitOfMeasureCode", "GAL"),
    ("unknown address type", "customer", "addresses.0.addressType", "Mailing"),
    ("bad date", "invoice", "invoiceDate", "2023-13-45"),
    ("bad date", "price", "startingDate", "20231345"),
    ("naive timestamp", "order", "orderDateTime", "2026-03-02T14:30:00"),
    ("bad timestamp", "shipment", "pickedDateTime", "yesterday"),
    ("wrong type", "customer", "creditHold", "yes"),
    ("wrong type", "order", "salesOrderLines.0.sequence", "1"),
    ("wrong type", "shipment", "shipmentLines", {"sequence": 1}),
    ("wrong type", "product", "displayName", 42),
    ("unknown field", "order", "salesOrderLines.0.discount", "10"),
    ("unknown field", "customer", "favouriteColour", "blue"),
    ("text canonical cannot hold", "customer", "displayName", "x" * 121),
    ("text canonical cannot hold", "customer", "addresses.0.state", "y" * 41),
    ("key canonical cannot hold", "product", "number", "WID 01000"),
    ("non-positive line number", "invoice", "salesInvoiceLines.0.sequence", 0),
    ("no lines", "order", "salesOrderLines", []),
    ("breaks out of order", "price", "priceBreaks",
     [{"minimumQuantity": "100", "unitPrice": "9"}, {"minimumQuantity": "1", "unitPrice": "11"}]),
    ("derived field contradicts", "inventory", "availableToPromise", "3"),
    ("derived field contradicts", "shipment", "status", "Delivered"),
]


@pytest.mark.parametrize(
    ("case", "domain", "path", "value"), BAD, ids=[f"{b[1]}: {b[0]}: {b[2]}" for b in BAD]
)
def test_a_bad_cloud_value_names_domain_key_field_and_value(case, domain, path, value):
    doc = _with(domain, path, value)
    for data in (doc, json.dumps(doc).encode()):
        with pytest.raises(TranslationError) as info:
            canonical_from_json(domain, data)
        err = info.value
        assert (err.domain, err.key) == (domain, "WID 01000" if path == "number" else doc["number"])
        assert err.field == path, err
        assert err.value == (None if value is ... else value)
        assert is_business(err)


def test_malformed_json_is_a_translation_error_not_a_traceback():
    with pytest.raises(TranslationError) as info:
        canonical_from_json("customer", b'{"number": "10042", "displayName": ')
    assert info.value.domain == "customer" and "json" in info.value.reason.lower()


def test_a_document_that_is_not_an_object_is_refused():
    with pytest.raises(TranslationError) as info:
        parse_document("order", b"[1, 2, 3]")
    assert info.value.field == "<root>"


def test_an_unknown_domain_is_refused_by_name():
    with pytest.raises(TranslationError) as info:
        parse_document("warranty", {})
    assert (info.value.field, info.value.value) == ("domain", "warranty")


def test_a_document_with_several_defects_reports_the_first_and_counts_the_rest():
    doc = _with("customer", "currencyCode", ...)
    doc["creditHold"] = "maybe"
    with pytest.raises(TranslationError) as info:
        canonical_from_json("customer", doc)
    assert "1 more error" in info.value.reason


@pytest.mark.parametrize(
    ("domain", "path", "value", "reason"),
    [
        ("invoice", "status", "Draft", "no canonical twin"),
        ("order", "salesOrderLines.0.quantity", "2.5", "fractional quantity"),
        ("inventory", "quantityOnHand", "1E+31", "out of range"),
        ("inventory", "availableToPromise", "3", "contradicts"),
        ("shipment", "status", "Planned", "contradicts"),
    ],
)
def test_a_refusal_by_the_translator_says_why(domain, path, value, reason):
    with pytest.raises(TranslationError) as info:
        canonical_from_json(domain, _with(domain, path, value))
    assert reason in info.value.reason
    assert reason in str(info.value) and repr(value) in str(info.value)

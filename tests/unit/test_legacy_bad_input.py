"""Bad legacy rows and untranslatable records raise TranslationError naming what to fix."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import is_business
from coexistence.errors import TranslationError
from coexistence.legacy.models import LEGACY_TABLES
from coexistence.translate.legacy import LEGACY_TRANSLATORS
from tests.unit.test_legacy_translators import CUSTOMER, ORDER, PRODUCT, SAMPLES


def translate(domain: str, header: dict[str, Any], children: list[dict[str, Any]]):
    return LEGACY_TRANSLATORS[domain].to_canonical(header, children)


def with_header(domain: str, **changes: Any) -> tuple[dict, list]:
    header, children, _ = SAMPLES[domain]
    return {**header, **changes}, children


def with_child(domain: str, index: int = 0, **changes: Any) -> tuple[dict, list]:
    header, children, _ = SAMPLES[domain]
    children = [dict(c) for c in children]
    children[index].update(changes)
    return header, children


# (case id, domain, (header, children), expected key, expected field, expected value)
BAD_ROWS = [
    ("impossible date", "invoice", with_header("invoice", INVDATE=20231345),
     "0000700001", "INVDATE", 20231345),
    ("zero mandatory date", "price", with_header("price", EFFDATE=0),
     "0000007001", "EFFDATE", 0),
    ("zero end date that is not 99999999", "price", with_header("price", EXPDATE=0),
     "0000007001", "EXPDATE", 0),
    ("impossible time", "order", with_header("order", ORDTIME=256000),
     "0000500123", "ORDTIME", 256000),
    ("milestone time without date", "shipment", with_header("shipment", DLVTIME=120000),
     "0000900001", "DLVTIME", 120000),
    ("negative quantity on hand", "inventory", with_header("inventory", ONHAND=-5),
     "DAL1|WID-01000", "ONHAND", -5),
    ("negative line quantity", "order", with_child("order", 0, ORDQTY=-1),
     "0000500123", "ORDLIN.ORDQTY", -1),
    ("zero line quantity", "invoice", with_child("invoice", 0, INVQTY=0),
     "0000700001", "INVLIN.INVQTY", 0),
    ("negative money", "customer", with_header("customer", CRLIMIT=-100),
     "0000010042", "CRLIMIT", -100),
    ("negative price", "product", with_header("product", LISTPRC=-1),
     "WID-01000", "LISTPRC", -1),
    ("unknown customer status", "customer", with_header("customer", CUSTSTAT="Z"),
     "0000010042", "CUSTSTAT", "Z"),
    ("unknown order status", "order", with_header("order", ORDSTAT="Q"),
     "0000500123", "ORDSTAT", "Q"),
    ("unknown item status", "product", with_header("product", ITEMSTAT=" "),
     "WID-01000", "ITEMSTAT", " "),
    ("unknown invoice status", "invoice", with_header("invoice", INVSTAT="A"),
     "0000700001", "INVSTAT", "A"),
    ("unknown order source", "order", with_header("order", ORDSRC="F"),
     "0000500123", "ORDSRC", "F"),
    ("unknown site type", "customer", with_child("customer", 0, SITETYPE="X"),
     "0000010042", "CUSTSITE.SITETYPE", "X"),
    ("unknown unit of measure", "product", with_header("product", UOM="GR"),
     "WID-01000", "UOM", "GR"),
    ("unknown terms code", "customer", with_header("customer", TERMSCD="N99"),
     "0000010042", "TERMSCD", "N99"),
    ("bad credit-hold flag", "customer", with_header("customer", CRHOLD="1"),
     "0000010042", "CRHOLD", "1"),
    ("missing currency", "customer", with_header("customer", CURRCODE="   "),
     "0000010042", "CURRCODE", "   "),
    ("missing currency on a document", "invoice", with_header("invoice", CURRCODE=""),
     "0000700001", "CURRCODE", ""),
    ("unknown currency", "order", with_header("order", CURRCODE="XXX"),
     "0000500123", "CURRCODE", "XXX"),
    ("blank name", "customer", with_header("customer", CUSTNAME=" " * 30),
     "0000010042", "CUSTNAME", ""),
    ("key that is not a number", "customer", (with_header("customer", CUSTNO="00000A0042")[0], []),
     "00000A0042", "CUSTNO", "00000A0042"),
    ("reference that is not a number", "invoice", with_header("invoice", CUSTNO="          "),
     "0000700001", "CUSTNO", "          "),
    ("blank SKU", "inventory", with_header("inventory", ITEMNO=" " * 20),
     "DAL1|", "ITEMNO", " " * 20),
    ("text column holding a number", "customer", with_header("customer", CUSTNAME=5),
     "0000010042", "CUSTNAME", 5),
    ("date column holding text", "invoice", with_header("invoice", DUEDATE="20240401"),
     "0000700001", "DUEDATE", "20240401"),
    ("money column holding a float", "customer", with_header("customer", CRLIMIT=25.5),
     "0000010042", "CRLIMIT", 25.5),
    ("line of another order", "order", with_child("order", 1, ORDNO="0000500124"),
     "0000500123", "ORDLIN.ORDNO", "0000500124"),
    ("repeated line number", "order", with_child("order", 0, LINENO=1),
     "0000500123", "ORDLIN.LINENO", 1),
    ("price break after an unused slot", "price", with_header("price", BRKQTY5=5000,
                                                              BRKPRC5=90_000),
     "0000007001", "BRKQTY5", 5000),
    ("price in an unused break slot", "price", with_header("price", BRKPRC4=1),
     "0000007001", "BRKPRC4", 1),
    ("breaks not ascending", "price", with_header("price", BRKQTY2=1),
     "0000007001", "BRKQTY", None),
    ("no price break at all", "price", with_header("price", BRKQTY1=0, BRKPRC1=0, BRKQTY2=0,
                                                   BRKPRC2=0, BRKQTY3=0, BRKPRC3=0),
     "0000007001", "BRKQTY", None),
    ("order without lines", "order", (SAMPLES["order"][0], []),
     "0000500123", "ORDLIN", None),
]


@pytest.mark.parametrize(
    ("domain", "rows", "key", "field", "value"),
    [case[1:] for case in BAD_ROWS],
    ids=[case[0] for case in BAD_ROWS],
)
def test_a_bad_legacy_row_raises_a_translation_error_naming_key_field_and_value(
    domain, rows, key, field, value
):
    with pytest.raises(TranslationError) as err:
        translate(domain, *rows)
    exc = err.value
    assert exc.domain == domain
    assert exc.key is not None and exc.key.rstrip() == key.rstrip()
    assert exc.field == field or exc.field.startswith(field + ".")
    if value is not None:
        assert exc.value == value
    assert field.split(".")[-1] in str(exc)
    assert is_business(exc)


def test_a_missing_column_is_named():
    header, children, _ = SAMPLES["product"]
    row = {k: v for k, v in header.items() if k != "WEIGHTG"}
    with pytest.raises(TranslationError) as err:
        translate("product", row, children)
    assert (err.value.key, err.value.field) == ("WID-01000", "WEIGHTG")


def test_a_missing_child_column_is_named():
    header, children = with_child("order", 0)
    del children[0]["UNITPRC"]
    with pytest.raises(TranslationError) as err:
        translate("order", header, children)
    assert err.value.field == "UNITPRC"


def test_something_that_is_not_a_row_is_refused_without_a_traceback_of_internals():
    with pytest.raises(TranslationError) as err:
        translate("inventory", None, [])  # type: ignore[arg-type]
    assert err.value.field == "<row>"


@pytest.mark.parametrize("children", [None, 5, [None], ["row"]])
def test_child_rows_that_are_not_rows_are_refused(children):
    header, _, _ = SAMPLES["order"]
    with pytest.raises(TranslationError) as err:
        translate("order", header, children)
    assert err.value.key == "0000500123"


def test_child_rows_for_a_single_table_domain_are_refused():
    header, _, _ = SAMPLES["product"]
    with pytest.raises(TranslationError):
        translate("product", header, [header])


@pytest.mark.parametrize("domain", list(SAMPLES))
def test_no_bad_column_value_raises_anything_but_a_translation_error(domain):
    header, children, _ = SAMPLES[domain]
    rows = [("", header, lambda row: (row, children))]
    rows += [(f"child {i}.", child, lambda row, i=i: (header, [
        row if j == i else c for j, c in enumerate(children)])) for i, child in enumerate(children)]
    for where, row, assemble in rows:
        for column in row:
            for bad in (None, -1, "", "?" * 500, 10**30, 1.5, True):
                try:
                    translate(domain, *assemble({**row, column: bad}))
                except TranslationError:
                    pass
                except Exception as exc:  # pragma: no cover - the failure being tested
                    pytest.fail(f"{where}{column}={bad!r} raised {exc!r}")


# ------------------------------------------------------------------ canonical -> legacy


BAD_RECORDS = [
    ("customer number with letters", "customer", CUSTOMER.model_copy(update={"key": "C-1"}),
     "key", "C-1"),
    ("customer number with a leading zero", "customer",
     CUSTOMER.model_copy(update={"key": "042"}), "key", "042"),
    ("customer number longer than ten digits", "customer",
     CUSTOMER.model_copy(update={"key": "12345678901"}), "key", "12345678901"),
    ("lower-case SKU", "product", PRODUCT.model_copy(update={"key": "wid-01000"}),
     "key", "wid-01000"),
    ("SKU longer than twenty characters", "product",
     PRODUCT.model_copy(update={"key": "WIDGET-0000000000001000"}), "key",
     "WIDGET-0000000000001000"),
    ("site id longer than eight characters", "customer", CUSTOMER.model_copy(update={
        "sites": (CUSTOMER.sites[0].model_copy(update={"site_id": "BILLTO-0001"}),)}),
     "sites.site_id", "BILLTO-0001"),
    ("two sites with one id", "customer", CUSTOMER.model_copy(update={
        "sites": (CUSTOMER.sites[0], CUSTOMER.sites[0])}), "sites.site_id", "B001"),
    ("two lines with one number", "order", ORDER.model_copy(update={
        "lines": (ORDER.lines[0], ORDER.lines[0])}), "lines.line_no", 1),
    ("quantity beyond NUMERIC(9)", "order", ORDER.model_copy(update={
        "lines": (ORDER.lines[0].model_copy(update={"quantity": 10**9}),)}),
     "lines.quantity", 10**9),
    ("name that would be stored blank", "customer",
     CUSTOMER.model_copy(update={"name": "   "}), "name", "   "),
    ("description that would be stored blank", "product",
     PRODUCT.model_copy(update={"description": " "}), "description", " "),
    ("amount beyond NUMERIC(15)", "customer",
     CUSTOMER.model_copy(update={"credit_limit": Decimal("1E+20")}), "credit_limit",
     Decimal("1E+20")),
]


@pytest.mark.parametrize(
    ("domain", "record", "field", "value"),
    [case[1:] for case in BAD_RECORDS],
    ids=[case[0] for case in BAD_RECORDS],
)
def test_a_record_the_legacy_erp_cannot_hold_exactly_is_refused(domain, record, field, value):
    with pytest.raises(TranslationError) as err:
        LEGACY_TRANSLATORS[domain].from_canonical(record)
    assert (err.value.domain, err.value.key, err.value.field, err.value.value) == (
        domain, record.key, field, value)


def test_an_inventory_key_that_does_not_match_its_warehouse_and_sku_is_refused():
    from tests.unit.test_legacy_translators import INVENTORY

    wrong = INVENTORY.model_copy(update={"key": "FTW2:WID-01000"})
    with pytest.raises(TranslationError) as err:
        LEGACY_TRANSLATORS["inventory"].from_canonical(wrong)
    assert err.value.field == "key"


@pytest.mark.parametrize(
    ("domain", "legacy_key"),
    [("customer", "00000A0042"), ("customer", ""), ("inventory", "DAL1WID-01000"),
     ("inventory", "|WID-01000"), ("product", "   ")],
)
def test_an_unreadable_legacy_key_is_refused(domain, legacy_key):
    with pytest.raises(TranslationError):
        LEGACY_TRANSLATORS[domain].canonical_key(legacy_key)


# ------------------------------------------------------------------ fuzzing


def _column_values(column) -> st.SearchStrategy:
    width = getattr(column.type, "length", None)
    if width:
        # Mostly plausible text, sometimes the wrong type.
        plausible = st.one_of(st.sampled_from(["A", "I", "O", "USD", "N30", "Y", "0000000001"]),
                              st.text("AZaz09 -", max_size=width + 2))
        return st.one_of(plausible, plausible, st.integers(), st.none())
    plausible = st.one_of(st.integers(-10, 10**6), st.sampled_from([20240229, 99999999, 235959]))
    return st.one_of(plausible, plausible, st.text(max_size=3), st.none(), st.floats())


def _rows(table) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({c.name: _column_values(c) for c in table.__table__.columns})


@pytest.mark.parametrize("domain", list(LEGACY_TABLES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_garbage_row_either_translates_or_raises_a_translation_error(domain, data):
    header_table, child_table = LEGACY_TABLES[domain]
    header = data.draw(_rows(header_table))
    children = data.draw(st.lists(_rows(child_table), max_size=2)) if child_table else []
    tr = LEGACY_TRANSLATORS[domain]
    try:
        record = tr.to_canonical(header, children)
    except TranslationError:
        return
    with contextlib.suppress(TranslationError):
        tr.from_canonical(record)

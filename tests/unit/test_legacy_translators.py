"""Table tests of the legacy translators: known legacy rows -> expected canonical records."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from coexistence.canonical.models import (
    ContractPrice,
    Customer,
    CustomerStatus,
    InventoryBalance,
    Invoice,
    InvoiceStatus,
    Milestone,
    Order,
    OrderChannel,
    OrderStatus,
    PaymentTerms,
    Product,
    ProductStatus,
    Shipment,
    SiteKind,
    UnitOfMeasure,
)
from coexistence.errors import TranslationError
from coexistence.legacy.models import LEGACY_TABLES
from coexistence.translate import common
from coexistence.translate.legacy import LEGACY_TRANSLATORS, customer, invoice, order, price


def legacy_row(domain: str, child: bool = False, **values: Any) -> dict[str, Any]:
    """A row as the database returns it: CHAR values space-padded to their width."""
    table = LEGACY_TABLES[domain][1 if child else 0]
    row: dict[str, Any] = {}
    for column in table.__table__.columns:
        width = getattr(column.type, "length", None)
        value = values.pop(column.name, "" if width else 0)
        row[column.name] = value.ljust(width) if width else value
    assert not values, f"not columns of {table.__name__}: {sorted(values)}"
    return row


CUSTOMER_ROW = legacy_row(
    "customer", CUSTNO="0000010042", CUSTNAME="ACME INDUSTRIAL SUPPLY", CUSTSTAT="A",
    CURRCODE="USD", CRLIMIT=2_500_000, CRHOLD="N", TERMSCD="N30", TAXID="12-3456789",
    CUSTGRP="WHOLESALE", REGION="SOUTH", CONTNAME="JANE DOE",
    CONTEMAIL="Jane.Doe@acme.example", CONTPHONE="+1 214 555 0100",
    LCHGUSER="MKELLER", LCHGDATE=20240115, LCHGTIME=134501,
)
CUSTOMER_SITES = [
    legacy_row("customer", True, CUSTNO="0000010042", SITENO="S001", SITETYPE="S",
               SITENAME="ACME DALLAS DC", ADDR1="4400 LOGISTICS PKWY", CITY="DALLAS",
               STATE="TX", ZIPCODE="75241", COUNTRY="US"),
    legacy_row("customer", True, CUSTNO="0000010042", SITENO="B001", SITETYPE="B",
               SITENAME="ACME ACCOUNTS PAYABLE", ADDR1="PO BOX 1200", ADDR2="SUITE 5",
               CITY="PLANO", STATE="TX", ZIPCODE="75023", COUNTRY="US"),
]
CUSTOMER = Customer(
    key="10042", name="ACME INDUSTRIAL SUPPLY", status=CustomerStatus.ACTIVE, currency="USD",
    credit_limit=Decimal("25000.00"), credit_hold=False, terms=PaymentTerms.NET30,
    tax_id="12-3456789", customer_group="WHOLESALE", region="SOUTH", contact_name="JANE DOE",
    contact_email="Jane.Doe@acme.example", contact_phone="+1 214 555 0100",
    sites=(
        {"site_id": "B001", "kind": SiteKind.BILL_TO, "name": "ACME ACCOUNTS PAYABLE",
         "line1": "PO BOX 1200", "line2": "SUITE 5", "city": "PLANO", "region": "TX",
         "postal_code": "75023", "country": "US"},
        {"site_id": "S001", "kind": SiteKind.SHIP_TO, "name": "ACME DALLAS DC",
         "line1": "4400 LOGISTICS PKWY", "line2": None, "city": "DALLAS", "region": "TX",
         "postal_code": "75241", "country": "US"},
    ),
)

PRODUCT_ROW = legacy_row(
    "product", ITEMNO="WID-01000", ITEMDESC="WIDGET 10MM STEEL", UOM="EA", WEIGHTG=1250,
    ITEMSTAT="D", CURRCODE="EUR", LISTPRC=129_900, STDCOST=80_125,
)
PRODUCT = Product(
    key="WID-01000", description="WIDGET 10MM STEEL", unit=UnitOfMeasure.EACH,
    weight_kg=Decimal("1.250"), status=ProductStatus.DISCONTINUED, currency="EUR",
    list_price=Decimal("12.99"), standard_cost=Decimal("8.0125"),
)

PRICE_ROW = legacy_row(
    "price", CONTNO="0000007001", CUSTNO="0000010042", ITEMNO="WID-01000", CURRCODE="USD",
    EFFDATE=20240101, EXPDATE=99999999, BRKQTY1=1, BRKPRC1=120_000, BRKQTY2=100,
    BRKPRC2=110_000, BRKQTY3=1000, BRKPRC3=99_500,
)
PRICE = ContractPrice(
    key="7001", customer_key="10042", sku="WID-01000", currency="USD",
    breaks=({"min_quantity": 1, "unit_price": Decimal("12")},
            {"min_quantity": 100, "unit_price": Decimal("11")},
            {"min_quantity": 1000, "unit_price": Decimal("9.95")}),
    valid_from=date(2024, 1, 1), valid_to=None,
)

INVENTORY_ROW = legacy_row("inventory", WHSE="DAL1", ITEMNO="WID-01000", ONHAND=500, ALLOC=620)
INVENTORY = InventoryBalance(key="DAL1:WID-01000", warehouse="DAL1", sku="WID-01000",
                             on_hand=500, allocated=620)

ORDER_ROW = legacy_row(
    "order", ORDNO="0000500123", CUSTNO="0000010042", SHIPTO="S001", ORDSTAT="P", ORDSRC="E",
    CUSTPO="PO-88812", CURRCODE="USD", ORDDATE=20240301, ORDTIME=91530, REQDATE=0,
)
ORDER_LINES = [
    legacy_row("order", True, ORDNO="0000500123", LINENO=2, ITEMNO="BOLT-00007", ORDQTY=40,
               UNITPRC=3_333),
    legacy_row("order", True, ORDNO="0000500123", LINENO=1, ITEMNO="WID-01000", ORDQTY=10,
               UNITPRC=120_000),
]
ORDER = Order(
    key="500123", customer_key="10042", ship_to_site_id="S001",
    status=OrderStatus.PARTIALLY_SHIPPED, channel=OrderChannel.EDI, customer_po="PO-88812",
    currency="USD", ordered_at=datetime(2024, 3, 1, 9, 15, 30, tzinfo=UTC), requested_date=None,
    lines=({"line_no": 1, "sku": "WID-01000", "quantity": 10, "unit_price": Decimal("12")},
           {"line_no": 2, "sku": "BOLT-00007", "quantity": 40, "unit_price": Decimal("0.3333")}),
)

SHIPMENT_ROW = legacy_row(
    "shipment", SHPNO="0000900001", ORDNO="0000500123", WHSE="DAL1", CARRIER="UPS",
    TRACKNO="1Z999AA10123456784", PICKDATE=20240302, PICKTIME=80000, PACKDATE=20240302,
    PACKTIME=93000, SHIPDATE=20240302, SHIPTIME=170500,
)
SHIPMENT_LINES = [
    legacy_row("shipment", True, SHPNO="0000900001", LINENO=1, ORDLINE=1, ITEMNO="WID-01000",
               SHPQTY=10),
]
SHIPMENT = Shipment(
    key="900001", order_key="500123", warehouse="DAL1", carrier="UPS",
    tracking_number="1Z999AA10123456784",
    milestones=({"milestone": Milestone.PICKED, "at": datetime(2024, 3, 2, 8, tzinfo=UTC)},
                {"milestone": Milestone.PACKED, "at": datetime(2024, 3, 2, 9, 30, tzinfo=UTC)},
                {"milestone": Milestone.SHIPPED,
                 "at": datetime(2024, 3, 2, 17, 5, tzinfo=UTC)}),
    lines=({"line_no": 1, "order_line_no": 1, "sku": "WID-01000", "quantity": 10},),
)

INVOICE_ROW = legacy_row(
    "invoice", INVNO="0000700001", ORDNO="0000500123", CUSTNO="0000010042", INVSTAT="O",
    CURRCODE="USD", INVDATE=20240302, DUEDATE=20240401, TAXAMT=990, AMTPAID=5000,
)
INVOICE_LINES = [
    legacy_row("invoice", True, INVNO="0000700001", LINENO=1, ITEMNO="WID-01000",
               ITEMDESC="WIDGET 10MM STEEL", INVQTY=10, UNITPRC=120_000),
]
INVOICE = Invoice(
    key="700001", order_key="500123", customer_key="10042",
    status=InvoiceStatus.PARTIALLY_PAID, currency="USD", issued_on=date(2024, 3, 2),
    due_on=date(2024, 4, 1), tax_amount=Decimal("9.90"), amount_paid=Decimal("50.00"),
    lines=({"line_no": 1, "sku": "WID-01000", "description": "WIDGET 10MM STEEL",
            "quantity": 10, "unit_price": Decimal("12")},),
)

#: domain -> (header row, child rows, expected canonical record)
SAMPLES: dict[str, tuple[dict[str, Any], list[dict[str, Any]], Any]] = {
    "customer": (CUSTOMER_ROW, CUSTOMER_SITES, CUSTOMER),
    "product": (PRODUCT_ROW, [], PRODUCT),
    "price": (PRICE_ROW, [], PRICE),
    "inventory": (INVENTORY_ROW, [], INVENTORY),
    "order": (ORDER_ROW, ORDER_LINES, ORDER),
    "shipment": (SHIPMENT_ROW, SHIPMENT_LINES, SHIPMENT),
    "invoice": (INVOICE_ROW, INVOICE_LINES, INVOICE),
}


@pytest.mark.parametrize("domain", SAMPLES)
def test_a_known_legacy_row_translates_to_the_expected_canonical_record(domain):
    header, children, expected = SAMPLES[domain]
    assert LEGACY_TRANSLATORS[domain].to_canonical(header, children) == expected


@pytest.mark.parametrize("domain", SAMPLES)
def test_the_expected_canonical_record_writes_back_the_same_rows_but_the_audit(domain):
    header, children, expected = SAMPLES[domain]
    back_header, back_children = LEGACY_TRANSLATORS[domain].from_canonical(
        expected, changed_by=header["LCHGUSER"].rstrip(),
        changed_at=datetime.strptime(f"{header['LCHGDATE']}{header['LCHGTIME']:06d}",
                                     "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        if header["LCHGDATE"] else None,
    )
    assert back_header == header
    key = {"customer": "SITENO"}.get(domain, "LINENO")
    assert back_children == sorted(children, key=lambda row: row[key])


@pytest.mark.parametrize(
    ("code", "status"),
    [("A", CustomerStatus.ACTIVE), ("I", CustomerStatus.INACTIVE), ("H", CustomerStatus.BLOCKED)],
)
def test_customer_status_letters_map_to_canonical_statuses(code, status):
    row = {**CUSTOMER_ROW, "CUSTSTAT": code}
    assert customer.to_canonical(row).status is status


def test_a_prospect_is_kept_inactive_by_the_legacy_erp():
    prospect = CUSTOMER.model_copy(update={"status": CustomerStatus.PROSPECT})
    header, _ = customer.from_canonical(prospect)
    assert header["CUSTSTAT"] == "I"
    assert customer.normalise(prospect).status is CustomerStatus.INACTIVE
    assert customer.LOSS_PROSPECT in customer.LOSSES


def test_a_long_mixed_case_name_is_upper_cased_and_truncated_to_thirty_characters():
    long_name = CUSTOMER.model_copy(
        update={"name": "Acme Industrial Supply Company of North Texas"}
    )
    header, _ = customer.from_canonical(long_name)
    assert header["CUSTNAME"] == "ACME INDUSTRIAL SUPPLY COMPANY"
    assert customer.normalise(long_name).name == "ACME INDUSTRIAL SUPPLY COMPANY"


def test_amounts_round_half_up_to_cents_and_prices_to_ten_thousandths():
    rounded = CUSTOMER.model_copy(update={"credit_limit": Decimal("10.005")})
    assert customer.from_canonical(rounded)[0]["CRLIMIT"] == 1001
    assert customer.normalise(rounded).credit_limit == Decimal("10.01")
    cheap = ORDER.model_copy(update={"lines": (
        ORDER.lines[0].model_copy(update={"unit_price": Decimal("0.00005")}),)})
    assert order.from_canonical(cheap)[1][0]["UNITPRC"] == 1


def test_a_draft_order_enters_the_legacy_erp_on_hold():
    draft = ORDER.model_copy(update={"status": OrderStatus.DRAFT})
    assert order.from_canonical(draft)[0]["ORDSTAT"] == "H"
    assert order.normalise(draft).status is OrderStatus.ON_HOLD


def test_order_time_is_stored_in_utc_to_the_second():
    local = ORDER.model_copy(update={"ordered_at": datetime(
        2024, 3, 1, 4, 15, 30, 999_999, tzinfo=timezone(timedelta(hours=-5)))})
    header, _ = order.from_canonical(local)
    assert (header["ORDDATE"], header["ORDTIME"]) == (20240301, 91530)
    assert order.normalise(local).ordered_at == datetime(2024, 3, 1, 9, 15, 30, tzinfo=UTC)


def test_an_open_ended_contract_price_is_stored_as_99999999_and_unused_breaks_as_zero():
    header, _ = price.from_canonical(PRICE)
    assert header["EXPDATE"] == 99_999_999
    assert (header["BRKQTY4"], header["BRKPRC4"], header["BRKQTY5"], header["BRKPRC5"]) == (
        0, 0, 0, 0)
    dated = PRICE.model_copy(update={"valid_to": date(2024, 12, 31)})
    assert price.from_canonical(dated)[0]["EXPDATE"] == 20241231


def test_more_price_breaks_than_the_legacy_erp_holds_is_refused_not_truncated():
    six = PRICE.model_copy(update={"breaks": tuple(
        {"min_quantity": q, "unit_price": Decimal(1)} for q in (1, 2, 3, 4, 5, 6))})
    with pytest.raises(TranslationError) as err:
        price.from_canonical(six)
    assert (err.value.domain, err.value.key, err.value.field, err.value.value) == (
        "price", "7001", "breaks", 6)


@pytest.mark.parametrize(
    ("status", "paid", "code", "back"),
    [
        (InvoiceStatus.OPEN, "0", "O", InvoiceStatus.OPEN),
        (InvoiceStatus.OPEN, "0.01", "O", InvoiceStatus.PARTIALLY_PAID),
        (InvoiceStatus.PARTIALLY_PAID, "0", "O", InvoiceStatus.OPEN),
        (InvoiceStatus.PARTIALLY_PAID, "0.004", "O", InvoiceStatus.OPEN),
        (InvoiceStatus.PAID, "118.90", "P", InvoiceStatus.PAID),
        (InvoiceStatus.VOID, "0", "V", InvoiceStatus.VOID),
    ],
)
def test_invoice_partial_payment_is_derived_from_the_amount_paid(status, paid, code, back):
    record = INVOICE.model_copy(update={"status": status, "amount_paid": Decimal(paid)})
    header, lines = invoice.from_canonical(record)
    assert header["INVSTAT"] == code
    assert invoice.to_canonical(header, lines).status is back
    assert invoice.normalise(record).status is back


@pytest.mark.parametrize(
    ("domain", "canonical_key", "legacy_key"),
    [
        ("customer", "10042", "0000010042"),
        ("product", "WID-01000", "WID-01000"),
        ("price", "7001", "0000007001"),
        ("inventory", "DAL1:WID-01000", "DAL1|WID-01000"),
        ("order", "500123", "0000500123"),
        ("shipment", "900001", "0000900001"),
        ("invoice", "9999999999", "9999999999"),
    ],
)
def test_keys_map_one_to_one_between_canonical_and_legacy(domain, canonical_key, legacy_key):
    tr = LEGACY_TRANSLATORS[domain]
    assert tr.legacy_key(canonical_key) == legacy_key
    assert tr.canonical_key(legacy_key) == canonical_key


def test_inventory_key_columns_are_padded_like_the_stored_row():
    tr = LEGACY_TRANSLATORS["inventory"]
    assert tr.key_columns("DAL1|WID-01000") == {
        "WHSE": INVENTORY_ROW["WHSE"], "ITEMNO": INVENTORY_ROW["ITEMNO"]}


def test_any_record_can_be_normalised_through_the_package_without_naming_its_domain():
    from coexistence.translate.legacy import normalise

    prospect = CUSTOMER.model_copy(update={"status": CustomerStatus.PROSPECT})
    assert normalise(prospect) == customer.normalise(prospect)
    assert normalise(prospect).status is CustomerStatus.INACTIVE
    assert normalise(INVENTORY) == INVENTORY


# Every named loss, shown on one record: (domain, record, field, value after the trip).
LOSS_EXAMPLES: dict[str, tuple[str, Any, str, Any]] = {
    common.LOSS_UPPER_CASE: (
        "product", PRODUCT.model_copy(update={"description": "Widget 10mm"}),
        "description", "WIDGET 10MM"),
    common.LOSS_TRUNCATION: (
        "shipment", SHIPMENT.model_copy(update={"tracking_number": "9" * 34}),
        "tracking_number", "9" * 30),
    common.LOSS_TRAILING_SPACES: (
        "order", ORDER.model_copy(update={"customer_po": "PO 1  "}), "customer_po", "PO 1"),
    common.LOSS_EMPTY_IS_NONE: (
        "customer", CUSTOMER.model_copy(update={"tax_id": ""}), "tax_id", None),
    common.LOSS_SUBSECOND: (
        "order", ORDER.model_copy(update={"ordered_at": ORDER.ordered_at.replace(microsecond=5)}),
        "ordered_at", ORDER.ordered_at),
    common.LOSS_CENTS: (
        "invoice", INVOICE.model_copy(update={"tax_amount": Decimal("1.005")}),
        "tax_amount", Decimal("1.01")),
    common.LOSS_PRICE_UNITS: (
        "product", PRODUCT.model_copy(update={"list_price": Decimal("1.00005")}),
        "list_price", Decimal("1.0001")),
    common.LOSS_GRAMS: (
        "product", PRODUCT.model_copy(update={"weight_kg": Decimal("0.0005")}),
        "weight_kg", Decimal("0.001")),
    common.LOSS_LINE_ORDER: (
        "order", ORDER.model_copy(update={"lines": ORDER.lines[::-1]}), "lines", ORDER.lines),
    customer.LOSS_PROSPECT: (
        "customer", CUSTOMER.model_copy(update={"status": CustomerStatus.PROSPECT}),
        "status", CustomerStatus.INACTIVE),
    order.LOSS_DRAFT: (
        "order", ORDER.model_copy(update={"status": OrderStatus.DRAFT}),
        "status", OrderStatus.ON_HOLD),
    invoice.LOSS_PARTIALLY_PAID: (
        "invoice", INVOICE.model_copy(update={"amount_paid": Decimal(0)}),
        "status", InvoiceStatus.OPEN),
}


def test_every_named_loss_has_an_example_and_every_example_is_a_named_loss():
    named = {loss for tr in LEGACY_TRANSLATORS.values() for loss in tr.LOSSES}
    assert named == set(LOSS_EXAMPLES)


@pytest.mark.parametrize("loss", list(LOSS_EXAMPLES))
def test_each_named_loss_happens_on_the_trip_through_the_legacy_erp_and_in_normalise(loss):
    domain, record, field, expected = LOSS_EXAMPLES[loss]
    tr = LEGACY_TRANSLATORS[domain]
    assert loss in tr.LOSSES
    assert getattr(record, field) != expected
    trip = tr.to_canonical(*tr.from_canonical(record))
    assert getattr(trip, field) == expected
    assert getattr(tr.normalise(record), field) == expected

"""Hypothesis strategies for VALID canonical records of all seven domains.

Import these from any test (cloud translators, sample data, router, reconciliation)::

    from tests.unit.strategies import canonical_records, customers
    @given(canonical_records("order"))

Every record these strategies draw is valid for the canonical model AND holdable
by both ERPs: keys follow the business key formats below, and sizes stay within
what the legacy ERP can store (at most 5 price breaks, quantities below 10**9,
amounts below 10**9).  Everything the legacy ERP only *normalises* is drawn
freely on purpose: mixed-case and over-long text, empty optional text, sub-cent
amounts, sub-second timestamps, non-UTC offsets, statuses the legacy ERP folds
(``prospect``, ``draft``, ``partially_paid`` with nothing paid).  Free text stays
short of the canonical maxima (``LONG_TEXT``): longer text would only slow tests down.

Business key formats (the contract the sample data and the xref rely on):

* customer, order, shipment, invoice, contract price: decimal number without
  leading zeros, at most 10 digits (``"10042"``);
* SKU: upper-case letters, a dash, five digits (``"WID-01000"``);
* warehouse: 2-6 upper-case letters/digits starting with a letter (``"DAL1"``);
* inventory: ``"{warehouse}:{sku}"``;
* site id: ``B`` (bill-to) or ``S`` (ship-to) and three digits (``"S001"``).
"""

from __future__ import annotations

import string
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import strategies as st

from coexistence.canonical.models import (
    ISO_CURRENCIES,
    MILESTONE_ORDER,
    ContractPrice,
    Customer,
    CustomerStatus,
    InventoryBalance,
    Invoice,
    InvoiceStatus,
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

#: Largest amount drawn: well inside legacy NUMERIC(15) cents and 1/10,000 units.
MAX_AMOUNT = Decimal("999999999")
#: Largest quantity drawn: inside legacy NUMERIC(9).
MAX_QUANTITY = 10**7
#: Longest free text drawn: past every legacy width (30) but cheap to generate.
LONG_TEXT = 36

_UPPER_ALNUM = string.ascii_uppercase + string.digits

# Printable Latin text, including letters whose upper case changes length ("ß" -> "SS").
_text_chars = st.characters(
    min_codepoint=32, max_codepoint=0x24F, exclude_categories=("Cc", "Cs")
)


def text(max_size: int, *, min_size: int = 0) -> st.SearchStrategy[str]:
    """Free text up to ``max_size`` characters (mixed case, accents, spaces)."""
    return st.text(_text_chars, min_size=min_size, max_size=max_size)


def names(max_size: int) -> st.SearchStrategy[str]:
    """Text that starts with a letter or digit, so no ERP can blank it out."""
    return st.builds(
        lambda first, rest: (first + rest)[:max_size],
        st.sampled_from(string.ascii_letters + string.digits),
        text(max_size - 1),
    )


def optional_text(max_size: int) -> st.SearchStrategy[str | None]:
    return st.none() | text(max_size)


numeric_keys = st.integers(1, 9_999_999_999).map(str)
customer_keys = numeric_keys
document_keys = numeric_keys
skus = st.builds(
    lambda prefix, n: f"{prefix}-{n:05d}",
    st.text(string.ascii_uppercase, min_size=2, max_size=4),
    st.integers(0, 99_999),
)
warehouses = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(string.ascii_uppercase),
    st.text(_UPPER_ALNUM, min_size=1, max_size=5),
)
emails = st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.text(string.ascii_letters + string.digits + "._+-", min_size=1, max_size=40),
    st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=30),
    st.sampled_from(["com", "net", "org", "de", "co.uk"]),
)
currencies = st.sampled_from(sorted(ISO_CURRENCIES))
quantities = st.integers(0, MAX_QUANTITY)
positive_quantities = st.integers(1, MAX_QUANTITY)
line_numbers = st.integers(1, 9_999)


def amounts(max_value: Decimal = MAX_AMOUNT) -> st.SearchStrategy[Decimal]:
    """Non-negative decimals with 0, 2, 4 or 6 places (so rounding gets exercised)."""
    return st.one_of(
        *(
            st.decimals(min_value=0, max_value=max_value, places=places,
                        allow_nan=False, allow_infinity=False)
            for places in (0, 2, 4, 6)
        )
    )


dates = st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31))
_offsets = st.sampled_from(
    [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]
)
datetimes = st.datetimes(
    min_value=datetime(1990, 1, 2), max_value=datetime(2100, 12, 30), timezones=_offsets
)


@st.composite
def sites(draw, kind: SiteKind | None = None) -> dict:
    kind = kind or draw(st.sampled_from(list(SiteKind)))
    prefix = "B" if kind is SiteKind.BILL_TO else "S"
    return {
        "site_id": f"{prefix}{draw(st.integers(0, 999)):03d}",
        "kind": kind,
        "name": draw(names(LONG_TEXT)),
        "line1": draw(names(LONG_TEXT)),
        "line2": draw(optional_text(LONG_TEXT)),
        "city": draw(names(24)),
        "region": draw(text(18)),
        "postal_code": draw(
            st.builds(lambda a, b: a + b, st.sampled_from(_UPPER_ALNUM),
                      st.text(string.ascii_letters + string.digits + " -", max_size=11))
        ),
        "country": draw(st.text(string.ascii_uppercase, min_size=2, max_size=2)),
    }


@st.composite
def customers(draw) -> Customer:
    site_list = draw(st.lists(sites(), max_size=2, unique_by=lambda s: s["site_id"]))
    return Customer.model_validate({
        "key": draw(customer_keys),
        "name": draw(names(LONG_TEXT)),
        "status": draw(st.sampled_from(list(CustomerStatus))),
        "currency": draw(currencies),
        "credit_limit": draw(amounts()),
        "credit_hold": draw(st.booleans()),
        "terms": draw(st.sampled_from(list(PaymentTerms))),
        "tax_id": draw(st.none() | st.text(string.ascii_letters + string.digits + "-",
                                           max_size=20)),
        "customer_group": draw(st.text(string.ascii_letters + string.digits, max_size=10)),
        "region": draw(st.text(string.ascii_letters + string.digits + "-", max_size=10)),
        "contact_name": draw(optional_text(LONG_TEXT)),
        "contact_email": draw(st.none() | emails),
        "contact_phone": draw(st.none() | st.text(string.digits + "+-() x", max_size=30)),
        "sites": site_list,
    })


@st.composite
def products(draw) -> Product:
    return Product.model_validate({
        "key": draw(skus),
        "description": draw(names(LONG_TEXT)),
        "unit": draw(st.sampled_from(list(UnitOfMeasure))),
        "weight_kg": draw(amounts(Decimal("99999"))),
        "status": draw(st.sampled_from(list(ProductStatus))),
        "currency": draw(currencies),
        "list_price": draw(amounts()),
        "standard_cost": draw(amounts()),
    })


@st.composite
def contract_prices(draw) -> ContractPrice:
    quantities_ = sorted(draw(st.lists(st.integers(1, MAX_QUANTITY), min_size=1, max_size=5,
                                       unique=True)))
    valid_from = draw(dates)
    valid_to = draw(st.none() | st.dates(min_value=valid_from, max_value=date(2100, 12, 31)))
    return ContractPrice.model_validate({
        "key": draw(document_keys),
        "customer_key": draw(customer_keys),
        "sku": draw(skus),
        "currency": draw(currencies),
        "breaks": [{"min_quantity": q, "unit_price": draw(amounts())} for q in quantities_],
        "valid_from": valid_from,
        "valid_to": valid_to,
    })


@st.composite
def inventory_balances(draw) -> InventoryBalance:
    warehouse, sku = draw(warehouses), draw(skus)
    return InventoryBalance.model_validate({
        "key": f"{warehouse}:{sku}",
        "warehouse": warehouse,
        "sku": sku,
        "on_hand": draw(quantities),
        "allocated": draw(quantities),
    })


def _unique_line_numbers(min_size: int = 1, max_size: int = 8):
    return st.lists(line_numbers, min_size=min_size, max_size=max_size, unique=True).map(sorted)


@st.composite
def orders(draw) -> Order:
    return Order.model_validate({
        "key": draw(document_keys),
        "customer_key": draw(customer_keys),
        "ship_to_site_id": draw(st.none() | st.integers(0, 999).map(lambda n: f"S{n:03d}")),
        "status": draw(st.sampled_from(list(OrderStatus))),
        "channel": draw(st.sampled_from(list(OrderChannel))),
        "customer_po": draw(optional_text(22)),
        "currency": draw(currencies),
        "ordered_at": draw(datetimes),
        "requested_date": draw(st.none() | dates),
        "lines": [
            {"line_no": n, "sku": draw(skus), "quantity": draw(positive_quantities),
             "unit_price": draw(amounts())}
            for n in draw(_unique_line_numbers())
        ],
    })


@st.composite
def shipments(draw) -> Shipment:
    reached = draw(st.lists(st.booleans(), min_size=len(MILESTONE_ORDER),
                            max_size=len(MILESTONE_ORDER)))
    at = draw(datetimes).astimezone(UTC)
    milestones = []
    for milestone, hit in zip(MILESTONE_ORDER, reached, strict=True):
        if hit:
            milestones.append({"milestone": milestone, "at": at})
            at += timedelta(seconds=draw(st.integers(0, 5 * 86_400)),
                            microseconds=draw(st.integers(0, 999_999)))
    return Shipment.model_validate({
        "key": draw(document_keys),
        "order_key": draw(document_keys),
        "warehouse": draw(warehouses),
        "carrier": draw(st.none() | st.text(string.ascii_letters + " ", max_size=20)),
        "tracking_number": draw(st.none() | st.text(_UPPER_ALNUM + "abc", max_size=40)),
        "milestones": milestones,
        "lines": [
            {"line_no": n, "order_line_no": draw(line_numbers), "sku": draw(skus),
             "quantity": draw(positive_quantities)}
            for n in draw(_unique_line_numbers())
        ],
    })


@st.composite
def invoices(draw) -> Invoice:
    issued_on = draw(dates)
    return Invoice.model_validate({
        "key": draw(document_keys),
        "order_key": draw(document_keys),
        "customer_key": draw(customer_keys),
        "status": draw(st.sampled_from(list(InvoiceStatus))),
        "currency": draw(currencies),
        "issued_on": issued_on,
        "due_on": issued_on + timedelta(days=draw(st.integers(0, 120))),
        "tax_amount": draw(amounts()),
        "amount_paid": draw(amounts()),
        "lines": [
            {"line_no": n, "sku": draw(skus), "description": draw(text(LONG_TEXT)),
             "quantity": draw(positive_quantities), "unit_price": draw(amounts())}
            for n in draw(_unique_line_numbers())
        ],
    })


#: Domain name -> strategy of valid canonical records of that domain.
STRATEGIES: dict[str, st.SearchStrategy] = {
    "customer": customers(),
    "product": products(),
    "price": contract_prices(),
    "inventory": inventory_balances(),
    "order": orders(),
    "shipment": shipments(),
    "invoice": invoices(),
}


def canonical_records(domain: str) -> st.SearchStrategy:
    """Valid canonical records of ``domain`` (one of ``coexistence.canonical.DOMAINS``)."""
    try:
        return STRATEGIES[domain]
    except KeyError:
        raise ValueError(f"no strategy for domain {domain!r}") from None


#: Any valid canonical record of any domain.
any_canonical_record = st.one_of(*STRATEGIES.values())


def legacy_rows(domain: str) -> st.SearchStrategy:
    """Valid legacy rows of ``domain``: ``(header row, child rows)`` as the database holds them.

    Built through the legacy translator, so they carry every legacy habit (padding,
    codes, integer units) and read back to a canonical record without error.
    """
    from coexistence.translate.legacy import LEGACY_TRANSLATORS

    return canonical_records(domain).map(LEGACY_TRANSLATORS[domain].from_canonical)

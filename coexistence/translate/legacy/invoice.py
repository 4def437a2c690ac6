"""Invoice: legacy INVHDR + INVLIN rows <-> canonical ``Invoice``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from coexistence.canonical.models import ISO_CURRENCIES, Invoice, InvoiceLine, InvoiceStatus
from coexistence.errors import TranslationError
from coexistence.legacy.models import INVHDR, INVLIN, ITEM_WIDTH, KEY_WIDTH, NAME_WIDTH
from coexistence.translate.common import (
    LOSS_CENTS,
    LOSS_LINE_ORDER,
    LOSS_PRICE_UNITS,
    LOSS_TRAILING_SPACES,
    LOSS_TRUNCATION,
    LOSS_UPPER_CASE,
    Where,
    char,
    code,
    construct,
    date_to_int,
    fail,
    fit_text,
    from_cents,
    from_price_units,
    int_to_date,
    is_key,
    legacy_quantity,
    pad_number,
    pydantic_text,
    quantity,
    round_cents,
    round_price,
    to_cents,
    to_price_units,
    uncode,
    unpad_number,
)
from coexistence.translate.legacy._base import (
    DEFAULT_WRITER,
    audit,
    currency,
    decode,
    guard_columns,
    sort_unique,
    validate,
)

DOMAIN = "invoice"
TABLE = INVHDR
CHILD_TABLE = INVLIN
KEY_COLUMNS = ("INVNO",)

#: The legacy ERP has one code O for open and partially paid: which one is derived from
#: AMTPAID, so an "open" invoice with money paid reads back as partially paid and a
#: "partially paid" one with nothing paid reads back as open.
LOSS_PARTIALLY_PAID = "open/partially paid stored as O, read back from AMTPAID > 0"

LOSSES: tuple[str, ...] = (
    LOSS_PARTIALLY_PAID,
    LOSS_UPPER_CASE,  # INVLIN.ITEMDESC
    LOSS_TRUNCATION,  # INVLIN.ITEMDESC 30
    LOSS_TRAILING_SPACES,
    LOSS_CENTS,  # TAXAMT, AMTPAID
    LOSS_PRICE_UNITS,  # INVLIN.UNITPRC
    LOSS_LINE_ORDER,  # lines sorted by LINENO
)

STATUS_CODES: dict[InvoiceStatus, str] = {
    InvoiceStatus.OPEN: "O",
    InvoiceStatus.PARTIALLY_PAID: "O",  # LOSS_PARTIALLY_PAID
    InvoiceStatus.PAID: "P",
    InvoiceStatus.VOID: "V",
}
_STATUS: dict[str, InvoiceStatus] = {
    "O": InvoiceStatus.OPEN, "P": InvoiceStatus.PAID, "V": InvoiceStatus.VOID,
}

COLUMNS: dict[str, str] = {
    "key": "INVNO", "order_key": "ORDNO", "customer_key": "CUSTNO", "status": "INVSTAT",
    "currency": "CURRCODE", "issued_on": "INVDATE", "due_on": "DUEDATE",
    "tax_amount": "TAXAMT", "amount_paid": "AMTPAID", "lines": "INVLIN",
}


def legacy_key(canonical_key: str) -> str:
    return pad_number(canonical_key, KEY_WIDTH, Where(DOMAIN, canonical_key), "key")


def canonical_key(legacy_key: str) -> str:
    return unpad_number(legacy_key, Where(DOMAIN, legacy_key), "INVNO")


def key_columns(legacy_key: str) -> dict[str, str]:
    return {"INVNO": legacy_key}


def _status(code_: InvoiceStatus, amount_paid: Decimal) -> InvoiceStatus:
    if code_ is InvoiceStatus.OPEN and amount_paid > 0:
        return InvoiceStatus.PARTIALLY_PAID
    return code_


#: Invoice line field -> INVLIN column, for errors found by model validation.
LINE_COLUMNS: dict[str, str] = {
    "line_no": "LINENO", "sku": "ITEMNO", "description": "ITEMDESC", "quantity": "INVQTY",
    "unit_price": "UNITPRC",
}


def _bad_line(row: Mapping[str, Any], invno: str, where: Where) -> TranslationError:
    """Slow path: the precise error for a line the fast path refused."""
    if row["INVNO"] != invno:
        return fail(where, "INVLIN.INVNO", row["INVNO"], "line of another invoice")
    quantity(row["LINENO"], where, "INVLIN.LINENO", positive=True)
    uncode(row["ITEMNO"], where, "INVLIN.ITEMNO")
    quantity(row["INVQTY"], where, "INVLIN.INVQTY", positive=True)
    from_price_units(row["UNITPRC"], where, "INVLIN.UNITPRC")
    return fail(where, "INVLIN", None, "unreadable invoice line")


def _lines(
    children: Sequence[Mapping[str, Any]], invno: str, where: Where
) -> tuple[list[dict], bool]:
    """The lines sorted by number, and whether every line is proven valid."""
    lines = []
    proven = True
    # Hot path: inline reads; signs and ranges are checked by the model, helpers only
    # run to name what went wrong.
    for row in children:
        line_no, qty, price = row["LINENO"], row["INVQTY"], row["UNITPRC"]
        sku = row["ITEMNO"].rstrip(" ")
        if (row["INVNO"] != invno or type(line_no) is not int or type(qty) is not int
                or type(price) is not int or price < 0 or not sku):
            raise _bad_line(row, invno, where)
        description = row["ITEMDESC"].rstrip(" ")
        lines.append({"line_no": line_no, "sku": sku, "description": description,
                      "quantity": qty, "unit_price": Decimal(price).scaleb(-4)})
        # InvoiceLine: positive numbers, a Key sku (pattern: ASCII only), Text.
        if proven and not (line_no > 0 and qty > 0 and len(sku) <= 40 and is_key(sku)
                           and len(description) <= 200 and pydantic_text(description)):
            proven = False
    return sort_unique(lines, "line_no", where, "INVLIN.LINENO"), proven


# The fast path: a record is built without pydantic's validation only when every
# value was checked against the canonical constraints (coexistence/canonical/
# models.py) by ``_read``; anything else goes through ``validate``, with the same
# result or the same TranslationError as ever.  Amounts are finite Decimals >= 0
# (from_cents, and prices >= 0 above), dates are dates (int_to_date), statuses enum
# members (decode).  tests/unit/test_legacy_fast_path.py proves construct ==
# model_validate.
#: ``model_fields_set`` of a validated Invoice: every field but ``schema_version``.
_INVOICE_FIELDS_SET = frozenset(Invoice.model_fields) - {"schema_version"}


def _read(
    header: Mapping[str, Any], children: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """The Invoice's values, in field order, and whether they are proven valid."""
    invno = header["INVNO"]
    where = Where(DOMAIN, invno)
    lines, proven = _lines(children, invno, where)
    amount_paid = from_cents(header["AMTPAID"], where, "AMTPAID")
    status = decode(_STATUS, header["INVSTAT"], where, "INVSTAT", "invoice status")
    values: dict[str, Any] = {
        "key": unpad_number(invno, where, "INVNO"),
        "schema_version": 1,
        "order_key": unpad_number(header["ORDNO"], where, "ORDNO"),
        "customer_key": unpad_number(header["CUSTNO"], where, "CUSTNO"),
        "status": _status(status, amount_paid),
        "currency": currency(header["CURRCODE"], where),
        "issued_on": int_to_date(header["INVDATE"], where, "INVDATE", none=None),
        "due_on": int_to_date(header["DUEDATE"], where, "DUEDATE", none=None),
        "tax_amount": from_cents(header["TAXAMT"], where, "TAXAMT"),
        "amount_paid": amount_paid,
        "lines": lines,
    }
    # keys: digits (unpad_number).
    proven = (
        proven and lines != [] and len(values["key"]) <= 40
        and len(values["order_key"]) <= 40 and len(values["customer_key"]) <= 40
        and values["currency"] in ISO_CURRENCIES
    )
    return values, proven


def _build(values: dict[str, Any], proven: bool, where: Where) -> Invoice:
    if proven:
        values["lines"] = tuple([construct(InvoiceLine, line) for line in values["lines"]])
        return construct(Invoice, values, set(_INVOICE_FIELDS_SET))
    del values["schema_version"]  # not given by the row: not in model_fields_set
    return validate(Invoice, values, where, COLUMNS, LINE_COLUMNS)


@guard_columns(DOMAIN, KEY_COLUMNS, TABLE, CHILD_TABLE)
def to_canonical(
    header: Mapping[str, Any], children: Sequence[Mapping[str, Any]] = ()
) -> Invoice:
    """An INVHDR row and its INVLIN rows -> ``Invoice``."""
    values, proven = _read(header, children)
    return _build(values, proven, Where(DOMAIN, header["INVNO"]))


def from_canonical(
    record: Invoice, *, changed_by: str = DEFAULT_WRITER, changed_at: datetime | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``Invoice`` -> (INVHDR row, INVLIN rows sorted by LINENO)."""
    where = Where(DOMAIN, record.key)
    invno = pad_number(record.key, KEY_WIDTH, where, "key")
    header = {
        "INVNO": invno,
        "ORDNO": pad_number(record.order_key, KEY_WIDTH, where, "order_key"),
        "CUSTNO": pad_number(record.customer_key, KEY_WIDTH, where, "customer_key"),
        "INVSTAT": STATUS_CODES[record.status],
        "CURRCODE": record.currency,
        "INVDATE": date_to_int(record.issued_on),
        "DUEDATE": date_to_int(record.due_on),
        "TAXAMT": to_cents(record.tax_amount, where, "tax_amount"),
        "AMTPAID": to_cents(record.amount_paid, where, "amount_paid"),
        **audit(changed_by, changed_at),
    }
    lines = [
        {
            "INVNO": invno,
            "LINENO": legacy_quantity(line.line_no, where, "lines.line_no"),
            "ITEMNO": code(line.sku, ITEM_WIDTH, where, "lines.sku"),
            "ITEMDESC": char(line.description, NAME_WIDTH),
            "INVQTY": legacy_quantity(line.quantity, where, "lines.quantity"),
            "UNITPRC": to_price_units(line.unit_price, where, "lines.unit_price"),
        }
        for line in record.lines
    ]
    return header, sort_unique(lines, "LINENO", where, "lines.line_no")


def normalise(record: Invoice) -> Invoice:
    """What a trip through the legacy ERP makes of ``record`` (see ``LOSSES``)."""
    amount_paid = round_cents(record.amount_paid)
    status = _STATUS[STATUS_CODES[record.status]]
    return validate(Invoice, {
        **record.model_dump(),
        "status": _status(status, amount_paid),
        "tax_amount": round_cents(record.tax_amount),
        "amount_paid": amount_paid,
        "lines": [
            {**line.model_dump(), "description": fit_text(line.description, NAME_WIDTH),
             "unit_price": round_price(line.unit_price)}
            for line in sorted(record.lines, key=lambda x: x.line_no)
        ],
    }, Where(DOMAIN, record.key), {})

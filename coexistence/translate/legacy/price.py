"""Contract price: legacy CONTPRC row (five fixed break slots) <-> canonical ``ContractPrice``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from coexistence.canonical.models import ISO_CURRENCIES, ContractPrice, PriceBreak
from coexistence.legacy.models import CONTPRC, ITEM_WIDTH, KEY_WIDTH, MAX_PRICE_BREAKS
from coexistence.translate.common import (
    LOSS_PRICE_UNITS,
    OPEN_ENDED_DATE,
    Where,
    code,
    construct,
    date_to_int,
    fail,
    from_price_units,
    int_to_date,
    is_key,
    legacy_quantity,
    pad_number,
    round_price,
    to_price_units,
    uncode,
    unpad_number,
)
from coexistence.translate.legacy._base import (
    DEFAULT_WRITER,
    audit,
    currency,
    guard_columns,
    no_children,
    validate,
)

DOMAIN = "price"
TABLE = CONTPRC
CHILD_TABLE = None
KEY_COLUMNS = ("CONTNO",)

#: More breaks than BRKQTY1..5 can hold is a TranslationError, never a silent truncation.
LOSSES: tuple[str, ...] = (
    LOSS_PRICE_UNITS,  # BRKPRC1..5
)

#: (quantity column, price column) of each fixed break slot.
BREAK_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (f"BRKQTY{i}", f"BRKPRC{i}") for i in range(1, MAX_PRICE_BREAKS + 1)
)

COLUMNS: dict[str, str] = {
    "key": "CONTNO", "customer_key": "CUSTNO", "sku": "ITEMNO", "currency": "CURRCODE",
    "breaks": "BRKQTY", "valid_from": "EFFDATE", "valid_to": "EXPDATE",
}


def legacy_key(canonical_key: str) -> str:
    """Agreement number ``"7001"`` -> ``"0000007001"``."""
    return pad_number(canonical_key, KEY_WIDTH, Where(DOMAIN, canonical_key), "key")


def canonical_key(legacy_key: str) -> str:
    return unpad_number(legacy_key, Where(DOMAIN, legacy_key), "CONTNO")


def key_columns(legacy_key: str) -> dict[str, str]:
    return {"CONTNO": legacy_key}


def _breaks(header: Mapping[str, Any], where: Where) -> list[dict[str, Any]]:
    breaks = []
    ended = False
    for qty_col, price_col in BREAK_COLUMNS:
        qty, price = header[qty_col], header[price_col]
        if type(qty) is int and type(price) is int and price >= 0:
            if qty > 0 and not ended:
                # Hot path: a used slot after used slots.
                breaks.append({"min_quantity": qty, "unit_price": Decimal(price).scaleb(-4)})
                continue
            if qty == 0 and price == 0:
                ended = True  # an unused slot: all zero, and no used slot after it
                continue
        # Slow path: name what is wrong with this slot.
        if type(qty) is not int or qty < 0:
            raise fail(where, qty_col, qty, "not a non-negative integer quantity")
        if qty == 0:
            raise fail(where, price_col, price, "price in an unused break slot")
        if ended:
            raise fail(where, qty_col, qty, "break after an unused slot")
        from_price_units(price, where, price_col)
        raise fail(where, price_col, price, "not a price")
    return breaks


# The fast path: a record is built without pydantic's validation only when every
# value was checked against the canonical constraints (coexistence/canonical/
# models.py) by ``_read``; anything else goes through ``validate``, with the same
# result or the same TranslationError as ever.  Breaks need only the ascending
# check: ``_breaks`` reads positive quantities and prices >= 0 as finite Decimals.
# tests/unit/test_legacy_fast_path.py proves construct == model_validate.
#: ``model_fields_set`` of a validated ContractPrice: every field but ``schema_version``.
_PRICE_FIELDS_SET = frozenset(ContractPrice.model_fields) - {"schema_version"}


def _read(
    header: Mapping[str, Any], children: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """The ContractPrice's values, in field order, and whether they are proven valid."""
    where = Where(DOMAIN, header["CONTNO"])
    no_children(children, where)
    values: dict[str, Any] = {
        "key": unpad_number(header["CONTNO"], where, "CONTNO"),
        "schema_version": 1,
        "customer_key": unpad_number(header["CUSTNO"], where, "CUSTNO"),
        "sku": uncode(header["ITEMNO"], where, "ITEMNO"),
        "currency": currency(header["CURRCODE"], where),
        "breaks": _breaks(header, where),
        "valid_from": int_to_date(header["EFFDATE"], where, "EFFDATE", none=None),
        "valid_to": int_to_date(header["EXPDATE"], where, "EXPDATE", none=OPEN_ENDED_DATE),
    }
    # keys: digits (unpad_number); dates: date or None (int_to_date).
    sku, breaks = values["sku"], values["breaks"]
    proven = (
        len(values["key"]) <= 40 and len(values["customer_key"]) <= 40
        and len(sku) <= 40 and is_key(sku) is not None
        and values["currency"] in ISO_CURRENCIES
        and breaks != [] and all(
            a["min_quantity"] < b["min_quantity"] for a, b in zip(breaks, breaks[1:], strict=False)
        )
    )
    return values, proven


def _build(values: dict[str, Any], proven: bool, where: Where) -> ContractPrice:
    if proven:
        values["breaks"] = tuple([construct(PriceBreak, b) for b in values["breaks"]])
        return construct(ContractPrice, values, set(_PRICE_FIELDS_SET))
    del values["schema_version"]  # not given by the row: not in model_fields_set
    return validate(ContractPrice, values, where, COLUMNS)


@guard_columns(DOMAIN, KEY_COLUMNS, TABLE)
def to_canonical(
    header: Mapping[str, Any], children: Sequence[Mapping[str, Any]] = ()
) -> ContractPrice:
    """A CONTPRC row -> ``ContractPrice``."""
    values, proven = _read(header, children)
    return _build(values, proven, Where(DOMAIN, header["CONTNO"]))


def from_canonical(
    record: ContractPrice, *, changed_by: str = DEFAULT_WRITER, changed_at: datetime | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``ContractPrice`` -> (CONTPRC row, [])."""
    where = Where(DOMAIN, record.key)
    if len(record.breaks) > MAX_PRICE_BREAKS:
        raise fail(where, "breaks", len(record.breaks),
                   f"the legacy ERP holds at most {MAX_PRICE_BREAKS} price breaks")
    row: dict[str, Any] = {
        "CONTNO": pad_number(record.key, KEY_WIDTH, where, "key"),
        "CUSTNO": pad_number(record.customer_key, KEY_WIDTH, where, "customer_key"),
        "ITEMNO": code(record.sku, ITEM_WIDTH, where, "sku"),
        "CURRCODE": record.currency,
        "EFFDATE": date_to_int(record.valid_from),
        "EXPDATE": date_to_int(record.valid_to, none=OPEN_ENDED_DATE),
    }
    for i, (qty_col, price_col) in enumerate(BREAK_COLUMNS):
        if i < len(record.breaks):
            brk = record.breaks[i]
            row[qty_col] = legacy_quantity(brk.min_quantity, where, f"breaks.{i}.min_quantity")
            row[price_col] = to_price_units(brk.unit_price, where, f"breaks.{i}.unit_price")
        else:
            row[qty_col] = row[price_col] = 0
    row.update(audit(changed_by, changed_at))
    return row, []


def normalise(record: ContractPrice) -> ContractPrice:
    """What a trip through the legacy ERP makes of ``record`` (see ``LOSSES``)."""
    return validate(ContractPrice, {
        **record.model_dump(),
        "breaks": [{"min_quantity": b.min_quantity, "unit_price": round_price(b.unit_price)}
                   for b in record.breaks],
    }, Where(DOMAIN, record.key), {})

"""Order: legacy ORDHDR + ORDLIN rows <-> canonical ``Order``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from coexistence.canonical.models import (
    ISO_CURRENCIES,
    Order,
    OrderChannel,
    OrderLine,
    OrderStatus,
)
from coexistence.errors import TranslationError
from coexistence.legacy.models import (
    CUSTPO_WIDTH,
    ITEM_WIDTH,
    KEY_WIDTH,
    ORDHDR,
    ORDLIN,
    SITE_WIDTH,
)
from coexistence.translate.common import (
    LOSS_EMPTY_IS_NONE,
    LOSS_LINE_ORDER,
    LOSS_PRICE_UNITS,
    LOSS_SUBSECOND,
    LOSS_TRAILING_SPACES,
    LOSS_UPPER_CASE,
    Where,
    char,
    code,
    construct,
    date_to_int,
    datetime_to_ints,
    fail,
    fit_optional_text,
    from_price_units,
    int_to_date,
    ints_to_datetime,
    is_key,
    legacy_quantity,
    pad_number,
    pydantic_text,
    quantity,
    round_price,
    to_price_units,
    truncate_to_second,
    uncode,
    unpad_number,
)
from coexistence.translate.legacy._base import (
    DEFAULT_WRITER,
    audit,
    code_map,
    currency,
    decode,
    guard_columns,
    sort_unique,
    validate,
)

DOMAIN = "order"
TABLE = ORDHDR
CHILD_TABLE = ORDLIN
KEY_COLUMNS = ("ORDNO",)

#: The legacy ERP has no drafts: a draft is entered on hold (never allocated) and reads back
#: as on hold.
LOSS_DRAFT = "status draft stored as H (on hold), read back as on_hold"

LOSSES: tuple[str, ...] = (
    LOSS_DRAFT,
    LOSS_UPPER_CASE,  # CUSTPO
    LOSS_TRAILING_SPACES,
    LOSS_EMPTY_IS_NONE,  # CUSTPO
    LOSS_SUBSECOND,  # ORDDATE/ORDTIME
    LOSS_PRICE_UNITS,  # UNITPRC
    LOSS_LINE_ORDER,  # lines sorted by LINENO
)

STATUS_CODES: dict[OrderStatus, str] = {
    OrderStatus.ON_HOLD: "H",
    OrderStatus.DRAFT: "H",  # LOSS_DRAFT
    OrderStatus.OPEN: "O",
    OrderStatus.ALLOCATED: "A",
    OrderStatus.PARTIALLY_SHIPPED: "P",
    OrderStatus.SHIPPED: "S",
    OrderStatus.INVOICED: "I",
    OrderStatus.CLOSED: "C",
    OrderStatus.CANCELLED: "X",
}
_STATUS = code_map(STATUS_CODES)
_FOLDED_STATUS = {s: _STATUS[c] for s, c in STATUS_CODES.items()}

CHANNEL_CODES: dict[OrderChannel, str] = {
    OrderChannel.ERP: "M",  # manual entry
    OrderChannel.CRM: "C",
    OrderChannel.EDI: "E",
    OrderChannel.PORTAL: "W",  # web
}
_CHANNEL = code_map(CHANNEL_CODES)

COLUMNS: dict[str, str] = {
    "key": "ORDNO", "customer_key": "CUSTNO", "ship_to_site_id": "SHIPTO", "status": "ORDSTAT",
    "channel": "ORDSRC", "customer_po": "CUSTPO", "currency": "CURRCODE",
    "ordered_at": "ORDDATE", "requested_date": "REQDATE", "lines": "ORDLIN",
}


def legacy_key(canonical_key: str) -> str:
    """``"500123"`` -> ``"0000500123"``."""
    return pad_number(canonical_key, KEY_WIDTH, Where(DOMAIN, canonical_key), "key")


def canonical_key(legacy_key: str) -> str:
    return unpad_number(legacy_key, Where(DOMAIN, legacy_key), "ORDNO")


def key_columns(legacy_key: str) -> dict[str, str]:
    return {"ORDNO": legacy_key}


#: Order line field -> ORDLIN column, for errors found by model validation.
LINE_COLUMNS: dict[str, str] = {
    "line_no": "LINENO", "sku": "ITEMNO", "quantity": "ORDQTY", "unit_price": "UNITPRC",
}


def _bad_line(row: Mapping[str, Any], ordno: str, where: Where) -> TranslationError:
    """Slow path: the precise error for a line the fast path refused."""
    if row["ORDNO"] != ordno:
        return fail(where, "ORDLIN.ORDNO", row["ORDNO"], "line of another order")
    quantity(row["LINENO"], where, "ORDLIN.LINENO", positive=True)
    uncode(row["ITEMNO"], where, "ORDLIN.ITEMNO")
    quantity(row["ORDQTY"], where, "ORDLIN.ORDQTY", positive=True)
    from_price_units(row["UNITPRC"], where, "ORDLIN.UNITPRC")
    return fail(where, "ORDLIN", None, "unreadable order line")


# The fast path: a record is built without pydantic's validation only when every
# value was checked against the canonical constraints (coexistence/canonical/
# models.py) by ``_read``; anything else goes through ``validate``, with the same
# result or the same TranslationError as ever.  Prices are finite Decimals >= 0,
# ``ordered_at`` a UTC datetime (the model's ``_utc`` returns it as is), dates are
# dates, statuses enum members.  tests/unit/test_legacy_fast_path.py proves
# construct == model_validate.
#: ``model_fields_set`` of a validated Order: every field but ``schema_version``.
_ORDER_FIELDS_SET = frozenset(Order.model_fields) - {"schema_version"}


def _read(
    header: Mapping[str, Any], children: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """The Order's values, in field order, and whether they are proven valid."""
    ordno = header["ORDNO"]
    where = Where(DOMAIN, ordno)
    lines = []
    proven = True
    # Hot path: inline reads; signs and ranges are checked by the model, helpers only
    # run to name what went wrong.
    for row in children:
        line_no, qty, price = row["LINENO"], row["ORDQTY"], row["UNITPRC"]
        sku = row["ITEMNO"].rstrip(" ")
        if (row["ORDNO"] != ordno or type(line_no) is not int or type(qty) is not int
                or type(price) is not int or price < 0 or not sku):
            raise _bad_line(row, ordno, where)
        lines.append({"line_no": line_no, "sku": sku, "quantity": qty,
                      "unit_price": Decimal(price).scaleb(-4)})
        # OrderLine: positive numbers, a Key sku (pattern: ASCII only).
        if proven and not (line_no > 0 and qty > 0 and len(sku) <= 40 and is_key(sku)):
            proven = False
    values: dict[str, Any] = {
        "key": unpad_number(ordno, where, "ORDNO"),
        "schema_version": 1,
        "customer_key": unpad_number(header["CUSTNO"], where, "CUSTNO"),
        "ship_to_site_id": header["SHIPTO"].rstrip(" ") or None,
        "status": decode(_STATUS, header["ORDSTAT"], where, "ORDSTAT", "order status"),
        "channel": decode(_CHANNEL, header["ORDSRC"], where, "ORDSRC", "order source"),
        "customer_po": header["CUSTPO"].rstrip(" ") or None,
        "currency": currency(header["CURRCODE"], where),
        "ordered_at": ints_to_datetime(header["ORDDATE"], header["ORDTIME"], where, "ORDDATE"),
        "requested_date": int_to_date(header["REQDATE"], where, "REQDATE"),
        "lines": sort_unique(lines, "line_no", where, "ORDLIN.LINENO"),
    }
    if proven:
        # keys: digits (unpad_number).
        site, po = values["ship_to_site_id"], values["customer_po"]
        proven = (
            lines != [] and len(values["key"]) <= 40 and len(values["customer_key"]) <= 40
            and (site is None or (len(site) <= 40 and is_key(site) is not None))
            and (po is None or (len(po) <= 22 and pydantic_text(po)))
            and values["currency"] in ISO_CURRENCIES
        )
    return values, proven


def _build(values: dict[str, Any], proven: bool, where: Where) -> Order:
    if proven:
        values["lines"] = tuple([construct(OrderLine, line) for line in values["lines"]])
        return construct(Order, values, set(_ORDER_FIELDS_SET))
    del values["schema_version"]  # not given by the row: not in model_fields_set
    return validate(Order, values, where, COLUMNS, LINE_COLUMNS)


@guard_columns(DOMAIN, KEY_COLUMNS, TABLE, CHILD_TABLE)
def to_canonical(header: Mapping[str, Any], children: Sequence[Mapping[str, Any]] = ()) -> Order:
    """An ORDHDR row and its ORDLIN rows -> ``Order``."""
    values, proven = _read(header, children)
    return _build(values, proven, Where(DOMAIN, header["ORDNO"]))


def from_canonical(
    record: Order, *, changed_by: str = DEFAULT_WRITER, changed_at: datetime | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``Order`` -> (ORDHDR row, ORDLIN rows sorted by LINENO)."""
    where = Where(DOMAIN, record.key)
    ordno = pad_number(record.key, KEY_WIDTH, where, "key")
    day, time = datetime_to_ints(record.ordered_at)
    header = {
        "ORDNO": ordno,
        "CUSTNO": pad_number(record.customer_key, KEY_WIDTH, where, "customer_key"),
        "SHIPTO": (" " * SITE_WIDTH if record.ship_to_site_id is None
                   else code(record.ship_to_site_id, SITE_WIDTH, where, "ship_to_site_id")),
        "ORDSTAT": STATUS_CODES[record.status],
        "ORDSRC": CHANNEL_CODES[record.channel],
        "CUSTPO": char(record.customer_po, CUSTPO_WIDTH),
        "CURRCODE": record.currency,
        "ORDDATE": day,
        "ORDTIME": time,
        "REQDATE": date_to_int(record.requested_date),
        **audit(changed_by, changed_at),
    }
    lines = [
        {
            "ORDNO": ordno,
            "LINENO": legacy_quantity(line.line_no, where, "lines.line_no"),
            "ITEMNO": code(line.sku, ITEM_WIDTH, where, "lines.sku"),
            "ORDQTY": legacy_quantity(line.quantity, where, "lines.quantity"),
            "UNITPRC": to_price_units(line.unit_price, where, "lines.unit_price"),
        }
        for line in record.lines
    ]
    return header, sort_unique(lines, "LINENO", where, "lines.line_no")


def normalise(record: Order) -> Order:
    """What a trip through the legacy ERP makes of ``record`` (see ``LOSSES``)."""
    return validate(Order, {
        **record.model_dump(),
        "status": _FOLDED_STATUS[record.status],
        "customer_po": fit_optional_text(record.customer_po, CUSTPO_WIDTH),
        "ordered_at": truncate_to_second(record.ordered_at),
        "lines": [
            {**line.model_dump(), "unit_price": round_price(line.unit_price)}
            for line in sorted(record.lines, key=lambda line: line.line_no)
        ],
    }, Where(DOMAIN, record.key), {})

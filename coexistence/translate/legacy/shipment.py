"""Shipment: legacy SHPHDR + SHPLIN rows <-> canonical ``Shipment``.

Milestones are fixed repeating columns in SHPHDR: one (date, time) pair per
milestone, both 0 while the milestone is not reached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from coexistence.canonical.models import Milestone, MilestoneEvent, Shipment, ShipmentLine
from coexistence.errors import TranslationError
from coexistence.legacy.models import (
    CARRIER_WIDTH,
    ITEM_WIDTH,
    KEY_WIDTH,
    SHPHDR,
    SHPLIN,
    TRACK_WIDTH,
    WHSE_WIDTH,
)
from coexistence.translate.common import (
    LOSS_EMPTY_IS_NONE,
    LOSS_LINE_ORDER,
    LOSS_SUBSECOND,
    LOSS_TRAILING_SPACES,
    LOSS_TRUNCATION,
    LOSS_UPPER_CASE,
    NO_DATE,
    NO_TIME,
    Where,
    char,
    code,
    construct,
    datetime_to_ints,
    fail,
    fit_optional_text,
    ints_to_datetime,
    is_key,
    legacy_quantity,
    pad_number,
    pydantic_text,
    quantity,
    truncate_to_second,
    uncode,
    unpad_number,
)
from coexistence.translate.legacy._base import (
    DEFAULT_WRITER,
    audit,
    guard_columns,
    sort_unique,
    validate,
)

DOMAIN = "shipment"
TABLE = SHPHDR
CHILD_TABLE = SHPLIN
KEY_COLUMNS = ("SHPNO",)

LOSSES: tuple[str, ...] = (
    LOSS_UPPER_CASE,  # CARRIER, TRACKNO
    LOSS_TRUNCATION,  # TRACKNO 30 (canonical 40)
    LOSS_TRAILING_SPACES,
    LOSS_EMPTY_IS_NONE,  # CARRIER, TRACKNO
    LOSS_SUBSECOND,  # milestone date/time pairs
    LOSS_LINE_ORDER,  # lines sorted by LINENO
)

#: Milestone -> its (date column, time column) in SHPHDR, in lifecycle order.
MILESTONE_COLUMNS: dict[Milestone, tuple[str, str]] = {
    Milestone.PICKED: ("PICKDATE", "PICKTIME"),
    Milestone.PACKED: ("PACKDATE", "PACKTIME"),
    Milestone.SHIPPED: ("SHIPDATE", "SHIPTIME"),
    Milestone.DELIVERED: ("DLVDATE", "DLVTIME"),
}

COLUMNS: dict[str, str] = {
    "key": "SHPNO", "order_key": "ORDNO", "warehouse": "WHSE", "carrier": "CARRIER",
    "tracking_number": "TRACKNO", "milestones": "PICKDATE..DLVTIME", "lines": "SHPLIN",
}


def legacy_key(canonical_key: str) -> str:
    return pad_number(canonical_key, KEY_WIDTH, Where(DOMAIN, canonical_key), "key")


def canonical_key(legacy_key: str) -> str:
    return unpad_number(legacy_key, Where(DOMAIN, legacy_key), "SHPNO")


def key_columns(legacy_key: str) -> dict[str, str]:
    return {"SHPNO": legacy_key}


#: (milestone, date column, time column) in lifecycle order, for the hot loop.
_MILESTONE_COLUMNS = tuple((m, d, t) for m, (d, t) in MILESTONE_COLUMNS.items())

#: Shipment line field -> SHPLIN column, for errors found by model validation.
LINE_COLUMNS: dict[str, str] = {
    "line_no": "LINENO", "order_line_no": "ORDLINE", "sku": "ITEMNO", "quantity": "SHPQTY",
}


def _milestones(header: Mapping[str, Any], where: Where) -> list[dict[str, Any]]:
    events = []
    for milestone, date_col, time_col in _MILESTONE_COLUMNS:
        day, time = header[date_col], header[time_col]
        if day == NO_DATE:
            if time != NO_TIME:
                raise fail(where, time_col, time, "time of a milestone without a date")
            continue
        at = ints_to_datetime(day, time, where, date_col)
        events.append({"milestone": milestone, "at": at})
    return events


def _bad_line(row: Mapping[str, Any], shpno: str, where: Where) -> TranslationError:
    """Slow path: the precise error for a line the fast path refused."""
    if row["SHPNO"] != shpno:
        return fail(where, "SHPLIN.SHPNO", row["SHPNO"], "line of another shipment")
    quantity(row["LINENO"], where, "SHPLIN.LINENO", positive=True)
    quantity(row["ORDLINE"], where, "SHPLIN.ORDLINE", positive=True)
    uncode(row["ITEMNO"], where, "SHPLIN.ITEMNO")
    quantity(row["SHPQTY"], where, "SHPLIN.SHPQTY", positive=True)
    return fail(where, "SHPLIN", None, "unreadable shipment line")


def _lines(
    children: Sequence[Mapping[str, Any]], shpno: str, where: Where
) -> tuple[list[dict], bool]:
    """The lines sorted by number, and whether every line is proven valid."""
    lines = []
    proven = True
    # Hot path: inline reads; signs are checked by the model, helpers only run to
    # name what went wrong.
    for row in children:
        line_no, order_line, qty = row["LINENO"], row["ORDLINE"], row["SHPQTY"]
        sku = row["ITEMNO"].rstrip(" ")
        if (row["SHPNO"] != shpno or type(line_no) is not int or type(order_line) is not int
                or type(qty) is not int or not sku):
            raise _bad_line(row, shpno, where)
        lines.append({"line_no": line_no, "order_line_no": order_line, "sku": sku,
                      "quantity": qty})
        # ShipmentLine: positive quantities, a Key sku (pattern: ASCII only).
        if proven and not (line_no > 0 and order_line > 0 and qty > 0
                           and len(sku) <= 40 and is_key(sku)):
            proven = False
    return sort_unique(lines, "line_no", where, "SHPLIN.LINENO"), proven


# The fast path: a record is built without pydantic's validation only when every
# value was checked against the canonical constraints (coexistence/canonical/
# models.py) by ``_read``; anything else goes through ``validate``, with the same
# result or the same TranslationError as ever.  Milestones need no check: they
# are read in lifecycle order, one per column pair, as UTC datetimes (the model's
# ``_utc`` returns a UTC datetime as is).  tests/unit/test_legacy_fast_path.py
# proves construct == model_validate.
#: ``model_fields_set`` of a validated Shipment: every field but ``schema_version``.
_SHIPMENT_FIELDS_SET = frozenset(Shipment.model_fields) - {"schema_version"}


def _read(
    header: Mapping[str, Any], children: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """The Shipment's values, in field order, and whether they are proven valid."""
    shpno = header["SHPNO"]
    where = Where(DOMAIN, shpno)
    lines, proven = _lines(children, shpno, where)
    values: dict[str, Any] = {
        "key": unpad_number(shpno, where, "SHPNO"),
        "schema_version": 1,
        "order_key": unpad_number(header["ORDNO"], where, "ORDNO"),
        "warehouse": uncode(header["WHSE"], where, "WHSE"),
        "carrier": header["CARRIER"].rstrip(" ") or None,
        "tracking_number": header["TRACKNO"].rstrip(" ") or None,
        "milestones": _milestones(header, where),
        "lines": lines,
    }
    if proven:
        # keys: digits (unpad_number); warehouse: not blank (uncode).
        warehouse, carrier, tracking = values["warehouse"], values["carrier"], values[
            "tracking_number"]
        proven = (
            lines != [] and len(values["key"]) <= 40 and len(values["order_key"]) <= 40
            and len(warehouse) <= 10
            and (carrier is None or len(carrier) <= 20)
            and (tracking is None or len(tracking) <= 40)
            and pydantic_text(warehouse + (carrier or "") + (tracking or ""))
        )
    return values, proven


def _build(values: dict[str, Any], proven: bool, where: Where) -> Shipment:
    if proven:
        values["milestones"] = tuple([construct(MilestoneEvent, e) for e in values["milestones"]])
        values["lines"] = tuple([construct(ShipmentLine, line) for line in values["lines"]])
        return construct(Shipment, values, set(_SHIPMENT_FIELDS_SET))
    del values["schema_version"]  # not given by the row: not in model_fields_set
    return validate(Shipment, values, where, COLUMNS, LINE_COLUMNS)


@guard_columns(DOMAIN, KEY_COLUMNS, TABLE, CHILD_TABLE)
def to_canonical(
    header: Mapping[str, Any], children: Sequence[Mapping[str, Any]] = ()
) -> Shipment:
    """A SHPHDR row and its SHPLIN rows -> ``Shipment``."""
    values, proven = _read(header, children)
    return _build(values, proven, Where(DOMAIN, header["SHPNO"]))


def from_canonical(
    record: Shipment, *, changed_by: str = DEFAULT_WRITER, changed_at: datetime | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``Shipment`` -> (SHPHDR row, SHPLIN rows sorted by LINENO)."""
    where = Where(DOMAIN, record.key)
    shpno = pad_number(record.key, KEY_WIDTH, where, "key")
    header: dict[str, Any] = {
        "SHPNO": shpno,
        "ORDNO": pad_number(record.order_key, KEY_WIDTH, where, "order_key"),
        "WHSE": code(record.warehouse, WHSE_WIDTH, where, "warehouse"),
        "CARRIER": char(record.carrier, CARRIER_WIDTH),
        "TRACKNO": char(record.tracking_number, TRACK_WIDTH),
    }
    reached = {event.milestone: event.at for event in record.milestones}
    for milestone, (date_col, time_col) in MILESTONE_COLUMNS.items():
        at = reached.get(milestone)
        header[date_col], header[time_col] = (
            (NO_DATE, NO_TIME) if at is None else datetime_to_ints(at)
        )
    header.update(audit(changed_by, changed_at))
    lines = [
        {
            "SHPNO": shpno,
            "LINENO": legacy_quantity(line.line_no, where, "lines.line_no"),
            "ORDLINE": legacy_quantity(line.order_line_no, where, "lines.order_line_no"),
            "ITEMNO": code(line.sku, ITEM_WIDTH, where, "lines.sku"),
            "SHPQTY": legacy_quantity(line.quantity, where, "lines.quantity"),
        }
        for line in record.lines
    ]
    return header, sort_unique(lines, "LINENO", where, "lines.line_no")


def normalise(record: Shipment) -> Shipment:
    """What a trip through the legacy ERP makes of ``record`` (see ``LOSSES``)."""
    return validate(Shipment, {
        **record.model_dump(),
        "carrier": fit_optional_text(record.carrier, CARRIER_WIDTH),
        "tracking_number": fit_optional_text(record.tracking_number, TRACK_WIDTH),
        "milestones": [
            {"milestone": e.milestone, "at": truncate_to_second(e.at)} for e in record.milestones
        ],
        "lines": [line.model_dump() for line in sorted(record.lines, key=lambda x: x.line_no)],
    }, Where(DOMAIN, record.key), {})

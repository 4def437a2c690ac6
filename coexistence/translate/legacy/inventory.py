"""Inventory: legacy INVBAL row <-> canonical ``InventoryBalance``.

The canonical key is ``"{warehouse}:{sku}"``; the legacy key is the composite
(WHSE, ITEMNO), written ``"DAL1|WID-01000"`` in its string form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from coexistence.canonical.models import InventoryBalance
from coexistence.legacy.models import INVBAL, ITEM_WIDTH, WHSE_WIDTH
from coexistence.translate.common import (
    Where,
    code,
    construct,
    fail,
    is_key,
    legacy_quantity,
    quantity,
    uncode,
)
from coexistence.translate.legacy._base import (
    DEFAULT_WRITER,
    KEY_SEPARATOR,
    audit,
    guard_columns,
    no_children,
    validate,
)

DOMAIN = "inventory"
TABLE = INVBAL
CHILD_TABLE = None
KEY_COLUMNS = ("WHSE", "ITEMNO")

#: Nothing is lost: codes are never truncated and quantities are integers in both models.
LOSSES: tuple[str, ...] = ()

COLUMNS: dict[str, str] = {
    "key": "WHSE|ITEMNO", "warehouse": "WHSE", "sku": "ITEMNO", "on_hand": "ONHAND",
    "allocated": "ALLOC",
}


def _split(key: str, separator: str, where: Where, field: str) -> tuple[str, str]:
    warehouse, sep, sku = key.partition(separator)
    if not sep or not warehouse or not sku or separator in sku:
        raise fail(where, field, key, f"not a warehouse{separator}sku key")
    return warehouse, sku


def legacy_key(canonical_key: str) -> str:
    """``"DAL1:WID-01000"`` -> ``"DAL1|WID-01000"``."""
    where = Where(DOMAIN, canonical_key)
    warehouse, sku = _split(canonical_key, ":", where, "key")
    code(warehouse, WHSE_WIDTH, where, "warehouse")
    code(sku, ITEM_WIDTH, where, "sku")
    return f"{warehouse}{KEY_SEPARATOR}{sku}"


def canonical_key(legacy_key: str) -> str:
    """``"DAL1|WID-01000"`` -> ``"DAL1:WID-01000"``."""
    warehouse, sku = _split(legacy_key, KEY_SEPARATOR, Where(DOMAIN, legacy_key), "WHSE|ITEMNO")
    return f"{warehouse}:{sku}"


def key_columns(legacy_key: str) -> dict[str, str]:
    warehouse, sku = _split(legacy_key, KEY_SEPARATOR, Where(DOMAIN, legacy_key), "WHSE|ITEMNO")
    return {"WHSE": warehouse.ljust(WHSE_WIDTH), "ITEMNO": sku.ljust(ITEM_WIDTH)}


# The fast path: a record is built without pydantic's validation only when every
# value was checked against the canonical constraints (coexistence/canonical/
# models.py) by ``_read``; anything else goes through ``validate``, with the same
# result or the same TranslationError as ever.  Quantities are ints >= 0 (quantity).
# tests/unit/test_legacy_fast_path.py proves construct == model_validate.
#: ``model_fields_set`` of a validated balance: every field but ``schema_version``.
_BALANCE_FIELDS_SET = frozenset(InventoryBalance.model_fields) - {"schema_version"}


def _where(header: Mapping[str, Any]) -> Where:
    return Where(DOMAIN, f"{header['WHSE'].rstrip(' ')}{KEY_SEPARATOR}"
                         f"{header['ITEMNO'].rstrip(' ')}")


def _read(
    header: Mapping[str, Any], children: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """The balance's values, in field order, and whether they are proven valid."""
    where = _where(header)
    no_children(children, where)
    warehouse = uncode(header["WHSE"], where, "WHSE")
    sku = uncode(header["ITEMNO"], where, "ITEMNO")
    key = f"{warehouse}:{sku}"
    values = {
        "key": key,
        "schema_version": 1,
        "warehouse": warehouse,
        "sku": sku,
        "on_hand": quantity(header["ONHAND"], where, "ONHAND"),
        "allocated": quantity(header["ALLOC"], where, "ALLOC"),
    }
    proven = (
        len(key) <= 40 and is_key(key) is not None
        and len(warehouse) <= 10 and len(sku) <= 40 and is_key(sku) is not None
    )
    return values, proven


def _build(values: dict[str, Any], proven: bool, where: Where) -> InventoryBalance:
    if proven:
        return construct(InventoryBalance, values, set(_BALANCE_FIELDS_SET))
    del values["schema_version"]  # not given by the row: not in model_fields_set
    return validate(InventoryBalance, values, where, COLUMNS)


@guard_columns(DOMAIN, KEY_COLUMNS, TABLE)
def to_canonical(
    header: Mapping[str, Any], children: Sequence[Mapping[str, Any]] = ()
) -> InventoryBalance:
    """An INVBAL row -> ``InventoryBalance``."""
    values, proven = _read(header, children)
    return _build(values, proven, _where(header))


def from_canonical(
    record: InventoryBalance, *, changed_by: str = DEFAULT_WRITER,
    changed_at: datetime | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``InventoryBalance`` -> (INVBAL row, [])."""
    where = Where(DOMAIN, record.key)
    if record.key != f"{record.warehouse}:{record.sku}" or ":" in record.warehouse:
        raise fail(where, "key", record.key, "must be warehouse:sku of the record")
    return {
        "WHSE": code(record.warehouse, WHSE_WIDTH, where, "warehouse"),
        "ITEMNO": code(record.sku, ITEM_WIDTH, where, "sku"),
        "ONHAND": legacy_quantity(record.on_hand, where, "on_hand"),
        "ALLOC": legacy_quantity(record.allocated, where, "allocated"),
        **audit(changed_by, changed_at),
    }, []


def normalise(record: InventoryBalance) -> InventoryBalance:
    """Inventory crosses the legacy ERP unchanged (``LOSSES`` is empty)."""
    return record

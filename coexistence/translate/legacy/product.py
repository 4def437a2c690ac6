"""Product: legacy ITEMMAST row <-> canonical ``Product``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from coexistence.canonical.models import ISO_CURRENCIES, Product, ProductStatus, UnitOfMeasure
from coexistence.legacy.models import ITEM_WIDTH, ITEMMAST, NAME_WIDTH
from coexistence.translate.common import (
    LOSS_GRAMS,
    LOSS_PRICE_UNITS,
    LOSS_TRAILING_SPACES,
    LOSS_TRUNCATION,
    LOSS_UPPER_CASE,
    Where,
    char_required,
    code,
    construct,
    fit_text,
    from_grams,
    from_price_units,
    is_key,
    pydantic_text,
    round_grams,
    round_price,
    to_grams,
    to_price_units,
    uncode,
)
from coexistence.translate.legacy._base import (
    DEFAULT_WRITER,
    audit,
    code_map,
    currency,
    decode,
    guard_columns,
    no_children,
    padded_codes,
    validate,
)

DOMAIN = "product"
TABLE = ITEMMAST
CHILD_TABLE = None
KEY_COLUMNS = ("ITEMNO",)

LOSSES: tuple[str, ...] = (
    LOSS_UPPER_CASE,  # ITEMDESC
    LOSS_TRUNCATION,  # ITEMDESC 30
    LOSS_TRAILING_SPACES,
    LOSS_GRAMS,  # WEIGHTG
    LOSS_PRICE_UNITS,  # LISTPRC, STDCOST
)

STATUS_CODES: dict[ProductStatus, str] = {
    ProductStatus.ACTIVE: "A",
    ProductStatus.DISCONTINUED: "D",
    ProductStatus.BLOCKED: "H",
}
_STATUS = code_map(STATUS_CODES)

UNIT_CODES: dict[UnitOfMeasure, str] = padded_codes({u: u.value for u in UnitOfMeasure}, 2)
_UNIT = code_map(UNIT_CODES, 2)

COLUMNS: dict[str, str] = {
    "key": "ITEMNO", "description": "ITEMDESC", "unit": "UOM", "weight_kg": "WEIGHTG",
    "status": "ITEMSTAT", "currency": "CURRCODE", "list_price": "LISTPRC",
    "standard_cost": "STDCOST",
}


def legacy_key(canonical_key: str) -> str:
    """SKUs are the same in both models (``"WID-01000"``); the legacy ERP holds 20 characters."""
    return code(canonical_key, ITEM_WIDTH, Where(DOMAIN, canonical_key), "key").rstrip(" ")


def canonical_key(legacy_key: str) -> str:
    return uncode(legacy_key, Where(DOMAIN, legacy_key), "ITEMNO")


def key_columns(legacy_key: str) -> dict[str, str]:
    return {"ITEMNO": legacy_key.ljust(ITEM_WIDTH)}


# The fast path: a record is built without pydantic's validation only when every
# value was checked against the canonical constraints (coexistence/canonical/
# models.py) by ``_read``; anything else goes through ``validate``, with the same
# result or the same TranslationError as ever.  Amounts are finite Decimals >= 0
# (from_grams, from_price_units), unit and status enum members (decode).
# tests/unit/test_legacy_fast_path.py proves construct == model_validate.
#: ``model_fields_set`` of a validated Product: every field but ``schema_version``.
_PRODUCT_FIELDS_SET = frozenset(Product.model_fields) - {"schema_version"}


def _read(
    header: Mapping[str, Any], children: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """The Product's values, in field order, and whether they are proven valid."""
    where = Where(DOMAIN, header["ITEMNO"])
    no_children(children, where)
    values = {
        "key": uncode(header["ITEMNO"], where, "ITEMNO"),
        "schema_version": 1,
        "description": header["ITEMDESC"].rstrip(" "),
        "unit": decode(_UNIT, header["UOM"], where, "UOM", "unit of measure"),
        "weight_kg": from_grams(header["WEIGHTG"], where, "WEIGHTG"),
        "status": decode(_STATUS, header["ITEMSTAT"], where, "ITEMSTAT", "item status"),
        "currency": currency(header["CURRCODE"], where),
        "list_price": from_price_units(header["LISTPRC"], where, "LISTPRC"),
        "standard_cost": from_price_units(header["STDCOST"], where, "STDCOST"),
    }
    key, description = values["key"], values["description"]
    proven = (
        len(key) <= 40 and is_key(key) is not None
        and 0 < len(description) <= 120 and pydantic_text(description)
        and values["currency"] in ISO_CURRENCIES
    )
    return values, proven


def _build(values: dict[str, Any], proven: bool, where: Where) -> Product:
    if proven:
        return construct(Product, values, set(_PRODUCT_FIELDS_SET))
    del values["schema_version"]  # not given by the row: not in model_fields_set
    return validate(Product, values, where, COLUMNS)


@guard_columns(DOMAIN, KEY_COLUMNS, TABLE)
def to_canonical(header: Mapping[str, Any], children: Sequence[Mapping[str, Any]] = ()) -> Product:
    """An ITEMMAST row -> ``Product``."""
    values, proven = _read(header, children)
    return _build(values, proven, Where(DOMAIN, header["ITEMNO"]))


def from_canonical(
    record: Product, *, changed_by: str = DEFAULT_WRITER, changed_at: datetime | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``Product`` -> (ITEMMAST row, [])."""
    where = Where(DOMAIN, record.key)
    return {
        "ITEMNO": code(record.key, ITEM_WIDTH, where, "key"),
        "ITEMDESC": char_required(record.description, NAME_WIDTH, where, "description"),
        "UOM": UNIT_CODES[record.unit],
        "WEIGHTG": to_grams(record.weight_kg, where, "weight_kg"),
        "ITEMSTAT": STATUS_CODES[record.status],
        "CURRCODE": record.currency,
        "LISTPRC": to_price_units(record.list_price, where, "list_price"),
        "STDCOST": to_price_units(record.standard_cost, where, "standard_cost"),
        **audit(changed_by, changed_at),
    }, []


def normalise(record: Product) -> Product:
    """What a trip through the legacy ERP makes of ``record`` (see ``LOSSES``)."""
    return validate(Product, {
        **record.model_dump(),
        "description": fit_text(record.description, NAME_WIDTH),
        "weight_kg": round_grams(record.weight_kg),
        "list_price": round_price(record.list_price),
        "standard_cost": round_price(record.standard_cost),
    }, Where(DOMAIN, record.key), {})

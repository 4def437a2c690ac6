"""Plumbing shared by the legacy translators: codes, audit columns, errors, keys."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import Enum
from operator import itemgetter
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import CHAR

from coexistence.errors import TranslationError
from coexistence.legacy.models import USER_WIDTH
from coexistence.ports import COEXIST_WRITER
from coexistence.translate.common import (
    NO_DATE,
    NO_TIME,
    Where,
    char,
    datetime_to_ints,
    fail,
    unchar,
    validation_error,
)

M = TypeVar("M", bound=BaseModel)
E = TypeVar("E", bound=Enum)

#: Separator of the parts of a composite legacy key in its string form ("DAL1|WID-01000").
KEY_SEPARATOR = "|"


def code_map(codes: Mapping[E, str], width: int = 1) -> dict[str, E]:
    """Reverse a canonical -> legacy code table, accepting padded and unpadded codes.

    Only the first canonical value of each code is kept: that is where a
    many-to-one code (``PROSPECT`` -> ``I``) comes back to (``INACTIVE``); the
    tables list the value the code comes back to first.
    """
    out: dict[str, E] = {}
    for value, legacy in codes.items():
        out.setdefault(legacy.ljust(width), value)
        out.setdefault(legacy.rstrip(" "), value)
    return out


def padded_codes(codes: Mapping[E, str], width: int) -> dict[E, str]:
    return {value: legacy.ljust(width) for value, legacy in codes.items()}


def decode(codes: Mapping[str, E], value: Any, where: Where, field: str, what: str) -> E:
    try:
        return codes[value]
    except (KeyError, TypeError):
        raise fail(where, field, value, f"unknown {what} code") from None


def currency(value: Any, where: Where, field: str = "CURRCODE") -> str:
    text = unchar(value, where, field)
    if not text:
        raise fail(where, field, value, "missing currency")
    return text


def flag(value: Any, where: Where, field: str) -> bool:
    if value == "Y":
        return True
    if value == "N":
        return False
    raise fail(where, field, value, "not a Y/N flag")


def audit(changed_by: str, changed_at: datetime | None) -> dict[str, Any]:
    """The audit columns of a header row written by ``changed_by`` at ``changed_at``."""
    day, time = (NO_DATE, NO_TIME) if changed_at is None else datetime_to_ints(changed_at)
    return {"LCHGUSER": char(changed_by, USER_WIDTH), "LCHGDATE": day, "LCHGTIME": time}


DEFAULT_WRITER = COEXIST_WRITER


def validate(
    model: type[M], data: dict[str, Any], where: Where, columns: Mapping[str, str],
    child_columns: Mapping[str, str] | None = None,
) -> M:
    """One ``model_validate`` for the whole record; errors name legacy columns.

    ``columns`` maps canonical fields to header columns (and the child list to
    the child table), ``child_columns`` the child rows' fields to their columns,
    so a bad line reads ``ORDLIN.ORDQTY`` with its line number in the reason.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = err["loc"]
        if child_columns and len(loc) >= 3 and type(loc[1]) is int:
            child = data[str(loc[0])][loc[1]]
            ident = child.get("line_no", child.get("site_id"))
            field, sub = str(loc[0]), str(loc[2])
            return_field = f"{columns.get(field, field)}.{child_columns.get(sub, sub)}"
            raise fail(where, return_field, err.get("input"), f"{err['msg']} (row {ident})"
                       ) from None
        raise validation_error(where, exc, columns) from None


def row_key(row: Mapping[str, Any], key_columns: tuple[str, ...]) -> str | None:
    """The string form of a row's legacy key, for error messages (None if unreadable)."""
    try:
        return KEY_SEPARATOR.join(str(row[c]).rstrip(" ") for c in key_columns)
    except (KeyError, TypeError):
        return None


def _column_types(table: type | None) -> dict[str, type]:
    if table is None:
        return {}
    return {
        col.name: str if isinstance(col.type, CHAR) else int
        for col in table.__table__.columns  # type: ignore[attr-defined]
    }


def _diagnose(
    domain: str, key_columns: tuple[str, ...], tables: tuple[type | None, type | None],
    header: Any, children: Any, exc: Exception,
) -> TranslationError:
    """Slow path after a fast-path failure: find the column holding a value of the wrong type."""
    if not isinstance(header, Mapping):
        return TranslationError(domain, None, "<row>", type(header).__name__, "not a legacy row")
    key = row_key(header, key_columns)
    if not isinstance(children, list | tuple):
        return TranslationError(domain, key, "<children>", type(children).__name__,
                                "child rows must be a list of rows")
    header_types, child_types = (_column_types(t) for t in tables)
    rows = [("", header_types, header)]
    rows += [(f"{tables[1].__name__}.", child_types, c) for c in children]  # type: ignore[union-attr]
    for prefix, types, row in rows:
        if not isinstance(row, Mapping):
            return TranslationError(domain, key, prefix.rstrip(".") or "<row>", row,
                                    "not a legacy row")
        for column, expected in types.items():
            value = row.get(column)
            if column in row and type(value) is not expected:
                kind = "text" if expected is str else "integer"
                return TranslationError(domain, key, prefix + column, value, f"not a {kind} value")
    return TranslationError(domain, key, "<row>", None, f"cannot read the row: {exc}")


def guard_columns(
    domain: str, key_columns: tuple[str, ...], table: type, child_table: type | None = None
):
    """Turn a missing column or a value of the wrong type into a ``TranslationError``.

    Translators read columns directly (``row["CUSTNAME"].rstrip(" ")``) for
    speed; this wrapper turns the resulting ``KeyError``/``AttributeError``/
    ``TypeError`` into an error naming the column.
    """

    def wrap(fn: Callable[..., M]) -> Callable[..., M]:
        @functools.wraps(fn)
        def to_canonical(header: Mapping[str, Any], children=()):
            try:
                return fn(header, children)
            except KeyError as exc:
                raise TranslationError(
                    domain, row_key(header, key_columns), str(exc.args[0]), None, "missing column"
                ) from None
            except (AttributeError, TypeError) as exc:
                raise _diagnose(
                    domain, key_columns, (table, child_table), header, children, exc
                ) from None

        return to_canonical

    return wrap


def check_child(
    header_value: Any, child: Mapping[str, Any], column: str, where: Where, table: str
) -> None:
    """A child row must belong to its header (same document number)."""
    if child[column] != header_value:
        raise fail(where, f"{table}.{column}", child[column], "child row of another document")


def sort_unique(
    rows: list[dict[str, Any]], key: str, where: Where, field: str
) -> list[dict[str, Any]]:
    """Rows sorted by ``row[key]`` in place; a repeated value is an error (a legacy key)."""
    if len(rows) > 1:
        rows.sort(key=itemgetter(key))
        previous = None
        for row in rows:
            if row[key] == previous:
                value = previous.rstrip(" ") if isinstance(previous, str) else previous
                raise fail(where, field, value, "repeated in one document")
            previous = row[key]
    return rows


def no_children(children: Any, where: Where) -> None:
    """Single-table domains take no child rows; passing some is a caller's mistake."""
    if children:
        raise fail(where, "<children>", len(children), "this domain has no child rows")

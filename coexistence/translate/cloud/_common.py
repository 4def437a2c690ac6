"""Plumbing shared by the cloud translators: parsing, error mapping, quantities.

Every failure leaves this package as a ``TranslationError`` naming the domain,
the record key, the field path *in cloud terms* (``salesOrderLines.1.quantity``)
and the offending value; a pydantic ``ValidationError`` never escapes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from coexistence.cloud.models import CloudResource
from coexistence.errors import TranslationError

# Re-exported: the cloud translators build documents from validated canonical
# records whose every constraint is at least as tight as the cloud one (the
# round-trip property tests check the result equals a validated document and
# serialises to JSON the cloud model accepts), so they skip re-validation.
from coexistence.translate.common import construct as construct

R = TypeVar("R", bound=CloudResource)
M = TypeVar("M", bound=BaseModel)

#: The largest decimal exponent a cloud quantity may have to become a canonical
#: ``int`` (so quantities below 10**31).  Decimal strings like ``"1E+999999"``
#: are finite and valid JSON; converting them to ``int`` would allocate
#: megabytes, so they are refused.
MAX_QUANTITY_EXPONENT = 30

#: Field names the server owns (Python names); left out of write bodies.
_SERVER_FIELDS = frozenset({"id", "last_modified_date_time", "odata_etag"})


#: Canonical field name -> cloud JSON name, or (cloud name, names inside it) for
#: a nested object whose fields are named differently from the outer level.
Names = Mapping[str, "str | tuple[str, Names]"]


def _cloud_loc(loc: tuple[int | str, ...], names: Names) -> list[int | str]:
    parts: list[int | str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(p)
            continue
        name = names.get(p, p)
        if isinstance(name, tuple):
            name, names = name
        parts.append(name)
    return parts


def _cloud_value(doc: CloudResource, loc: list[int | str], fallback: Any) -> Any:
    # The value as the cloud wrote it ("-3", not the int -3 canonical was offered).
    value: Any = to_json_dict(doc)
    try:
        for p in loc:
            value = value[p]
    except (KeyError, IndexError, TypeError):
        return fallback
    return value


def _error_from_validation(
    domain: str,
    key: str | None,
    exc: ValidationError,
    names: Names,
    doc: CloudResource | None = None,
) -> TranslationError:
    err = exc.errors(include_url=False)[0]
    more = exc.error_count() - 1
    reason = err["msg"] + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")
    loc = _cloud_loc(err["loc"], names)
    if err["type"] == "missing":
        value = None  # pydantic's "input" here is the whole enclosing object
    elif doc is None:
        value = err.get("input")
    else:
        value = _cloud_value(doc, loc, err.get("input"))
    return TranslationError(domain, key, ".".join(map(str, loc)) or "<root>", value, reason)


def parse(model: type[R], data: bytes | str | Mapping[str, Any]) -> R:
    """Validate a cloud JSON document (bytes/str) or decoded object into ``model``.

    Raises ``TranslationError`` with the camelCase field path on any defect:
    malformed JSON, wrong types, unknown fields, bad dates, non-finite numbers.
    """
    try:
        if isinstance(data, bytes | str):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        raise _error_from_validation(model.domain, _number_of(data), exc, {}) from None


def _number_of(data: bytes | str | Mapping[str, Any]) -> str | None:
    # Only on the error path: recover the business number to name the record.
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except ValueError:
            return None
    number = data.get("number") if isinstance(data, Mapping) else None
    return number if isinstance(number, str) else None


def build_canonical(
    model: type[M], doc: CloudResource, data: dict[str, Any], names: Names
) -> M:
    """Validate canonical ``data`` built from ``doc``; errors name the cloud path and value.

    ``names`` maps canonical field names to their cloud (camelCase) names, so
    ``sites.0.region`` is reported as ``addresses.0.state``.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _error_from_validation(doc.domain, doc.number, exc, names, doc) from None


def quantity(domain: str, key: str, path: str, value: Decimal) -> int:
    """A cloud decimal quantity as a canonical whole number.

    Lossy spot, refused rather than rounded: the cloud allows fractional
    quantities (``"2.5"``), canonical counts whole units.  ``"3.000"`` is fine.
    Sign is left to the canonical model, which names the field when negative.
    """
    if value.adjusted() > MAX_QUANTITY_EXPONENT:
        raise TranslationError(domain, key, path, str(value), "quantity out of range")
    if value != value.to_integral_value():
        raise TranslationError(
            domain, key, path, str(value), "fractional quantity; canonical counts whole units"
        )
    return int(value)


def status(domain: str, key: str, path: str, value: Any, mapping: Mapping[Any, Any]) -> Any:
    """Map a cloud code (status, unit, address type, channel) to its canonical twin.

    A code without a twin (``Draft`` invoice) is refused by name, never guessed.
    """
    try:
        return mapping[value]
    except KeyError:
        raise TranslationError(
            domain, key, path, str(value), "cloud code has no canonical twin"
        ) from None


def to_json_dict(doc: CloudResource, *, body: bool = False) -> dict[str, Any]:
    """The document as JSON-able camelCase data.

    With ``body=True`` the server-managed fields (``id``, ``lastModifiedDateTime``,
    ``@odata.etag``) are left out, as a create or update request sends it.
    """
    return doc.model_dump(
        mode="json", by_alias=True, exclude=set(_SERVER_FIELDS) if body else None
    )


def to_json_bytes(doc: CloudResource, *, body: bool = False) -> bytes:
    """The document as camelCase JSON bytes, serialised by pydantic-core.

    Same content as ``json.dumps(to_json_dict(doc, body=body))`` at about half
    the cost: use it where the bytes go straight onto the wire.
    """
    exclude = set(_SERVER_FIELDS) if body else None
    return doc.model_dump_json(by_alias=True, exclude=exclude).encode()

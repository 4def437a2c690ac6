"""Field ownership: which system owns which fields of a domain.

Declarative and validated at start.  A change to an owned field that comes
from a non-owner is not propagated: the owner's value is kept and the attempt
is reported (``OwnershipViolation``), so the CRM can never overwrite a credit
limit and the ERP can never overwrite the CRM's contacts.

Fields not listed are owned by the system of record of the domain (whichever
ERP the cutover flag names), which is the default for everything master data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coexistence.canonical import MODELS, CanonicalRecord
from coexistence.errors import TranslationError

#: The systems that may own fields.  ``erp`` means "the system of record of the domain".
OWNERS: frozenset[str] = frozenset({"erp", "crm", "edi", "portal"})

#: domain -> field -> owner.  Unlisted fields belong to ``erp``.
FIELD_OWNERSHIP: dict[str, dict[str, str]] = {
    "customer": {
        "contact_name": "crm",
        "contact_email": "crm",
        "contact_phone": "crm",
        # Stated explicitly because they are the fields people fight over.
        "credit_limit": "erp",
        "credit_hold": "erp",
        "terms": "erp",
    },
}


class OwnershipConfigError(ValueError):
    """The ownership table names a domain, field or owner that does not exist."""


def validate_ownership(table: Mapping[str, Mapping[str, str]] = FIELD_OWNERSHIP) -> None:
    """Refuse a table that names an unknown domain, field or owner (called at start)."""
    for domain, fields in table.items():
        if domain not in MODELS:
            raise OwnershipConfigError(f"field ownership: unknown domain {domain!r}")
        known = set(MODELS[domain].model_fields)
        for field, owner in fields.items():
            if field not in known:
                raise OwnershipConfigError(f"field ownership: {domain} has no field {field!r}")
            if owner not in OWNERS:
                raise OwnershipConfigError(
                    f"field ownership: {domain}.{field} owner {owner!r} not in {sorted(OWNERS)}"
                )


OwnershipTable = Mapping[str, Mapping[str, str]]


def owner_of(domain: str, field: str, table: OwnershipTable = FIELD_OWNERSHIP) -> str:
    return table.get(domain, {}).get(field, "erp")


@dataclass(frozen=True, slots=True)
class OwnershipViolation:
    """A non-owner tried to change an owned field; the owner's value was kept."""

    domain: str
    key: str
    field: str
    owner: str
    source: str
    kept: Any
    refused: Any


def merge_owned(
    current: CanonicalRecord | None,
    incoming: CanonicalRecord,
    source: str,
    table: Mapping[str, Mapping[str, str]] = FIELD_OWNERSHIP,
) -> tuple[CanonicalRecord, tuple[OwnershipViolation, ...]]:
    """Apply ``incoming`` from ``source`` on top of ``current``, keeping fields ``source`` does
    not own.  ``source`` is ``erp`` for either ERP.  A new record (no ``current``) is taken
    whole: nobody owned its fields yet.

    A field whose two values are the same once both records are normalised as the legacy
    ERP holds them (upper case, widths, rounding: ``coexistence.translate.legacy``) is no
    attempt to change it: the held value is kept and nothing is reported.  Such a
    difference is coexist's own making -- a CRM-typed "Walk-In Co" created while the cloud
    was the SoR comes back from the legacy ERP as "WALK-IN CO" -- never a person's edit.
    """
    if current is None:
        return incoming, ()
    domain = incoming.domain
    owned = table.get(domain, {})
    keep: dict[str, Any] = {}
    violations = []
    norm_current = norm_incoming = None
    for field in type(incoming).model_fields:
        owner = owned.get(field, "erp")
        if owner == source:
            continue
        old, new = getattr(current, field), getattr(incoming, field)
        if old != new:
            keep[field] = old
            if norm_current is None:
                norm_current, norm_incoming = _normalised(current), _normalised(incoming)
            if getattr(norm_current, field) == getattr(norm_incoming, field):
                continue
            violations.append(
                OwnershipViolation(domain, incoming.key, field, owner, source, old, new)
            )
    if not keep:
        return incoming, ()
    return incoming.model_copy(update=keep), tuple(violations)


def _normalised(record: CanonicalRecord) -> CanonicalRecord:
    """``record`` as the legacy ERP holds it; unchanged when it cannot say (no translator
    for the domain, or a value the legacy ERP cannot hold: then every difference counts)."""
    from coexistence.translate.legacy import LEGACY_TRANSLATORS

    translator = LEGACY_TRANSLATORS.get(record.domain)
    if translator is None:
        return record
    try:
        return translator.normalise(record)
    except TranslationError:
        return record

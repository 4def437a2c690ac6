"""Translators between legacy ERP rows and canonical records, one module per domain.

Every module exposes the same pure functions, on plain dicts keyed by legacy
column names (what ``connection.execute(...).mappings()`` yields):

* ``to_canonical(header, children=()) -> CanonicalModel``
* ``from_canonical(record, *, changed_by=COEXIST_WRITER, changed_at=None)
  -> (header row, child rows)``; the audit columns LCHGUSER/LCHGDATE/LCHGTIME
  are filled from ``changed_by``/``changed_at`` (0/0 when no time is given);
* ``legacy_key(canonical_key)`` / ``canonical_key(legacy_key)``: the string
  forms used by the xref (``"10042"`` <-> ``"0000010042"``; composite keys are
  joined by ``|``: ``"DAL1:WID-01000"`` <-> ``"DAL1|WID-01000"``);
* ``key_columns(legacy_key) -> {column: stored value}`` for a WHERE clause;
* ``normalise(record)``: what a trip canonical -> legacy -> canonical makes of
  a record; every lossy spot is listed in the module's ``LOSSES``;
* ``TABLE``, ``CHILD_TABLE``, ``KEY_COLUMNS``, ``COLUMNS`` (canonical field -> column).

Any row or record that cannot be translated raises ``TranslationError`` naming
domain, key, field and value; a pydantic ``ValidationError`` never escapes.
"""

from __future__ import annotations

from types import ModuleType

from coexistence.canonical.models import CanonicalModel
from coexistence.translate.legacy import (
    customer,
    inventory,
    invoice,
    order,
    price,
    product,
    shipment,
)

#: Domain -> translator module, in cutover dependency order.
LEGACY_TRANSLATORS: dict[str, ModuleType] = {
    "customer": customer,
    "product": product,
    "price": price,
    "inventory": inventory,
    "order": order,
    "shipment": shipment,
    "invoice": invoice,
}



def normalise(record: CanonicalModel) -> CanonicalModel:
    """``record`` as the legacy ERP can hold it (any domain).

    Reconciliation compares a cloud record with a legacy one through this:
    ``normalise(cloud_record) == legacy_record`` means "no drift the legacy ERP
    could have represented".
    """
    return LEGACY_TRANSLATORS[record.domain].normalise(record)


__all__ = ["LEGACY_TRANSLATORS", "normalise"]

"""Per-domain tolerances: what is not drift, named so the report can say so.

The one tolerance every domain has is the legacy ERP's documented
normalisation (each legacy translator's ``LOSSES``): the cloud side is
brought into legacy normal form (``normalise``) before comparing, so a name
the legacy ERP upper-cased and truncated, a price it rounded to 1/10,000 or a
prospect it folded to inactive is not drift.  The legacy side is already in
that form (it was read from the legacy ERP; ``normalise`` is idempotent there,
see tests/unit/test_reconcile_digest.py).
"""

from __future__ import annotations

from coexistence.canonical import CanonicalRecord
from coexistence.translate.legacy import LEGACY_TRANSLATORS

#: The name of the tolerance, as the report prints it.
LEGACY_NORMALISATION = "legacy normalisation"


def tolerances_for(domain: str) -> tuple[str, ...]:
    """The named tolerances of ``domain``: ``"legacy normalisation: <loss>"`` each."""
    return tuple(f"{LEGACY_NORMALISATION}: {loss}"
                 for loss in LEGACY_TRANSLATORS[domain].LOSSES)


def normalise(record: CanonicalRecord) -> CanonicalRecord:
    """The record as the legacy ERP would hold it (the cloud side's comparison form)."""
    return LEGACY_TRANSLATORS[record.domain].normalise(record)

"""Reconciliation of the two ERPs: matching, field diff, duplicates, orphan xrefs, drift,
segment checksums and their bisection.  Pure: the readers and the store live in
``workers.reconcile``."""

from coexistence.reconcile.digest import (
    NATURAL_KEY_DESCRIPTIONS,
    natural_key,
    natural_key_hash,
    record_digest,
    rows_digest,
)
from coexistence.reconcile.engine import Item, Reconciler, diff_records, merge
from coexistence.reconcile.findings import REPAIRABLE, Counts, Finding, Kind, Report
from coexistence.reconcile.segments import Segment, bisect_window, checksum
from coexistence.reconcile.tolerances import tolerances_for

__all__ = [
    "NATURAL_KEY_DESCRIPTIONS", "REPAIRABLE", "Counts", "Finding", "Item", "Kind", "Reconciler",
    "Report", "Segment", "bisect_window", "checksum", "diff_records", "merge",
    "natural_key", "natural_key_hash", "record_digest", "rows_digest", "tolerances_for",
]

"""Record digests both ERPs can compute identically, and natural keys.

The common form is the **legacy row form** of the record in legacy normal
form: the header row and the child rows the legacy translator writes for it
(``from_canonical``), without the audit columns, text right-trimmed.

* The legacy side hashes the rows it reads, without translating them (the
  rows already are the legacy normal form): a few microseconds per record.
* The cloud side (the simulator's checksum endpoint, or the client on a full
  stream) translates its document to canonical, applies the legacy
  normalisation (``normalise``: upper-case, truncation, rounding, status
  folds - the declared tolerances) and then ``from_canonical``.

A digest is a signed 64-bit integer (it fits a SQLite INTEGER); a segment's
checksum is the count and the sum modulo 2**64 of its records' digests, so
segments can be merged and split in any order.  Equal digests mean equal
records (up to a 2**-64 collision); different digests only mean "compare the
records", so a representation quirk (a row padded differently by hand) costs
a comparison, never a false finding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from hashlib import blake2b
from typing import Any

from coexistence.canonical import CanonicalRecord
from coexistence.translate.legacy import LEGACY_TRANSLATORS

#: Audit columns: who/when last changed a legacy row, not part of the record.
AUDIT_COLUMNS: frozenset[str] = frozenset({"LCHGUSER", "LCHGDATE", "LCHGTIME"})
_MASK = (1 << 64) - 1
_SIGN = 1 << 63


@cache
def digest_columns(domain: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(header columns, child columns) that make up the digest of ``domain``, in table
    order: every column the translator writes, less the audit columns."""
    t = LEGACY_TRANSLATORS[domain]
    head = tuple(c.name for c in t.TABLE.__table__.c if c.name not in AUDIT_COLUMNS)
    child = (tuple(c.name for c in t.CHILD_TABLE.__table__.c if c.name not in AUDIT_COLUMNS)
             if t.CHILD_TABLE is not None else ())
    return head, child


def values_digest(header: tuple, children: tuple[tuple, ...]) -> int:
    """Digest of a header's and its children's digest-column values, in column order.

    Values are taken as stored (CHAR text space-padded, numbers as int): the
    legacy reader hashes rows as the database returns them, without touching
    each value, which is what makes the legacy pass cheap.
    """
    n = int.from_bytes(blake2b(repr((header, children)).encode(), digest_size=8).digest(), "big")
    return n - (1 << 64) if n & _SIGN else n


def rows_digest(domain: str, header: Mapping[str, Any],
                children: Sequence[Mapping[str, Any]]) -> int:
    """Digest of legacy rows given as mappings (column -> value)."""
    head, child = digest_columns(domain)
    return values_digest(tuple(header[c] for c in head),
                         tuple(tuple(r[c] for c in child) for r in children))


def record_digest(record: CanonicalRecord, *, normalised: bool = False) -> int:
    """Digest of a canonical record: legacy normalisation, then its legacy row form."""
    t = LEGACY_TRANSLATORS[record.domain]
    if not normalised:
        record = t.normalise(record)
    header, children = t.from_canonical(record)
    return rows_digest(record.domain, header, children)


def add_digest(total: int, digest: int) -> int:
    """``total + digest`` modulo 2**64, as the unsigned checksum sum."""
    return (total + digest) & _MASK


# --------------------------------------------------------------------------- natural keys


def _customer_natural_key(record) -> tuple | None:
    # Name + postal code of the (first) bill-to + tax id: what a person would call
    # "the same customer" whatever number either ERP gave it.
    bill_to = next((s.postal_code for s in sorted(record.sites, key=lambda s: s.site_id)
                    if s.kind == "bill_to"), None)
    return (record.name, bill_to, record.tax_id)


def _price_natural_key(record) -> tuple | None:
    return (record.customer_key, record.sku, record.valid_from.isoformat())


#: Domain -> natural key of a (normalised) record.  Domains not listed have none
#: beyond their business key, so they have no duplicates by natural key.
NATURAL_KEYS = {
    "customer": _customer_natural_key,
    "price": _price_natural_key,
}

#: What each natural key is made of, for the report.
NATURAL_KEY_DESCRIPTIONS: dict[str, str] = {
    "customer": "normalised name + postal code of the bill-to site + tax id",
    "price": "customer + SKU + valid-from date",
}


def natural_key(record: CanonicalRecord) -> tuple | None:
    """The record's natural key (of its legacy-normalised form), or ``None``."""
    fn = NATURAL_KEYS.get(record.domain)
    return fn(record) if fn else None


def natural_key_hash(nk: tuple | None) -> int | None:
    """A signed 64-bit hash of a natural key (stable across processes)."""
    if nk is None:
        return None
    n = int.from_bytes(blake2b(repr(nk).encode(), digest_size=8).digest(), "big")
    return n - (1 << 64) if n & _SIGN else n


def _customer_row_natural_key(header: Sequence[Any], children: Sequence[Sequence[Any]]) -> tuple:
    name, tax_id = header
    bill_to = next((zipcode.rstrip(" ") for _, kind, zipcode in sorted(map(tuple, children))
                    if kind == "B"), None)
    return (name.rstrip(" "), bill_to, tax_id.rstrip(" ") or None)


def _price_row_natural_key(header: Sequence[Any], children: Sequence[Sequence[Any]]) -> tuple:
    custno, itemno, effdate = header
    day = int(effdate)
    return (custno.lstrip("0") or "0", itemno.rstrip(" "),
            f"{day // 10000:04d}-{day // 100 % 100:02d}-{day % 100:02d}")


#: The same natural keys computed from legacy rows, without translating them
#: (tests/unit/test_reconcile_digest.py holds them equal to ``NATURAL_KEYS``):
#: domain -> (header columns, child columns, function of their values in that order).
ROW_NATURAL_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...], Any]] = {
    "customer": (("CUSTNAME", "TAXID"), ("SITENO", "SITETYPE", "ZIPCODE"),
                 _customer_row_natural_key),
    "price": (("CUSTNO", "ITEMNO", "EFFDATE"), (), _price_row_natural_key),
}


def rows_natural_key(domain: str, header: Mapping[str, Any],
                     children: Sequence[Mapping[str, Any]]) -> tuple | None:
    """The natural key of legacy rows given as mappings, or ``None``."""
    spec = ROW_NATURAL_KEYS.get(domain)
    if spec is None:
        return None
    head, child, fn = spec
    return fn(tuple(header[c] for c in head), [tuple(r[c] for c in child) for r in children])

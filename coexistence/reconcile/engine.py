"""Matching two sorted streams of records and collecting the findings (pure).

Both sides arrive as ``Item``s sorted by canonical key (code-point order):
key, digest (``coexistence.reconcile.digest``), natural-key hash, and a way to
load the legacy-normalised canonical record only when a comparison needs it.
The ``Reconciler`` is fed every key of the union once, in key order, either
as a pair (``pair``) or as a run of records a segment checksum proved equal
(``equal``); it merges the xref entries (sorted the same way) alongside, so an
entry whose key passes no record is an orphan.  Memory: the duplicate
trackers (about 16 bytes per record and side) and the records found on one
side only, held until the end to be paired by natural key (bounded by
``PENDING_MAX_RECORDS``).
"""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic import BaseModel

from coexistence.canonical import CanonicalRecord
from coexistence.errors import CoexistError
from coexistence.ownership import owner_of
from coexistence.reconcile.findings import Counts, Finding, Kind, plain
from coexistence.xref import XrefEntry

#: Records found on one side only that are held for natural-key pairing; beyond
#: this many per side they are reported as missing without pairing.
PENDING_MAX_RECORDS = 100_000


class Item:
    """One record of one side, as the matcher needs it.

    ``error`` is set when the record does not translate to the canonical model
    (by the reader, or on the first load): the reconciler then reports it as
    ``untranslatable`` and goes on.
    """

    __slots__ = ("key", "digest", "nk", "_load", "_record", "error")

    def __init__(self, key: str, digest: int, nk: int | None = None,
                 load: Callable[[], CanonicalRecord] | None = None,
                 record: CanonicalRecord | None = None, error: str | None = None) -> None:
        self.key, self.digest, self.nk = key, digest, nk
        self._load, self._record = load, record
        self.error = error

    @property
    def record(self) -> CanonicalRecord:
        if self._record is None:
            self._record = self._load()  # type: ignore[misc]
        return self._record

    def __repr__(self) -> str:
        return f"Item({self.key!r}, {self.digest})"


class UnsortedStream(ValueError):
    """A side's stream was not in strictly ascending key order."""


def merge(left: Iterable[Item], right: Iterable[Item],
          ) -> Iterator[tuple[Item | None, Item | None]]:
    """Full outer merge-join of two streams sorted by key (refuses unsorted input)."""
    li, ri = iter(left), iter(right)
    a, b = next(li, None), next(ri, None)
    last_a = last_b = None
    while a is not None or b is not None:
        if a is not None and last_a is not None and a.key <= last_a:
            raise UnsortedStream(f"legacy stream not sorted: {a.key!r} after {last_a!r}")
        if b is not None and last_b is not None and b.key <= last_b:
            raise UnsortedStream(f"cloud stream not sorted: {b.key!r} after {last_b!r}")
        if b is None or (a is not None and a.key < b.key):
            assert a is not None  # the loop runs while one side has an item
            last_a = a.key
            yield a, None
            a = next(li, None)
        elif a is None or b.key < a.key:
            last_b = b.key
            yield None, b
            b = next(ri, None)
        else:
            last_a = last_b = a.key
            yield a, b
            a, b = next(li, None), next(ri, None)


# --------------------------------------------------------------------------- field diff


def _identity(value: Any) -> Any:
    # Child models (sites, lines, breaks, milestones) are identified by their first field.
    first = next(iter(type(value).model_fields))
    return plain(getattr(value, first))


def diff_values(path: str, a: Any, b: Any) -> Iterator[tuple[str, Any, Any]]:
    """(path, legacy value, cloud value) for each differing leaf; children matched by id."""
    if a == b:
        return
    if isinstance(a, BaseModel) and isinstance(b, BaseModel) and type(a) is type(b):
        for name in type(a).model_fields:
            yield from diff_values(f"{path}.{name}" if path else name,
                                   getattr(a, name), getattr(b, name))
        return
    if (isinstance(a, tuple) and isinstance(b, tuple) and a and b
            and all(isinstance(x, BaseModel) for x in (*a, *b))):
        left = {_identity(x): x for x in a}
        right = {_identity(x): x for x in b}
        for ident in sorted(left.keys() | right.keys(), key=str):
            yield from diff_values(f"{path}[{ident}]", left.get(ident), right.get(ident))
        return
    yield path, plain(a), plain(b)


def diff_records(legacy: CanonicalRecord, cloud: CanonicalRecord,
                 skip: frozenset[str] = frozenset()) -> list[tuple[str, Any, Any]]:
    """Differing fields of two records of one domain (top-level fields in ``skip`` ignored)."""
    out: list[tuple[str, Any, Any]] = []
    for name in type(legacy).model_fields:
        if name not in skip:
            out.extend(diff_values(name, getattr(legacy, name), getattr(cloud, name)))
    return out


# --------------------------------------------------------------------------- duplicates


class DuplicateTracker:
    """Natural-key hashes and keys of one side in compact arrays; groups found at the end."""

    def __init__(self) -> None:
        self.hashes = array("q")
        self.offsets = array("Q", [0])
        self.keys = bytearray()

    def add(self, nk: int, key: str) -> None:
        self.hashes.append(nk)
        self.keys += key.encode()
        self.offsets.append(len(self.keys))

    def _key(self, i: int) -> str:
        return self.keys[self.offsets[i]:self.offsets[i + 1]].decode()

    def groups(self) -> list[list[str]]:
        """Keys sharing a natural key, each group sorted, groups sorted by first key."""
        # The repeated hashes first, from one sorted copy of the hashes (not a sorted list of
        # indices keyed by hash: two lists of a million ints, the peak of a 1M-record run),
        # then one pass for the keys of those few.
        repeated: set[int] = set()
        previous = None
        for h in sorted(self.hashes):
            if h == previous:
                repeated.add(h)
            previous = h
        by_hash: dict[int, list[str]] = {}
        for i, h in enumerate(self.hashes):
            if h in repeated:
                by_hash.setdefault(h, []).append(self._key(i))
        return sorted(sorted(keys) for keys in by_hash.values())


# --------------------------------------------------------------------------- reconciler


class Reconciler:
    """Counts and findings of one domain, fed in key order."""

    def __init__(self, domain: str, *, xref: Iterable[XrefEntry] = (),
                 on_finding: Callable[[Finding], None] = lambda f: None,
                 pending_max: int = PENDING_MAX_RECORDS) -> None:
        self.domain = domain
        self.counts = Counts()
        self._emit_cb = on_finding
        self._xref = iter(xref)
        self._entry = next(self._xref, None)
        self._dups = {"legacy": DuplicateTracker(), "cloud": DuplicateTracker()}
        self._cloud_dup_groups: list[list[str]] | None = None
        self._given_dups: dict[str, list[list[str]]] = {}
        self._pending: dict[str, list[tuple[Item, bool]]] = {"legacy": [], "cloud": []}
        self.pending_max = pending_max
        #: True when more one-sided records came than could be held for pairing.
        self.pairing_truncated = False

    # ------------------------------------------------------------------ feeding

    def observe(self, side: str, item: Item) -> None:
        """Track ``item`` for duplicates (every record of a side that is read)."""
        if item.nk is not None:
            self._dups[side].add(item.nk, item.key)

    def cloud_duplicates(self, groups: list[list[str]]) -> None:
        """Duplicate groups the cloud computed itself (its records were not all streamed)."""
        self._cloud_dup_groups = [sorted(g) for g in groups]

    def side_duplicates(self, side: str, groups: list[list[str]]) -> None:
        """Duplicate groups of one side found elsewhere (the digest index), not by
        ``observe`` (that side's records were not all read)."""
        self._given_dups[side] = [sorted(g) for g in groups]

    def equal(self, items: Iterable[Item]) -> None:
        """Records present and equal on both sides (proved by a segment checksum)."""
        n = 0
        for item in items:
            self._xref_at(item.key)
            n += 1
        c = self.counts
        c.rows_legacy += n
        c.rows_cloud += n
        c.unchanged += n

    def pair(self, legacy: Item | None, cloud: Item | None) -> None:
        """One key of the union: the record on each side (``None`` where absent)."""
        key = (legacy or cloud).key  # type: ignore[union-attr]
        has_xref = self._xref_at(key)
        c = self.counts
        if legacy is not None:
            c.rows_legacy += 1
        if cloud is not None:
            c.rows_cloud += 1
        if legacy is None or cloud is None:
            side, item = ("legacy", legacy) if cloud is None else ("cloud", cloud)
            self._one_sided(side, item, has_xref)  # type: ignore[arg-type]
            return
        if legacy.digest == cloud.digest and legacy.error is None and cloud.error is None:
            c.unchanged += 1
            return
        legacy_record, cloud_record = self._load("legacy", legacy), self._load("cloud", cloud)
        if legacy_record is None or cloud_record is None:
            self.counts.untranslatable += 1
            for side, item, record in (("legacy", legacy, legacy_record),
                                       ("cloud", cloud, cloud_record)):
                if record is None:
                    self._untranslatable(side, item, count=False)
            return
        diffs = diff_records(legacy_record, cloud_record)
        if not diffs:
            # Same record, different representation (e.g. a hand-padded column).
            c.unchanged += 1
            return
        c.mismatched += 1
        for path, lv, cv in diffs:
            self._emit(Finding(Kind.MISMATCH, self.domain, key, field=path, legacy=lv, cloud=cv,
                               owner=owner_of(self.domain, path.split(".")[0].split("[")[0])))

    def finish(self) -> Counts:
        """Emit what needs the whole run (orphans at the end, pairing, duplicates)."""
        while self._entry is not None:
            self._orphan(self._entry)
            self._entry = next(self._xref, None)
        self._pair_by_natural_key()
        groups = {"legacy": self._dups["legacy"].groups(),
                  "cloud": (self._cloud_dup_groups if self._cloud_dup_groups is not None
                            else self._dups["cloud"].groups())}
        groups.update(self._given_dups)
        for side, side_groups in groups.items():
            for keys in side_groups:
                self.counts.duplicates += len(keys) - 1
                self._emit(Finding(Kind.DUPLICATE, self.domain, keys[0], side=side,
                                   keys=tuple(keys),
                                   detail=f"{len(keys)} {side} records share one natural key"))
        return self.counts

    # ------------------------------------------------------------------ internals

    def _emit(self, finding: Finding) -> None:
        self.counts.findings += 1
        self._emit_cb(finding)

    def _xref_at(self, key: str) -> bool:
        while self._entry is not None and self._entry.canonical_key < key:
            self._orphan(self._entry)
            self._entry = next(self._xref, None)
        if self._entry is not None and self._entry.canonical_key == key:
            self._entry = next(self._xref, None)
            return True
        return False

    def _orphan(self, entry: XrefEntry) -> None:
        self.counts.orphans += 1
        self._emit(Finding(Kind.ORPHAN_XREF, self.domain, entry.canonical_key,
                           legacy=entry.legacy_key, cloud=entry.cloud_id,
                           detail="xref entry matches no record in either ERP"))

    def _load(self, side: str, item: Item) -> CanonicalRecord | None:
        """The item's record, or ``None`` (and ``item.error`` set) when it does not
        translate: a record the canonical model cannot hold is a finding, not a crash."""
        if item.error is None:
            try:
                return item.record
            except CoexistError as exc:
                item.error = str(exc)
        return None

    def _untranslatable(self, side: str, item: Item, *, count: bool = True) -> None:
        if count:
            self.counts.untranslatable += 1
        self._emit(Finding(Kind.UNTRANSLATABLE, self.domain, item.key, side=side,
                           detail=f"{side} ERP: {item.error}"))

    def _one_sided(self, side: str, item: Item, has_xref: bool) -> None:
        pending = self._pending[side]
        if item.error is not None:
            self._untranslatable(side, item)
            return
        if item.nk is not None and not has_xref and len(pending) < self.pending_max:
            # Loaded now: its source may not be readable later.
            if self._load(side, item) is None:
                self._untranslatable(side, item)
                return
            pending.append((item, has_xref))
            return
        if item.nk is not None and not has_xref:
            self.pairing_truncated = True
        self._missing(side, item)

    def _missing(self, side: str, item: Item) -> None:
        if side == "legacy":
            self.counts.exclusive_legacy += 1
            self._emit(Finding(Kind.MISSING_IN_CLOUD, self.domain, item.key))
        else:
            self.counts.exclusive_cloud += 1
            self._emit(Finding(Kind.MISSING_IN_LEGACY, self.domain, item.key))

    def _pair_by_natural_key(self) -> None:
        by_nk: dict[int, dict[str, list[Item]]] = defaultdict(lambda: {"legacy": [], "cloud": []})
        for side, pending in self._pending.items():
            for item, _ in pending:
                by_nk[item.nk][side].append(item)  # type: ignore[index]
        paired: set[int] = set()
        for sides in by_nk.values():
            if len(sides["legacy"]) == 1 and len(sides["cloud"]) == 1:
                legacy, cloud = sides["legacy"][0], sides["cloud"][0]
                paired.update((id(legacy), id(cloud)))
                fields = [p for p, _, _ in diff_records(legacy.record, cloud.record,
                                                        skip=frozenset({"key"}))]
                self.counts.mismatched += 1
                self.counts.key_mismatches += 1
                self._emit(Finding(
                    Kind.KEY_MISMATCH, self.domain, legacy.key, cloud_key=cloud.key,
                    detail=("same natural key, no xref; differs in: " + ", ".join(fields))
                    if fields else "same natural key, no xref; fields equal"))
        for side, pending in self._pending.items():
            for item, _ in sorted(pending, key=lambda p: p[0].key):
                if id(item) not in paired:
                    self._missing(side, item)
            pending.clear()

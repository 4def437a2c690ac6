"""In-memory id cross-reference: the fake of ``coexistence.xref.Xref`` for unit tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

from coexistence.xref import XrefColumn, XrefEntry, plan_link


class MemoryXref:
    """Thread-safe dict-backed xref; same rules as the SQL adapter (``plan_link``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: (domain, canonical key) -> entry
        self.rows: dict[tuple[str, str], XrefEntry] = {}
        #: (domain, column, value) -> canonical key
        self._reverse: dict[tuple[str, XrefColumn, str], str] = {}

    def link(
        self,
        domain: str,
        canonical_key: str,
        *,
        legacy_key: str | None = None,
        cloud_id: str | None = None,
    ) -> XrefEntry:
        wanted: dict[XrefColumn, str | None] = {"legacy_key": legacy_key, "cloud_id": cloud_id}
        with self._lock:
            current = self.rows.get((domain, canonical_key))
            holders = {
                c: self._reverse.get((domain, c, v)) for c, v in wanted.items() if v is not None
            }
            fill = plan_link(current, holders, domain, canonical_key, wanted)
            entry = current or XrefEntry(domain, canonical_key)
            if fill or current is None:
                entry = replace(entry, **fill)
                self.rows[(domain, canonical_key)] = entry
                for column, value in fill.items():
                    self._reverse[(domain, column, value)] = canonical_key
            return entry

    def by_canonical(self, domain: str, canonical_key: str) -> XrefEntry | None:
        return self.rows.get((domain, canonical_key))

    def _by(self, domain: str, column: XrefColumn, value: str) -> XrefEntry | None:
        key = self._reverse.get((domain, column, value))
        return None if key is None else self.rows[(domain, key)]

    def by_legacy(self, domain: str, legacy_key: str) -> XrefEntry | None:
        return self._by(domain, "legacy_key", legacy_key)

    def by_cloud(self, domain: str, cloud_id: str) -> XrefEntry | None:
        return self._by(domain, "cloud_id", cloud_id)

    def entries(self, domain: str) -> Iterator[XrefEntry]:
        with self._lock:
            keys = sorted(k for d, k in self.rows if d == domain)
        for key in keys:
            yield self.rows[(domain, key)]

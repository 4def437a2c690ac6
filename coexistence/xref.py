"""The id cross-reference: canonical key <-> legacy key <-> cloud id, per domain.

Each canonical key of a domain has at most one legacy key and one cloud id,
and each legacy key / cloud id belongs to at most one canonical key.  Links
are allocated concurrently (the router writes both ERPs from many workers),
so ``link`` is the only write and it is idempotent: linking the same mapping
again is a no-op, filling a column that is still empty is allowed, and
anything that would change or steal an existing mapping raises
``XrefConflict`` -- a business error, never retried, because retrying a
contradiction can only contradict again.

Adapters: ``workers.xref_sql.SqlXref`` (SQLite / PostgreSQL) and
``workers.xref_memory.MemoryXref`` (the fake); both pass
``tests/contracts/test_xref_contract.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from coexistence.errors import CoexistError

#: The two columns a canonical key maps to.
XrefColumn = Literal["legacy_key", "cloud_id"]
XREF_COLUMNS: tuple[XrefColumn, ...] = ("legacy_key", "cloud_id")


@dataclass(frozen=True, slots=True)
class XrefEntry:
    """One canonical record's ids in the two ERPs (``None`` while not yet allocated)."""

    domain: str
    canonical_key: str
    legacy_key: str | None = None
    cloud_id: str | None = None


class XrefConflict(CoexistError):
    """A link that contradicts an existing one.

    ``key`` is the canonical key being linked, ``column`` the clashing column,
    ``new`` the value asked for.  Either ``key`` already holds ``existing`` in
    that column, or ``owner`` (another canonical key) already holds ``new``.
    """

    def __init__(
        self,
        domain: str,
        key: str,
        column: str,
        existing: str | None,
        new: str,
        *,
        owner: str | None = None,
    ):
        self.domain = domain
        self.key = key
        self.column = column
        self.existing = existing
        self.new = new
        self.owner = owner
        if owner is not None:
            detail = f"{column} {new!r} already belongs to {domain} {owner}"
        else:
            detail = f"it has {column} {existing!r}, not {new!r}"
        super().__init__(f"xref conflict: cannot link {domain} {key}: {detail}")


class Xref(Protocol):
    """Port of the id cross-reference (one logical table, unique in each column per domain)."""

    def link(
        self,
        domain: str,
        canonical_key: str,
        *,
        legacy_key: str | None = None,
        cloud_id: str | None = None,
    ) -> XrefEntry:
        """Record that ``canonical_key`` is ``legacy_key`` / ``cloud_id``; return the entry.

        Idempotent and safe under concurrent calls from many processes: the same
        mapping twice leaves one entry and raises nothing; a column that is
        still ``None`` is filled; a different value for a filled column, or a
        value already linked to another canonical key, raises ``XrefConflict``
        and changes nothing.
        """
        ...

    def by_canonical(self, domain: str, canonical_key: str) -> XrefEntry | None:
        """The entry of a canonical key, or ``None``."""
        ...

    def by_legacy(self, domain: str, legacy_key: str) -> XrefEntry | None:
        """The entry holding this legacy key, or ``None``."""
        ...

    def by_cloud(self, domain: str, cloud_id: str) -> XrefEntry | None:
        """The entry holding this cloud id, or ``None``."""
        ...

    def entries(self, domain: str) -> Iterator[XrefEntry]:
        """Every entry of ``domain`` sorted by canonical key (code-point order), in bounded
        memory, for reconciliation's merge with ``Erp.stream``."""
        ...


def plan_link(
    current: XrefEntry | None,
    holders: dict[XrefColumn, str | None],
    domain: str,
    canonical_key: str,
    wanted: dict[XrefColumn, str | None],
) -> dict[XrefColumn, str]:
    """Decide a link: the columns to fill (empty dict: nothing to do), or raise XrefConflict.

    ``current`` is the entry of ``canonical_key``; ``holders[column]`` is the
    canonical key currently holding ``wanted[column]`` (``None`` when free).
    Shared by every adapter so they cannot disagree on the rules.
    """
    fill: dict[XrefColumn, str] = {}
    for column in XREF_COLUMNS:
        new = wanted.get(column)
        if new is None:
            continue
        existing = getattr(current, column) if current is not None else None
        if existing is not None and existing != new:
            raise XrefConflict(domain, canonical_key, column, existing, new)
        owner = holders.get(column)
        if owner is not None and owner != canonical_key:
            raise XrefConflict(domain, canonical_key, column, existing, new, owner=owner)
        if existing is None:
            fill[column] = new
    return fill

"""What a reconciliation finds, its counts and its drift figure."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any

from pydantic import BaseModel


class Kind(StrEnum):
    MISSING_IN_CLOUD = "missing_in_cloud"
    MISSING_IN_LEGACY = "missing_in_legacy"
    MISMATCH = "mismatch"
    DUPLICATE = "duplicate"
    ORPHAN_XREF = "orphan_xref"
    #: A legacy-only and a cloud-only record with one natural key and no xref:
    #: the same thing under two numbers.  Their field differences follow as mismatches.
    KEY_MISMATCH = "key_mismatch"
    #: A record one ERP holds that the canonical model cannot hold (it does not
    #: translate: a 150-character name, a negative price, a date 20231345).  Named
    #: with its side and the translator's reason; the run goes on without it.
    UNTRANSLATABLE = "untranslatable"


#: Kinds ``--repair`` can fix by re-publishing the SoR's record.
REPAIRABLE: frozenset[Kind] = frozenset({Kind.MISSING_IN_CLOUD, Kind.MISSING_IN_LEGACY,
                                         Kind.MISMATCH})


@dataclass(frozen=True, slots=True)
class Finding:
    """One discrepancy.  ``field``/``legacy``/``cloud``/``owner`` for mismatches;
    ``side`` and ``keys`` for duplicates; ``cloud_key`` for a key mismatch."""

    kind: Kind
    domain: str
    key: str
    field: str | None = None
    legacy: Any = None
    cloud: Any = None
    owner: str | None = None
    side: str | None = None
    keys: tuple[str, ...] = ()
    cloud_key: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if not (_plain(self.legacy) and _plain(self.cloud)):
            data = asdict(self)  # values that hold containers or dataclasses: copied
        else:
            # Most findings (a missing record: 1M of them in a 1M backfill into an
            # empty ERP) hold scalars only; asdict's deep copy was most of their cost.
            data = {"kind": None, "domain": self.domain, "key": self.key,
                    "field": self.field, "legacy": self.legacy, "cloud": self.cloud,
                    "owner": self.owner, "side": self.side, "keys": None,
                    "cloud_key": self.cloud_key, "detail": self.detail}
        data["kind"] = str(self.kind)
        data["keys"] = list(self.keys)
        return {k: v for k, v in data.items() if v not in (None, [])}


def _plain(value: Any) -> bool:
    """A value ``asdict`` would return as it is (nothing to copy)."""
    return value is None or type(value) in (str, int, float, bool)


@dataclass(slots=True)
class Counts:
    """The summary row of one domain's run."""

    rows_legacy: int = 0
    rows_cloud: int = 0
    exclusive_legacy: int = 0
    exclusive_cloud: int = 0
    mismatched: int = 0
    unchanged: int = 0
    duplicates: int = 0
    orphans: int = 0
    key_mismatches: int = 0
    #: Records of either side that do not translate to the canonical model.
    untranslatable: int = 0
    findings: int = 0

    @property
    def drift_pct(self) -> float:
        """Records with a discrepancy, in percent of the larger side.

        A discrepancy is a record on one side only, a matched pair that differs
        (a key mismatch counts once), each surplus record of a duplicate group,
        each orphan xref, and each record that does not translate.
        """
        differing = (self.exclusive_legacy + self.exclusive_cloud + self.mismatched
                     + self.duplicates + self.orphans + self.untranslatable)
        total = max(self.rows_legacy, self.rows_cloud, 1)
        return round(100.0 * differing / total, 6)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drift_pct": self.drift_pct}


def plain(value: Any) -> Any:
    """A JSON-able form of a field value (Decimal as str, enums by value, models as dicts)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return {k: plain(v) for k, v in value}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


@dataclass
class Report:
    """One domain's result: counts, tolerances applied, findings kept, mode used."""

    domain: str
    counts: Counts = field(default_factory=Counts)
    tolerances: tuple[str, ...] = ()
    mode: str = "full"
    #: Segments compared by checksum / of those, how many differed / records fetched
    #: from the cloud for differing segments (checksum mode only).
    segments: int = 0
    segments_differing: int = 0
    cloud_records_fetched: int = 0
    fell_back: bool = False

"""Router decisions: pure functions from (change, flag state, pin) to what must happen.

The router never does I/O here; ``workers`` feeds it captured changes and
channel commands and carries out the decision (writer actors, outbox,
exception store).  The rules (DESIGN.md "Router rules"):

* a change captured from the SoR is written to the shadow (dual modes) and
  fanned out to the channels that subscribe to the domain;
* a change captured from a non-SoR system is the echo of coexist's own write
  (suppressed) or a **stray write** by a person (a business exception, and by
  policy overwritten from the SoR);
* a channel command goes to the SoR first, then the shadow;
* documents (order, shipment, invoice) stay pinned to the SoR they were
  created in until they close; master data follows the flag.

Versions: targets apply a write only when its version is newer than the last
applied.  Source systems number their changes independently (legacy change-log
sequence, cloud change-feed cursor), so a bare source version cannot compare
across a switch of SoR.  ``routed_version`` puts the domain's flag version in
the high bits: every write routed after a switch outranks every write routed
before it, and within one flag version the SoR's own order decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from coexistence.canonical import DOCUMENT_DOMAINS, CanonicalRecord, Order
from coexistence.flags import ROUTES, SEGMENT_KEYS
from coexistence.ports import COEXIST_WRITER, Change

LEGACY = "legacy"
CLOUD = "cloud"
SYSTEMS: tuple[str, str] = (LEGACY, CLOUD)

#: Bits reserved for a source system's own change number inside a routed version.
SOURCE_VERSION_BITS = 40
SOURCE_VERSION_MAX = (1 << SOURCE_VERSION_BITS) - 1

#: mode -> (system of record, systems written as shadow): a view of the one table,
#: ``coexistence.flags.ROUTES``.
MODE_TABLE: dict[str, tuple[str, tuple[str, ...]]] = {
    str(mode): (str(route.sor), tuple(str(s) for s in route.writes[1:]))
    for mode, route in ROUTES.items()
}


class StrayPolicy(StrEnum):
    REPORT = "report"
    OVERWRITE = "overwrite"


#: Per domain: what to do when a person writes into the system that is not the SoR.
#: Always reported; overwritten from the SoR by default, so no second truth survives.
#: ``report`` leaves the stray value in place for a person to settle (reconciliation
#: shows it as drift until then).
STRAY_POLICY: dict[str, StrayPolicy] = {domain: StrayPolicy.OVERWRITE for domain in (
    "customer", "product", "price", "inventory", "order", "shipment", "invoice")}


def routed_version(flag_version: int, source_version: int) -> int:
    """The version a routed write carries: flag version first, then the source's order."""
    if not 0 <= source_version <= SOURCE_VERSION_MAX:
        raise ValueError(f"source version {source_version} outside 0..{SOURCE_VERSION_MAX}")
    return (flag_version << SOURCE_VERSION_BITS) | source_version


def split_version(version: int) -> tuple[int, int]:
    return version >> SOURCE_VERSION_BITS, version & SOURCE_VERSION_MAX


class FlagView(Protocol):
    """What the router needs from a domain's cutover flag."""

    @property
    def version(self) -> int: ...

    def mode_for(self, key: str, attrs: Mapping[str, str]) -> str: ...


#: Rollout segment attributes (the one list, ``coexistence.flags.SEGMENT_KEYS``), and per
#: canonical class the ones it has (computed once: a missing attribute on a pydantic model
#: costs an exception, on the hot path).
SEGMENT_FIELDS: tuple[str, ...] = SEGMENT_KEYS
_SEGMENTS_OF: dict[type, tuple[str, ...]] = {}


def segment_attrs(record: CanonicalRecord | None) -> dict[str, str]:
    """The rollout segments a record belongs to (warehouse, region, customer group)."""
    if record is None:
        return {}
    cls = type(record)
    names = _SEGMENTS_OF.get(cls)
    if names is None:
        names = _SEGMENTS_OF[cls] = tuple(n for n in SEGMENT_FIELDS if n in cls.model_fields)
    return {name: getattr(record, name) for name in names}


def is_closed(record: CanonicalRecord | None) -> bool:
    """A document that no longer needs pinning (closed order, delivered shipment, paid invoice)."""
    if record is None:
        return False
    if isinstance(record, Order):  # the one record of domain "order"
        return record.status in ("closed", "cancelled")
    return bool(getattr(record, "is_closed", False))


class Action(StrEnum):
    #: Write ``targets`` (SoR change -> shadow) and fan out to channels.
    ROUTE = "route"
    #: coexist's own write coming back through change capture: nothing to do.
    ECHO = "echo"
    #: A person wrote into a non-SoR system: report, and maybe overwrite from the SoR.
    STRAY = "stray"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    domain: str
    key: str
    #: The system of record for this record under this flag state (or its pin).
    sor: str
    #: Systems to write, in order.  For STRAY + overwrite: the stray system (from the SoR).
    targets: tuple[str, ...]
    #: Publish a canonical event to the domain's channel subscribers.
    fan_out: bool
    flag_version: int
    mode: str
    #: True when a pin, not the flag, chose the SoR.
    pinned: bool = False
    stray_policy: StrayPolicy | None = None


def placement(
    domain: str,
    key: str,
    flag: FlagView,
    attrs: Mapping[str, str],
    pinned_sor: str | None,
) -> tuple[str, str, tuple[str, ...], bool]:
    """(mode, sor, shadows, pinned) for one record.

    A pinned document keeps the SoR it was created in until it closes, and the
    other ERP keeps receiving its changes as the shadow, whatever the mode: an
    order opened in the legacy ERP before ``cloud_only`` still reaches the cloud.
    """
    mode = str(flag.mode_for(key, attrs))
    sor, shadows = MODE_TABLE[mode]
    if domain in DOCUMENT_DOMAINS and pinned_sor is not None and pinned_sor != sor:
        other = CLOUD if pinned_sor == LEGACY else LEGACY
        return mode, pinned_sor, (other,), True
    return mode, sor, shadows, False


def decide_change(
    change: Change,
    source_system: str,
    flag: FlagView,
    record: CanonicalRecord | None,
    *,
    pinned_sor: str | None = None,
) -> Decision:
    """Decide what a change captured from ``source_system`` must cause.

    ``record`` is the record as read from the source after the change (``None``
    for a delete); it gives the rollout segments.
    """
    mode, sor, shadows, pinned = placement(
        change.domain, change.key, flag, segment_attrs(record), pinned_sor
    )
    if change.writer == COEXIST_WRITER:
        return Decision(Action.ECHO, change.domain, change.key, sor, (), False,
                        flag.version, mode, pinned)
    if source_system == sor:
        return Decision(Action.ROUTE, change.domain, change.key, sor, shadows, True,
                        flag.version, mode, pinned)
    policy = STRAY_POLICY[change.domain]
    # Overwrite only a system this mode keeps written: in ``legacy`` mode the cloud is not
    # maintained yet, in ``cloud_only`` the legacy ERP no longer is; there we only report.
    overwrite = policy is StrayPolicy.OVERWRITE and source_system in shadows
    targets = (source_system,) if overwrite else ()
    return Decision(Action.STRAY, change.domain, change.key, sor, targets, False,
                    flag.version, mode, pinned, policy)


def decide_command(
    domain: str,
    record: CanonicalRecord,
    flag: FlagView,
    *,
    pinned_sor: str | None = None,
) -> Decision:
    """A channel command (CRM account, EDI 850, portal order): SoR first, then the shadow."""
    mode, sor, shadows, pinned = placement(domain, record.key, flag, segment_attrs(record),
                                           pinned_sor)
    return Decision(Action.ROUTE, domain, record.key, sor, (sor, *shadows), True,
                    flag.version, mode, pinned)


def pin_for_new_document(domain: str, decision: Decision) -> str | None:
    """The SoR to pin a newly created document to (``None`` for master data)."""
    return decision.sor if domain in DOCUMENT_DOMAINS else None

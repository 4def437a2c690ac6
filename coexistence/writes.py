"""The write decisions every ERP writer shares, and the business records of refused writes.

``applies`` is the one "apply only when newer" rule: the cloud adapter, the legacy
adapter (as a SQL condition: the operands may be column expressions), the in-memory
fake and the router's writers all call it, so a write that one target refuses as
``Stale`` is refused by every other for the same versions.

The exceptions are business events (never retried, recorded in the exception store
under their class name): a person writing into the shadow (``StrayWrite``), a
non-owner's change to an owned field (``OwnershipViolationReported``), a routed
write refused because the target is the SoR now and holds a newer edit
(``SwitchConflict``), and a stray that stayed although its ``StrayWrite`` record was
decided as repaired (``StrayKept``: its system became the SoR before the repair landed).
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

from coexistence.errors import BusinessError

__all__ = ["applies", "StrayWrite", "OwnershipViolationReported", "SwitchConflict", "StrayKept"]

_V = TypeVar("_V")


@overload
def applies(incoming: int, current: int, repair: bool) -> bool: ...


@overload
def applies(incoming: _V, current: Any, repair: bool) -> Any: ...


def applies(incoming: Any, current: Any, repair: bool) -> Any:
    """Whether a write of version ``incoming`` applies over the applied ``current``.

    Newer applies; a ``repair`` (the SoR's state re-sent over a stray under the
    record's last routed version) also re-applies an equal version; older never.
    With SQL column expressions as operands the answer is the same condition as SQL.
    """
    return incoming >= current if repair else incoming > current


class StrayWrite(BusinessError):
    """A person wrote into an ERP that is not the system of record for the record."""


class OwnershipViolationReported(BusinessError):
    """A non-owner changed an owned field; the owner's value was kept."""


class SwitchConflict(BusinessError):
    """A routed write refused: the target is the SoR now and holds a newer edit by
    someone else (made after coexist last saw the record).  The SoR's state wins."""


class StrayKept(BusinessError):
    """A stray edit was not overwritten: its system became the SoR before the repair (or
    the routed write over it) landed, so the stray stays and is re-sent to the shadows.
    The follow-up of the stray's ``StrayWrite`` record, which capture decided as
    "overwritten from the SoR"; it names the kept and the replaced value of each field
    and the flag versions."""

"""What a proposed flag change would move, read from the domain's system of record.

``cutover plan`` says how many records a change would move, and ``plan``/``set`` refuse
a rollout segment no record carries (``region=NOWHERE`` would select nothing, silently).
The records are streamed from the SoR of the domain's base mode (every record of a
domain lives there); the counting is pure (``coexistence.flags.rollout_impact``).
"""

from __future__ import annotations

from coexistence.flags import ROUTES, FlagState, RolloutImpact, rollout_impact
from coexistence.router import segment_attrs


def impact(app, current: FlagState, proposed: FlagState) -> RolloutImpact:
    """Stream ``current.domain`` from its SoR and count what ``proposed`` would move."""
    system = str(ROUTES[current.base_mode].sor)
    with app.reader(system) as erp:
        records = ((r.key, segment_attrs(r)) for r in erp.stream(current.domain))
        return rollout_impact(current, proposed, records)


def sor_name(state: FlagState) -> str:
    return str(ROUTES[state.base_mode].sor)

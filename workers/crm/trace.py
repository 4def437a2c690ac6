"""The CRM's side of ``coexist trace domain:key``.

What coexist sent to the CRM and the inbound commands it made are outbox rows (the
router's fan-out to ``coexist.channel.crm``, commands with ``source_system`` ``crm``),
and the CRM's refusals are exception records: the trace already shows those.  This adds
what only the CRM knows, read from the CRM's own API (one request): the record it shows
now for the key — at which routed version, from which ERP, under which correlation id
(the message whose write it shows last) — and, for a customer, the onboarding decisions
that made or linked its CRM account.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, inspect, select

from coexistence.crm.ports import CORRELATION_FIELD, CRM_OBJECTS
from coexistence.router import split_version
from workers.crm import state
from workers.observe.sources import NOT_CONFIGURED, OK, UNAVAILABLE, SourceNote, one_line, utc
from workers.observe.timeline import Trace, TraceEvent

if TYPE_CHECKING:
    from workers.bootstrap import App

NAME = "CRM"


def crm_source(app: App) -> tuple[Any, SourceNote | None]:
    """The app's CRM when ``[crm]`` is configured, else ``None`` and a note saying so."""
    if app.settings.crm is None:
        return None, SourceNote(NAME, NOT_CONFIGURED, "no [crm] section")
    try:
        return app.crm, None
    except Exception as exc:  # noqa: BLE001 - a source that fails is named, not fatal
        return None, SourceNote(NAME, UNAVAILABLE, one_line(exc))


def crm_events(state_engine: Engine, crm: Any, note: SourceNote | None, trace: Trace,
               wanted: str | None) -> list[TraceEvent]:
    """The CRM record of the trace's key now, and its onboarding decisions."""
    domain, key = trace.domain, trace.key
    if crm is None:
        trace.sources.append(note or SourceNote(NAME, UNAVAILABLE, "not opened"))
        return []
    if domain not in CRM_OBJECTS or key is None:
        trace.sources.append(SourceNote(NAME, OK, f"the CRM shows no {domain}"))
        return []
    events = _onboarding(state_engine, domain, key) if wanted is None else []
    try:
        record = crm.find(domain, key)
    except Exception as exc:  # noqa: BLE001
        trace.sources.append(SourceNote(NAME, UNAVAILABLE, one_line(exc)))
        return events
    if record is None:
        trace.sources.append(SourceNote(NAME, OK, f"no {CRM_OBJECTS[domain]} keyed {key}"))
        return events
    f = record.fields
    correlation = f.get(CORRELATION_FIELD)
    if wanted is not None and correlation != wanted:
        trace.sources.append(SourceNote(NAME, OK, "the CRM shows another message's write"))
        return events
    version = record.version
    shown = "no coexist version" if version is None else \
        "flag v{} / source v{}".format(*split_version(version))
    what = (f"CRM shows {record.sobject} {record.id} at {shown}, from "
            f"{f.get('ERP_System__c') or '?'}" + (" (deleted in the ERP)"
                                                  if f.get("ERP_Deleted__c") else ""))
    at = utc(f.get("LastModifiedDate")) or datetime.now(UTC)
    flag_version = split_version(version)[0] if version is not None else None
    events.append(TraceEvent(at, "crm", what, "coexist", flag_version, None, correlation,
                             "crm", {"id": record.id, "sobject": record.sobject,
                                     "version": version, "erp": f.get("ERP_System__c")}))
    trace.sources.append(SourceNote(NAME, OK, f"{record.sobject} {record.id}"))
    return events


def _onboarding(engine: Engine, domain: str, key: str) -> list[TraceEvent]:
    if domain != "customer" or not inspect(engine).has_table("crm_onboarding"):
        return []
    t = state.CrmOnboarding.__table__
    with engine.connect() as conn:
        rows = conn.execute(select(t).where(t.c.customer_key == key)).all()
    return [TraceEvent(state._aware(r.decided_at), "crm",
                       f"onboarding: CRM account {r.crm_account_id} -> {r.decision} "
                       f"customer {key} ({r.state})", "crm_inbound", None, None, None, "crm",
                       {"crm_account_id": r.crm_account_id, "decision": r.decision})
            for r in rows]

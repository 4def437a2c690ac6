"""Exception records and groups as JSON-able dicts: ``coexist dlq ... --format json`` and the
console's exception views print the same thing (one source)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from bus.exception_store import ExceptionRecord, GroupCount

#: Bytes of an undecodable message shown by ``dlq show``.
RAW_PREVIEW_BYTES = 512


def iso(ts: datetime | None) -> str | None:
    return ts.isoformat(timespec="seconds") if ts else None


def group_dicts(groups: Iterable[GroupCount]) -> list[dict[str, Any]]:
    return [{"group": g.group, "error_type": g.error_type, "call_site": g.call_site,
             "count": g.count, "domains": list(g.domains),
             "failure_classes": list(g.failure_classes),
             "first_failed_at": iso(g.first_failed_at),
             "last_failed_at": iso(g.last_failed_at)} for g in groups]


def record_summary(r: ExceptionRecord) -> dict[str, Any]:
    return {
        "id": r.id, "message_id": r.message_id, "failure_class": r.failure_class,
        "status": r.status, "domain": r.domain, "key": r.key, "queue_name": r.queue_name,
        "actor_name": r.actor_name, "correlation_id": r.correlation_id,
        "error_type": r.error_type,
        "error_message": r.error_message, "call_site": r.call_site, "group": r.group_key,
        "attempts": r.attempts, "first_failed_at": iso(r.first_failed_at),
        "last_failed_at": iso(r.last_failed_at), "replay_count": r.replay_count,
    }


def record_detail(r: ExceptionRecord, actions: Iterable[dict[str, Any]] = ()
                  ) -> dict[str, Any]:
    """``coexist dlq show``: the record, its envelope and message, who acted on it."""
    out = record_summary(r)
    out["status_changed_at"] = iso(r.status_changed_at)
    out["envelope"] = r.envelope_dict()
    out["message"] = r.message_dict()
    options = (out["message"] or {}).get("options") or {}
    if options.get("retry_history"):
        # The retry budget's account (``bus.budget``): failed attempts over all layers,
        # one line per failed delivery.
        out["failed_attempts"] = options.get("failures")
        out["retry_history"] = options["retry_history"]
    if r.raw is not None:
        preview = r.raw[:RAW_PREVIEW_BYTES]
        out["raw_bytes"] = len(r.raw)
        out["raw_preview"] = preview.decode("utf-8", errors="backslashreplace")
    out["actions"] = [{"action": a["action"], "actor": a["actor"], "reason": a["reason"],
                       "at": iso(a["at"])} for a in actions]
    return out

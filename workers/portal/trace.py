"""Trace readers of the portal channel and the governed API (``coexist trace``).

* ``deliveries``: every webhook queued for the object (or carrying the correlation id),
  with the endpoint and customer it went to, its ``webhook-id`` and version, and every
  attempt (HTTP status or transport error, duration, what it led to);
* ``api_orders``: portal orders placed through ``POST /v1/orders`` (the API call, its
  ``X-Correlation-Id``, Idempotency-Key, consumer account and the answer given), found by
  the order's key or the call's correlation id;
* ``inquiries``: sampled inquiry calls (``GET``) about the record (``workers.api.trace``:
  who asked, which system answered under which flag version, cached or stale); a
  sample bounded per second and by a retention window, not every call.
"""

from __future__ import annotations

import json

from sqlalchemy import Engine, select

from workers.observe.sources import OK, SourceNote, has_table, utc
from workers.observe.timeline import Target, Trace, TraceEvent
from workers.portal.endpoints import PortalEndpoint
from workers.portal.store import ATTEMPT, DELIVERY

_E = PortalEndpoint.__table__


def deliveries(state: Engine, target: Target, trace: Trace, since, limit) -> list[TraceEvent]:
    if not has_table(state, DELIVERY.name):
        trace.sources.append(SourceNote("portal webhooks", "skipped", "no portal tables"))
        return []
    stmt = select(DELIVERY, _E.c.customer_key, _E.c.url).join(
        _E, _E.c.id == DELIVERY.c.endpoint_id)
    if target.correlation_id:
        stmt = stmt.where(DELIVERY.c.correlation_id == target.correlation_id)
    else:
        stmt = stmt.where(DELIVERY.c.domain == target.domain,
                          DELIVERY.c.object_key == target.key)
    if since is not None:
        stmt = stmt.where(DELIVERY.c.created_at >= since)
    with state.connect() as conn:
        rows = conn.execute(stmt.order_by(DELIVERY.c.id.desc()).limit(limit)).all()
        ids = [row.id for row in rows]
        attempts = conn.execute(select(ATTEMPT).where(ATTEMPT.c.delivery_id.in_(ids))
                                .order_by(ATTEMPT.c.id)).all() if ids else []
    by_id = {row.id: row for row in rows}
    out = []
    for row in rows:
        out.append(TraceEvent(
            utc(row.created_at), "portal",
            f"webhook {row.event_type} v{row.version} queued for endpoint {row.endpoint_id} "
            f"(customer {row.customer_key}): {row.status}"
            + (f" after {row.attempts} attempt(s)" if row.attempts else ""),
            "portal channel", None, row.webhook_id, row.correlation_id, "portal_delivery",
            {"domain": row.domain, "key": row.object_key, "webhook_id": row.webhook_id,
             "endpoint_id": row.endpoint_id, "url": row.url, "version": row.version,
             "status": row.status}))
    for a in attempts:
        row = by_id[a.delivery_id]
        result = f"HTTP {a.status_code}" if a.status_code is not None else (a.error or "?")
        nxt = (f"; next attempt {utc(a.next_attempt_at).isoformat(timespec='seconds')}"
               if a.next_attempt_at is not None else "")
        out.append(TraceEvent(
            utc(a.at), "portal",
            f"webhook attempt {a.attempt_no} to {row.url}: {result} in {a.duration_ms} ms -> "
            f"{a.outcome}{nxt}", "portal dispatcher", None, row.webhook_id,
            row.correlation_id, "portal_attempt",
            {"webhook_id": row.webhook_id, "endpoint_id": row.endpoint_id,
             "attempt": a.attempt_no, "status_code": a.status_code, "error": a.error,
             "outcome": a.outcome}))
    n_attempts = len(attempts)
    trace.sources.append(SourceNote("portal webhooks", OK,
                                    f"{len(rows)} webhook(s), {n_attempts} attempt(s)"))
    return out


def api_orders(state: Engine, target: Target, trace: Trace, since, limit) -> list[TraceEvent]:
    from workers.api.idempotency import ApiIdempotency

    t = ApiIdempotency.__table__
    if not has_table(state, t.name):
        return []
    if target.correlation_id is None and target.domain != "order":
        return []
    stmt = select(t)
    if target.correlation_id:
        stmt = stmt.where(t.c.correlation_id == target.correlation_id)
    else:
        stmt = stmt.where(t.c.order_key == target.key)
    if since is not None:
        stmt = stmt.where(t.c.created_at >= since)
    with state.connect() as conn:
        rows = conn.execute(stmt.order_by(t.c.created_at.desc()).limit(limit)).all()
    out = []
    for row in rows:
        answer = "no answer yet (in flight)" if row.response_status is None else \
            f"answered {row.response_status}"
        detail = {"domain": "order", "key": row.order_key, "account": row.account,
                  "idempotency_key": row.idem_key, "status": row.response_status}
        if row.response_status is not None and row.response_status >= 400 and row.response_body:
            try:
                problem = json.loads(row.response_body)
                answer += f" {problem.get('code')}: {problem.get('detail')}"
                detail["problem"] = problem.get("code")
            except ValueError:
                pass
        out.append(TraceEvent(
            utc(row.created_at), "api",
            f"POST /v1/orders (portal order {row.order_key}, Idempotency-Key "
            f"{row.idem_key!r}): {answer}", row.account, None, row.message_id,
            row.correlation_id, "api", detail))
    trace.sources.append(SourceNote("API orders", OK, f"{len(out)} call(s)"))
    return out


def inquiries(state: Engine, target: Target, trace: Trace, since, limit) -> list[TraceEvent]:
    from workers.api.trace import ApiInquiry

    t = ApiInquiry.__table__
    if not has_table(state, t.name):
        return []
    stmt = select(t)
    if target.correlation_id:
        stmt = stmt.where(t.c.correlation_id == target.correlation_id)
    else:
        stmt = stmt.where(t.c.domain == target.domain, t.c.object_key == target.key)
    if since is not None:
        stmt = stmt.where(t.c.at >= since)
    with state.connect() as conn:
        rows = conn.execute(stmt.order_by(t.c.id.desc()).limit(limit)).all()
    out = []
    for row in rows:
        answered = json.loads(row.answered_by or "[]")
        by = ", ".join(f"{a['domain']} from {a['system']} (flag v{a['flag_version']}"
                       + (", pinned" if a.get("pinned") else "") + ")" for a in answered)
        how = "stale cache" if row.stale else "cache" if row.cached else "SoR read"
        versions = {a["flag_version"] for a in answered if a.get("domain") == row.domain}
        out.append(TraceEvent(
            utc(row.at), "api",
            f"GET {row.path} by {row.consumer} ({row.role}): {row.status}"
            + (f", {by}, {how}" if answered else ""), row.consumer,
            versions.pop() if len(versions) == 1 else None, None, row.correlation_id,
            "api_inquiry",
            {"domain": row.domain, "key": row.object_key, "consumer": row.consumer,
             "role": row.role, "status": row.status, "answered_by": answered,
             "cached": row.cached, "stale": row.stale, "age_s": row.age_s}))
    trace.sources.append(SourceNote("API inquiries", OK,
                                    f"{len(out)} sampled call(s) (a bounded sample: "
                                    "workers.api.trace)"))
    return out

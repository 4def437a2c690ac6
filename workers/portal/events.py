"""Canonical events -> portal webhook messages, queued per endpoint (the channel handler).

``publish(envelopes, ...)`` takes a list of canonical-event envelopes from the
router's fan-out (kind ``event`` or ``delete``) and queues, for every active
endpoint subscribed to the event type whose customer scope owns the record, one
signed-later webhook message in ``portal_delivery``.  It returns one
``Outcome`` per envelope; one bad envelope never fails its neighbours.

Event types: ``order.status_changed`` (any change of an order the portal can
see), ``shipment.milestone``, ``invoice.posted``, ``price.changed``,
``availability.changed``.  The payload is the record as the portal role may
see it (``coexistence.policy``), with its ``version``: the routed version of
the SoR change (flag version, then the SoR's own order), so a receiver that
applies only newer versions ends equal to the SoR whatever order the messages
arrive in.

Idempotent in effect: per (endpoint, event type, object) ``portal_object_state``
keeps the newest version queued and a digest of what was shown, so a
duplicate or older event is ``stale`` and an event that changes nothing the
endpoint can see is ``unchanged``; ``(endpoint, webhook-id)`` is unique.

Availability is coalesced per warehouse x SKU: the first change opens a window
of ``AVAILABILITY_WINDOW_S``; later changes inside it replace the body of the
message not yet attempted (same ``webhook-id``, newer version), so a burst of
stock moves becomes one delivery per endpoint.  Deletes go to the endpoints
that were shown the object, as ``{"deleted": true}``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, select, update

from bus.envelope import Envelope
from coexistence.canonical import decode
from coexistence.policy import Role, Scope, owner_of, row_visible, serialise
from coexistence.router import routed_version
from workers.portal.endpoints import Endpoint, EndpointRegistry
from workers.portal.store import DELIVERY, OBJECT_STATE, PENDING

#: Version of the webhook payload format (``schema_version`` in every body).
WEBHOOK_SCHEMA_VERSION = 1

#: canonical domain -> webhook event type.
EVENT_TYPE: dict[str, str] = {
    "order": "order.status_changed",
    "shipment": "shipment.milestone",
    "invoice": "invoice.posted",
    "price": "price.changed",
    "inventory": "availability.changed",
}

#: Availability changes inside this window after the first fold into one message.
AVAILABILITY_WINDOW_S = 5.0
COALESCED = frozenset({"availability.changed"})

#: Order key -> the customer owning it (shipments name only their order).
OrderOwner = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class Outcome:
    message_id: str
    #: queued, stale, unchanged, ignored, failed.
    status: str
    deliveries: int = 0
    detail: str = ""
    error: BaseException | None = None


def scope_of(endpoint: Endpoint) -> Scope:
    return Scope(Role.PORTAL, endpoint.customers, f"endpoint {endpoint.id}")


def webhook_id(envelope: Envelope) -> str:
    """Stable per event: the same message id always gives the same ``webhook-id``."""
    return "msg_" + uuid.uuid5(uuid.NAMESPACE_URL, f"coexist:{envelope.message_id}").hex


def body_of(event_type: str, envelope: Envelope, msg_id: str, data: dict) -> str:
    return json.dumps({
        "type": event_type,
        "id": msg_id,
        "timestamp": envelope.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "schema_version": WEBHOOK_SCHEMA_VERSION,
        "data": data,
    }, separators=(",", ":"), sort_keys=True)


def _digest(data: dict | None) -> str:
    if data is None:
        return ""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def publish(envelopes: Sequence[Envelope], *, engine: Engine, registry: EndpointRegistry,
            order_owner: OrderOwner, now: datetime | None = None) -> list[Outcome]:
    """Queue webhook messages for a batch of canonical events; one outcome per envelope."""
    now = now or datetime.now(UTC)
    endpoints: dict[str, list[Endpoint]] = {}
    out = []
    for env in envelopes:
        event_type = EVENT_TYPE.get(env.domain)
        if event_type is None:
            out.append(Outcome(env.message_id, "ignored", detail=f"no webhook for {env.domain}"))
            continue
        if event_type not in endpoints:
            endpoints[event_type] = registry.subscribed(event_type)
        try:
            out.append(_publish_one(env, event_type, endpoints[event_type], engine,
                                    order_owner, now))
        except Exception as exc:  # one bad envelope never fails its neighbours
            out.append(Outcome(env.message_id, "failed", detail=f"{type(exc).__name__}: {exc}",
                               error=exc))
    return out


def _publish_one(env: Envelope, event_type: str, endpoints: Iterable[Endpoint], engine: Engine,
                 order_owner: OrderOwner, now: datetime) -> Outcome:
    version = routed_version(env.flag_version, env.source_version)
    deleted = env.kind == "delete" or "record" not in env.payload
    record = None if deleted else decode(env.domain, env.payload["record"])
    owner = None
    if record is not None:
        owner = order_owner(record.order_key) if env.domain == "shipment" else owner_of(
            env.domain, record)
    msg_id = webhook_id(env)
    queued = stale = 0
    with engine.begin() as conn:
        for endpoint in endpoints:
            state = conn.execute(select(OBJECT_STATE.c.version, OBJECT_STATE.c.digest).where(
                OBJECT_STATE.c.endpoint_id == endpoint.id,
                OBJECT_STATE.c.event_type == event_type,
                OBJECT_STATE.c.object_key == env.key)).first()
            if deleted:
                if state is None:
                    continue  # never shown this object: nothing to take back
                data = {"object": env.domain, "key": env.key, "version": version,
                        "flag_version": env.flag_version, "deleted": True, "record": None}
                shown = None
            else:
                scope = scope_of(endpoint)
                if not row_visible(scope, env.domain, record, owner):
                    continue
                shown = serialise(scope, record, owner=owner)
                data = {"object": env.domain, "key": env.key, "version": version,
                        "flag_version": env.flag_version, "deleted": False, "record": shown}
            if state is not None and version <= state.version:
                stale += 1
                continue
            digest = _digest(shown)
            if state is not None and digest == state.digest:
                # Nothing the endpoint can see changed; remember the version all the same.
                conn.execute(update(OBJECT_STATE).where(
                    OBJECT_STATE.c.endpoint_id == endpoint.id,
                    OBJECT_STATE.c.event_type == event_type,
                    OBJECT_STATE.c.object_key == env.key).values(version=version))
                continue
            if state is None:
                conn.execute(insert(OBJECT_STATE).values(
                    endpoint_id=endpoint.id, event_type=event_type, object_key=env.key,
                    version=version, digest=digest))
            else:
                conn.execute(update(OBJECT_STATE).where(
                    OBJECT_STATE.c.endpoint_id == endpoint.id,
                    OBJECT_STATE.c.event_type == event_type,
                    OBJECT_STATE.c.object_key == env.key).values(version=version, digest=digest))
            _queue(conn, endpoint, event_type, env, msg_id, version, data, now)
            queued += 1
    if queued:
        return Outcome(env.message_id, "queued", queued)
    if stale:
        return Outcome(env.message_id, "stale", detail=f"version {version} not newer")
    return Outcome(env.message_id, "unchanged", detail="no subscribed endpoint sees a change")


def _queue(conn, endpoint: Endpoint, event_type: str, env: Envelope, msg_id: str, version: int,
           data: dict, now: datetime) -> None:
    if event_type in COALESCED:
        waiting = conn.execute(select(DELIVERY.c.id, DELIVERY.c.webhook_id).where(
            DELIVERY.c.endpoint_id == endpoint.id, DELIVERY.c.event_type == event_type,
            DELIVERY.c.object_key == env.key, DELIVERY.c.status == PENDING,
            DELIVERY.c.attempts == 0, DELIVERY.c.lease_until.is_(None))).first()
        if waiting is not None:
            body = body_of(event_type, env, waiting.webhook_id, data)
            conn.execute(update(DELIVERY).where(DELIVERY.c.id == waiting.id).values(
                body=body, version=version, correlation_id=env.correlation_id))
            return
        due = now + timedelta(seconds=AVAILABILITY_WINDOW_S)
    else:
        due = now
    conn.execute(insert(DELIVERY).values(
        endpoint_id=endpoint.id, webhook_id=msg_id, event_type=event_type, domain=env.domain,
        object_key=env.key, version=version, body=body_of(event_type, env, msg_id, data),
        correlation_id=env.correlation_id, status=PENDING, attempts=0, next_attempt_at=due,
        created_at=now))

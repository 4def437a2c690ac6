"""The portal channel's consumer: canonical events from ``coexist.channel.portal`` -> queued
webhooks (``workers.portal.events.publish``), for the subscription named ``portal``.

``channel_handler(app)`` returns the function the router's channel actor (or the batch
consumer) calls with the envelopes it holds: a sequence, or one envelope from the
per-message actor.  The dispatcher (``coexist portal deliver``, or the thread of
``coexist run``) sends what it queued.

Idempotent in effect, with no inbox: per (endpoint, event type, object)
``portal_object_state`` keeps the newest version queued, committed in the same
transaction as the ``portal_delivery`` row it caused; a redelivered or older envelope
is ``stale`` and queues nothing, and ``(endpoint, webhook-id)`` is unique (the id is
derived from the message id).  So a crash between commit and ack, a duplicate or a
reordering never queues a webhook twice nor an older state after a newer one.

Failures: an envelope that cannot be published fails alone (its neighbours are
committed); the handler then raises for it - a ``BusinessError`` for a record that
cannot be decoded (exception store, no retry), the error itself otherwise (retried;
the retry finds the neighbours ``stale``).

A shipment names only its order: the order's customer is read from the order domain's
SoR (pins honoured, ``workers.api.sor.SorReader``) and remembered (an order never
changes customer); orders seen in a batch are remembered from the batch itself.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pydantic import ValidationError

from bus.envelope import Envelope
from bus.errors import BusinessError, TechnicalError
from coexistence.errors import TranslationError
from workers.portal.endpoints import EndpointRegistry
from workers.portal.events import Outcome, publish

if TYPE_CHECKING:
    from workers.bootstrap import App

log = logging.getLogger(__name__)

#: The subscription (``[subscriptions.portal]``) this consumer is registered for.
SUBSCRIPTION = "portal"
#: Order -> customer answers remembered per process (an order never changes customer).
OWNER_CACHE_SIZE = 50_000

#: Errors that say the envelope itself is wrong: retrying cannot help.
_BAD_INPUT = (TranslationError, ValidationError, KeyError, ValueError)


class PortalEventRefused(BusinessError):
    """A canonical event the portal channel cannot publish (names the message and why)."""


class OrderOwners:
    """Order key -> owning customer, from the order domain's SoR, remembered."""

    def __init__(self, read: Callable[[str], str | None], size: int = OWNER_CACHE_SIZE) -> None:
        self._read = read
        self._size = size
        self._known: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, order_key: str, customer_key: str) -> None:
        with self._lock:
            self._known[order_key] = customer_key
            self._known.move_to_end(order_key)
            while len(self._known) > self._size:
                self._known.popitem(last=False)

    def __call__(self, order_key: str) -> str | None:
        with self._lock:
            known = self._known.get(order_key)
        if known is not None:
            return known
        owner = self._read(order_key)
        if owner is not None:
            self.remember(order_key, owner)
        return owner


def sor_order_owner(app: App) -> Callable[[str], str | None]:
    """Reads an order's customer from the order domain's SoR as the flag (and pins) say."""
    from workers.api.sor import SorReader, SorUnavailable, sql_pins

    reader = SorReader(app.erps, {}, app.flags, sql_pins(app.state))

    def read(order_key: str) -> str | None:
        try:
            order, _source = reader.get("order", order_key)
        except SorUnavailable as exc:
            raise TechnicalError(f"portal: the order {order_key} of a shipment could not be "
                                 f"read: {exc}") from None
        return None if order is None else order.customer_key

    return read


def _batch(arg: Envelope | Sequence[Envelope]) -> Sequence[Envelope]:
    return [arg] if isinstance(arg, Envelope) else arg


def handle(envelopes: Sequence[Envelope], *, engine, registry: EndpointRegistry,
           owners: OrderOwners) -> list[Outcome]:
    """Publish a batch; raise for the first envelope that failed (after the others
    committed), as a ``BusinessError`` when the envelope itself is bad."""
    for env in envelopes:
        record = env.payload.get("record") if env.domain == "order" else None
        if isinstance(record, dict) and record.get("customer_key") and env.key:
            owners.remember(env.key, str(record["customer_key"]))
    outcomes = publish(envelopes, engine=engine, registry=registry, order_owner=owners)
    for outcome in outcomes:
        log.debug("portal event %s: %s %s", outcome.message_id, outcome.status, outcome.detail)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        first = failed[0]
        if len(failed) > 1:
            log.warning("portal: %d of %d events failed; first: %s", len(failed),
                        len(outcomes), first.detail)
        if isinstance(first.error, BusinessError | TechnicalError):
            raise first.error
        if isinstance(first.error, _BAD_INPUT):
            raise PortalEventRefused(f"portal event {first.message_id}: {first.detail}") \
                from first.error
        assert first.error is not None
        raise first.error
    return outcomes


def channel_handler(app: App) -> Callable[[Envelope | Sequence[Envelope]], None]:
    """The portal consumer over ``app``'s state database, endpoints and SoRs."""
    registry = EndpointRegistry(app.state)
    owners = OrderOwners(sor_order_owner(app))

    def portal_events(envelopes: Envelope | Sequence[Envelope]) -> None:
        handle(_batch(envelopes), engine=app.state, registry=registry, owners=owners)

    return portal_events

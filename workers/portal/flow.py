"""One portal customer through a phased cutover: the demo's and the e2e test's portal part.

``PortalFlow(app)`` (an app started as a routing process with ``[subscriptions.portal]``):

* serves the governed API (``workers.api.app``) over real HTTP on a loopback port, in this
  process (uvicorn in a thread; ``coexist api serve`` is the same app in its own process),
  with one portal consumer for the customer and its bearer token;
* starts a webhook receiver on loopback (a real HTTP server, an ASGI app under uvicorn)
  that verifies every delivery (coexist's ``signing.verify``, or the one given), dedupes by
  ``webhook-id`` and applies each object's webhook only when its version is newer than
  what it holds - what a customer's system does;
* registers the customer's endpoint for it (audited, like ``coexist portal endpoint add``).

``place_order(when)`` posts a portal order with an Idempotency-Key (and the same request
again: the stored answer is replayed); ``deliver()`` runs the dispatcher until nothing is
due; ``view()`` is the customer's view through the API (its orders, which system
answered); ``differences()`` compares what the receiver holds with the SoR's record as
the portal may see it (empty: the receiver ends equal to the SoR).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import func, select

from coexistence.policy import serialise
from coexistence.router import LEGACY
from workers.portal import signing
from workers.portal.asgi import Disconnected, read_body
from workers.portal.endpoints import EndpointRegistry
from workers.portal.events import EVENT_TYPE, scope_of
from workers.portal.store import DELIVERY, PENDING

if TYPE_CHECKING:
    from workers.bootstrap import App

ACTOR = "coexist-demo"
#: The event types the demo's endpoint receives (availability is coalesced over a 5 s
#: window, which would make every demo step wait for it).
DEMO_EVENTS = ("order.status_changed", "shipment.milestone", "invoice.posted",
               "price.changed")
#: Longest wait for the dispatcher to deliver what is due.
DELIVER_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """An ASGI app under uvicorn on a loopback port, in a thread, until ``stop()``."""

    def __init__(self, asgi) -> None:
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(
            asgi, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off",
            access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="portal-demo-http",
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the loopback HTTP server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class WebhookReceiver:
    """A customer's receiver: verify, dedupe by ``webhook-id``, apply only newer versions."""

    secret: str = ""
    #: ``verify(secret, headers, body) -> webhook-id`` raising on a bad signature: coexist's
    #: own (``signing.verify``) unless another is given (the tests pass the independent
    #: ``standardwebhooks`` package's).
    verify: Callable[[str, dict[str, str], bytes], str] = signing.verify
    received: int = 0
    verified: int = 0
    rejected: list[str] = field(default_factory=list)
    duplicates: int = 0
    seen: set[str] = field(default_factory=set)
    #: (event type, object key) -> the newest ``data`` applied.
    held: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    last: dict[str, Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        try:
            body = await read_body(receive)
        except Disconnected:
            return  # the sender died mid-request; it sends the whole request again
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status = 204
        with self.lock:
            self.received += 1
            try:
                msg_id = self.verify(self.secret, headers, body)
            except Exception as exc:  # noqa: BLE001 - any failed verification is a rejection
                self.rejected.append(f"{type(exc).__name__}: {exc}")
                status = 401
            else:
                self.verified += 1
                if msg_id in self.seen:
                    self.duplicates += 1
                else:
                    self.seen.add(msg_id)
                    event = json.loads(body)
                    data = event["data"]
                    key = (event["type"], data["key"])
                    if key not in self.held or data["version"] > self.held[key]["version"]:
                        self.held[key] = data
                    self.last = {"webhook-id": msg_id, "type": event["type"],
                                 "key": data["key"], "version": data["version"],
                                 "schema_version": event["schema_version"],
                                 "signature": headers["webhook-signature"][:24] + "...",
                                 "correlation_id": headers.get("x-correlation-id")}
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@dataclass
class PlacedOrder:
    when: str
    order_key: str
    system: str
    mode: str
    replayed_same: bool


class PortalFlow:
    """A portal customer, its API credential and its webhook endpoint (module docstring)."""

    def __init__(self, app: App, customer: str | None = None, sku: str | None = None,
                 verify: Callable[[str, dict[str, str], bytes], str] | None = None) -> None:
        from workers.api.app import create_app
        from workers.api.auth import Consumers, new_token, token_hash
        from workers.api.deps import ApiDeps, ApiSettings
        from workers.portal.delivery import Dispatcher

        self.app = app
        self.customer = customer or self._pick_customer()
        self.sku = sku or self._pick_sku()
        self.token = new_token()
        consumers = Consumers.from_json({"consumers": [{
            "name": f"portal-{self.customer}", "role": "portal", "account": self.customer,
            "token_sha256": token_hash(self.token)}]}, "the demo's portal consumer")
        self.deps = ApiDeps.from_app(app, ApiSettings(cache_ttl_s=0), consumers=consumers)
        self.api = Served(create_app(self.deps))
        self.receiver = WebhookReceiver(verify=verify or signing.verify)
        self.hooks = Served(self.receiver)
        self.registry = EndpointRegistry(app.state)
        self.endpoint, self.receiver.secret = self.registry.add(
            self.customer, f"{self.hooks.url}/webhooks", actor=ACTOR,
            reason="demo: the portal customer's webhook receiver", event_types=DEMO_EVENTS)
        self.dispatcher = Dispatcher(app.state, self.registry, app.exceptions, threads=4,
                                     timeout_s=5.0)
        self.http = httpx.Client(base_url=self.api.url, timeout=30.0,
                                 headers={"Authorization": f"Bearer {self.token}"})
        self.orders: list[PlacedOrder] = []

    # ------------------------------------------------------------------ the customer

    def _pick_customer(self) -> str:
        """The customer of the first open order in the legacy ERP that may order."""
        legacy = self.app.erps[LEGACY]
        for order in legacy.stream("order"):
            customer = legacy.get("customer", order.customer_key)
            if customer is not None and customer.status == "active" and \
                    not customer.credit_hold:
                return customer.key
        raise RuntimeError("the sample has no active customer with orders for the portal")

    def _pick_sku(self) -> str:
        legacy = self.app.erps[LEGACY]
        currency = legacy.get("customer", self.customer).currency
        for product in legacy.stream("product"):
            if product.status == "active" and product.currency == currency:
                return product.key
        raise RuntimeError(f"no active product in {currency} for the portal's order")

    def place_order(self, when: str) -> PlacedOrder:
        """A portal order through the API; the same request again replays the answer."""
        body = {"customer_key": self.customer, "customer_po": f"PORTAL-{len(self.orders) + 1}",
                "lines": [{"sku": self.sku, "quantity": 5}]}
        head = {"Idempotency-Key": f'"{uuid.uuid4()}"',
                "X-Correlation-Id": f"portal-demo-{uuid.uuid4().hex[:12]}"}
        first = self.http.post("/v1/orders", json=body, headers=head)
        if first.status_code != 201:
            raise RuntimeError(f"the portal order was refused: {first.status_code} "
                               f"{first.text[:300]}")
        again = self.http.post("/v1/orders", json=body, headers=head)
        data = first.json()["data"]
        placed = PlacedOrder(when, data["order_key"], data["system"], data["mode"],
                             again.headers.get("idempotent-replayed") == "true"
                             and again.json()["data"]["order_key"] == data["order_key"])
        self.orders.append(placed)
        return placed

    def deliver(self, timeout_s: float = DELIVER_TIMEOUT_S) -> int:
        """Run the dispatcher until no webhook is pending; returns how many still are (0
        unless it timed out)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.dispatcher.run_once()
            self.dispatcher.wait(timeout_s)
            with self.app.state.connect() as conn:
                due = conn.execute(select(func.count()).select_from(DELIVERY).where(
                    DELIVERY.c.status == PENDING)).scalar_one()
            if due == 0 or time.monotonic() > deadline:
                return int(due)
            time.sleep(0.1)

    def view(self) -> list[dict[str, Any]]:
        """The customer's orders as the API shows them to the customer."""
        out = []
        for placed in self.orders:
            res = self.http.get(f"/v1/orders/{placed.order_key}")
            res.raise_for_status()
            answer = res.json()
            order = answer["data"]["order"]
            [source] = [s for s in answer["meta"]["answered_by"] if s["domain"] == "order"][:1]
            out.append({"order_key": placed.order_key, "placed": placed.when,
                        "status": order["status"], "lines": len(order.get("lines", [])),
                        "answered_by": source["system"], "pinned": source["pinned"]})
        return out

    def differences(self) -> list[str]:
        """Objects where the receiver's newest applied webhook differs from the SoR."""
        from workers.api.sor import SorReader, sql_pins

        reader = SorReader(self.app.erps, {}, self.app.flags, sql_pins(self.app.state))
        scope = scope_of(self.registry.get(self.endpoint.id))
        domain_of = {v: k for k, v in EVENT_TYPE.items()}
        out = []
        for (event_type, key), data in sorted(self.receiver.held.items()):
            domain = domain_of[event_type]
            record, _source = reader.get(domain, key)
            if record is None:
                if not data["deleted"]:
                    out.append(f"{domain} {key}: the SoR has no such record")
                continue
            owner = None
            if domain == "shipment":
                order, _ = reader.get("order", record.order_key)
                owner = order.customer_key if order is not None else None
            if data["deleted"] or serialise(scope, record, owner=owner) != data["record"]:
                out.append(f"{domain} {key}: the receiver holds v{data['version']}, which "
                           "differs from the SoR")
        return out

    def close(self) -> None:
        self.http.close()
        self.dispatcher.close()
        self.api.stop()
        self.hooks.stop()

    # ------------------------------------------------------------------ the scenario's steps

    def order_step(self, driver, when: str) -> list[str]:
        """Place an order, let the router and the dispatcher settle; the step's notes."""
        placed = self.place_order(when)
        driver.settle()
        left = self.deliver()
        driver.settle()
        r = self.receiver
        return [f"portal order {placed.order_key} {when}: accepted by the {placed.system} "
                f"ERP (order in {placed.mode}); the same Idempotency-Key again "
                + ("replayed the stored answer" if placed.replayed_same
                   else "DID NOT replay the answer"),
                f"portal webhooks so far: {r.verified} received and verified, "
                f"{len(r.rejected)} rejected, {r.duplicates} duplicate(s); "
                f"{left} still pending"]

    def final_notes(self) -> list[str]:
        self.deliver()
        diffs = self.differences()
        notes = [f"the portal customer's receiver holds {len(self.receiver.held)} object(s), "
                 + ("each equal to the SoR" if not diffs else f"{len(diffs)} DIFFERENT from "
                    "the SoR")]
        return notes + diffs[:5]

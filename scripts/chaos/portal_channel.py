"""The portal in the chaos run: ``coexist api serve`` and ``coexist portal deliver`` as
processes (restarted when killed, like the others), a customer's portal placing orders and
asking about them over HTTP, and the customer's webhook receiver (scripts/chaos/receiver.py).

People (through the API only, with bearer tokens from a consumers file of the run's own):

* ``portal_order``: an order placed with ``POST /v1/orders`` and a new Idempotency-Key; every
  third one is sent again with the same key and body (a portal retrying after a lost
  answer); any failed attempt (the API killed, 409 in flight, 5xx) is retried with the
  same key until it is answered;
* ``portal_inquiry``: ``GET /v1/orders/{key}`` of an order placed before and
  ``GET /v1/customers/{key}/credit`` with an inquiry token;
* ``portal_status``: a person at the order desk, in the order domain's SoR (the legacy ERP),
  moves one of the portal's accepted orders a step on (open -> allocated -> shipped ->
  invoiced), so an order gets several ``order.status_changed`` webhooks, not one.

Faults: ``kill_api`` (kill -9 of the API process), ``kill_deliverer`` (kill -9 of the
delivery process mid-run: its claims are retaken after ``--timeout-s`` + ``--lease-margin-s``),
and the ``/gone`` endpoint (times out, then 410).

Verdict: every Idempotency-Key gave one order (the legacy ERP's own ``ORDHDR``, by the
order's PO number, and the same order key on every answer to it); every accepted order's
``order.status_changed`` webhook reached ``/hook`` (``lost`` otherwise), with the SoR's
status at the newest version the receiver applied, and that status the last one the order
desk set (the script's own log of the status changes); duplicate deliveries are flagged by
``webhook-id`` only; every signature verified; the gone endpoint disabled by coexist.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from receiver import ChaosReceiver, Serving

#: Every ``RETRY_EVERY``-th order is sent a second time with the same Idempotency-Key.
RETRY_EVERY = 3
#: How long one portal order may take to be answered (retries included), in seconds.
ORDER_WAIT_S = 90.0
#: How long after the ERPs settled the receiver may wait for the last webhook, in seconds.
PORTAL_WAIT_S = 90.0
ACTIONS = ("portal_order", "portal_inquiry", "portal_status")
#: The steps the order desk moves an order through, after the portal placed it ("open").
STATUS_STEPS = ("allocated", "shipped", "invoiced")
FAULTS = ("kill_api", "kill_deliverer")
EVENTS = ("order.status_changed", "shipment.milestone", "invoice.posted")


class PortalChannel:
    def __init__(self, home: Path, api_port: int, receiver_port: int):
        self.home = home
        self.api_port = api_port
        self.customer: str | None = None
        self.receiver = ChaosReceiver()
        self.serving = Serving(self.receiver, receiver_port)
        self.tokens: dict[str, str] = {}
        self.lock = threading.Lock()
        self._n = 0
        self.threads: list[threading.Thread] = []
        #: Idempotency-Key -> (PO number, order keys answered to it, attempts).
        self.orders: dict[str, dict] = {}
        self.answers: Counter = Counter()  # "POST 201", "POST replayed", "GET 200", ...
        self.inquiries: Counter = Counter()
        self.endpoints: dict[str, int] = {}
        self.problems: list[str] = []
        #: order key -> the statuses the order desk set, in order (the ground truth).
        self.statuses: dict[str, list[str]] = {}
        #: Status changes asked for while no accepted order was left to move: the desk
        #: makes them as soon as there is one (at the next act, at the latest in ``wait``).
        self.status_pending = 0
        self.status_deferred = 0
        self.legacy = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    # ------------------------------------------------------------------ configuration

    def choose(self, customers: list, avoid: set[str]) -> str:
        """The portal's customer account: active, not on credit hold, not in ``avoid``."""
        self.customer = next(c.key for c in customers if c.key not in avoid
                             and not c.credit_hold and str(c.status).lower().endswith("active"))
        return self.customer

    def write_consumers(self) -> Path:
        from workers.api.auth import new_token, token_hash

        entries = []
        for name, role in (("portal-chaos", "portal"), ("inquiry-chaos", "inquiry")):
            token = new_token()
            self.tokens[role] = token
            entry = {"name": name, "role": role, "token_sha256": token_hash(token),
                     "rate_per_s": 1000, "burst": 1000}
            if role == "portal":
                entry["account"] = self.customer
            entries.append(entry)
        path = self.home / "consumers.json"
        path.write_text(json.dumps({"consumers": entries}))
        return path

    def toml(self) -> str:
        return ('\n[subscriptions.portal]\ndomains = ["order", "shipment", "invoice"]\n')

    def env(self) -> dict[str, str]:
        return {"COEXIST_API_CONSUMERS": str(self.write_consumers())}

    def proc_args(self) -> dict[str, list[str]]:
        return {"api": ["api", "serve", "--port", str(self.api_port), "--log-level", "warning"],
                "deliverer": ["portal", "deliver", "--threads", "4", "--timeout-s", "2",
                              "--lease-margin-s", "2", "--log-level", "WARNING"]}

    def add_endpoints(self, cli) -> None:
        """The customer's two endpoints, through the CLI; the receiver keeps /hook's secret."""
        self.serving.start()
        for path in ("/hook", "/gone"):
            events = [a for e in EVENTS for a in ("--event", e)]
            out = cli("portal", "endpoint", "add", "--customer", self.customer, "--url",
                      self.serving.url(path), *events, "--reason", f"chaos: {path}").stdout
            self.endpoints[path] = int(re.search(r"endpoint (\d+)", out).group(1))
            if path == "/hook":
                self.receiver.secret = re.search(r"(whsec_\S+)", out).group(1)

    def close(self) -> None:
        self.serving.stop()

    # ------------------------------------------------------------------ people

    def act(self, kind: str, skus: list[str], deadline: float, legacy=None) -> bool:
        """One person's act; ``False`` if there was nothing to do (no order to move yet)."""
        if legacy is not None:
            self.legacy = legacy
        self.catch_up()
        if kind == "portal_status":
            if self._status(legacy):
                return True
            with self.lock:
                self.status_pending += 1
                self.status_deferred += 1
            return False
        target = {"portal_order": self._order, "portal_inquiry": self._inquiry}[kind]
        t = threading.Thread(target=self._safely, args=(target, skus, deadline), daemon=True)
        t.start()
        self.threads.append(t)
        return True

    def catch_up(self) -> int:
        """The status changes left pending, made now that there are orders to move."""
        made = 0
        while self.status_pending and self.legacy is not None and self._status(self.legacy):
            with self.lock:
                self.status_pending -= 1
            made += 1
        return made

    def _status(self, legacy) -> bool:
        """The order desk moves the accepted portal order furthest behind one step on, in
        the SoR (``person_upsert``: a person's write, captured as an event)."""
        with self.lock:
            placed = sorted({k for e in self.orders.values() for k in e["order_keys"]})
            movable = [k for k in placed if len(self.statuses.get(k, ())) < len(STATUS_STEPS)]
            if not movable:
                return False
            key = min(movable, key=lambda k: (len(self.statuses.get(k, ())), k))
            step = STATUS_STEPS[len(self.statuses.get(key, ()))]
            self.statuses.setdefault(key, []).append(step)
        order = legacy.get("order", key)
        if order is None:
            with self.lock:
                self.statuses[key].pop()
                self.problems.append(f"portal_status: order {key} not in the legacy ERP")
            return False
        from coexistence.canonical.models import OrderStatus

        legacy.person_upsert(order.model_copy(update={"status": OrderStatus(step)}),
                             "ORDERDESK")
        return True

    def _safely(self, target, skus, deadline) -> None:
        try:
            target(skus, deadline)
        except Exception as exc:  # noqa: BLE001 - the verdict says what went wrong
            with self.lock:
                self.problems.append(f"{target.__name__}: {type(exc).__name__}: {exc}")

    def _order(self, skus: list[str], deadline: float) -> None:
        with self.lock:
            self._n += 1
            n = self._n
        key = str(uuid.uuid4())
        po = f"PORTAL{n:06d}"
        body = {"customer_key": self.customer, "customer_po": po,
                "lines": [{"sku": skus[(n + i) % len(skus)], "quantity": 1 + (n + i) % 4}
                          for i in range(2)]}
        entry = {"po": po, "order_keys": [], "attempts": 0}
        with self.lock:
            self.orders[key] = entry
        self._post(key, body, entry, deadline)
        if n % RETRY_EVERY == 0:
            self._post(key, body, entry, deadline)  # the portal retries: same key, same body

    def _post(self, key: str, body: dict, entry: dict, deadline: float) -> None:
        import httpx

        end = min(time.monotonic() + ORDER_WAIT_S, deadline)
        headers = {"Authorization": f"Bearer {self.tokens['portal']}",
                   "Idempotency-Key": f'"{key}"'}
        while True:
            entry["attempts"] += 1
            try:
                r = httpx.post(self.url + "/v1/orders", json=body, headers=headers, timeout=20)
            except httpx.HTTPError as exc:
                self._count(f"POST {type(exc).__name__}")
            else:
                replayed = r.headers.get("idempotent-replayed") == "true"
                self._count(f"POST {r.status_code}{' replayed' if replayed else ''}")
                if r.status_code == 201:
                    entry["order_keys"].append(r.json()["data"]["order_key"])
                    return
                if r.status_code < 500 and r.status_code not in (409, 429):
                    entry["refused"] = f"{r.status_code} {r.text[:200]}"
                    return
            if time.monotonic() > end:
                entry["refused"] = "not answered in time"
                return
            time.sleep(1.0)

    def _inquiry(self, skus: list[str], deadline: float) -> None:
        import httpx

        with self.lock:
            placed = [k for e in self.orders.values() for k in e["order_keys"]]
        headers = {"Authorization": f"Bearer {self.tokens['inquiry']}"}
        paths = [f"/v1/customers/{self.customer}/credit"]
        if placed:
            paths.append(f"/v1/orders/{placed[-1]}")
        for path in paths:
            kind = path.split("/")[2]
            try:
                r = httpx.get(self.url + path, headers=headers, timeout=20)
                code = str(r.status_code)
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            with self.lock:
                self.inquiries[f"{kind} {code}"] += 1

    def _count(self, what: str) -> None:
        with self.lock:
            self.answers[what] += 1

    def join(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))

    # ------------------------------------------------------------------ verdict

    def legacy_orders(self, legacy_engine) -> dict[str, list[str]]:
        from sqlalchemy import text

        with legacy_engine.connect() as conn:
            rows = conn.execute(text('SELECT "ORDNO", "CUSTPO" FROM "ORDHDR" '
                                     "WHERE \"CUSTPO\" LIKE 'PORTAL%'")).all()
        out: dict[str, list[str]] = {}
        for ordno, po in rows:
            out.setdefault(po.strip(), []).append(str(int(ordno)))
        return out

    def verdict(self, legacy, cli, exceptions: list[dict] | None) -> dict:
        in_erp = self.legacy_orders(legacy.engine)
        lost, twice, not_delivered, stale, refused = [], [], [], [], []
        accepted = 0
        for e in self.orders.values():
            keys = set(e["order_keys"])
            rows = in_erp.get(e["po"], [])
            if "refused" in e and not keys:
                refused.append({"po": e["po"], "why": e["refused"]})
            if len(keys) > 1 or len(rows) > 1:
                twice.append({"po": e["po"], "answered": sorted(keys), "in_erp": rows})
            if keys and not rows:
                lost.append({"po": e["po"], "answered": sorted(keys)})
            if not keys:
                continue
            accepted += 1
            order_key = sorted(keys)[0]
            held = self.receiver.objects.get(("order.status_changed", order_key))
            if held is None:
                not_delivered.append(order_key)
                continue
            record = legacy.get("order", order_key)
            sor_status = str(getattr(record.status, "value", record.status)) if record else None
            desk = (self.statuses.get(order_key) or ["open"])[-1]
            if held.record.get("status") != sor_status or sor_status != desk:
                stale.append({"order": order_key, "receiver": held.record.get("status"),
                              "sor": sor_status, "desk_set_last": desk})
        gone_id = self.endpoints.get("/gone")
        listed = cli("portal", "endpoint", "list", "--format", "json", check=False).stdout
        try:
            gone_status = next((r.get("status") for r in json.loads(listed)
                                if r.get("id") == gone_id), None)
        except (json.JSONDecodeError, AttributeError, TypeError):
            gone_status = None
        gone_records = sum(1 for r in exceptions or ()
                           if r["error_type"].startswith("WebhookEndpointGone"))
        figures = self.receiver.figures()
        errors_500 = sum(c for k, c in {**self.answers, **self.inquiries}.items()
                         if k.endswith(" 500"))
        return {
            "orders_sent": len(self.orders),
            "orders_retried_same_key": sum(1 for e in self.orders.values()
                                           if e["attempts"] > 1),
            "orders_accepted": accepted, "orders_refused": len(refused),
            "orders_lost": len(lost), "orders_applied_twice": len(twice),
            "answers": dict(self.answers), "inquiries": dict(self.inquiries),
            "webhooks": {**figures, "orders_not_delivered": len(not_delivered),
                         "stale_at_receiver": len(stale)},
            "status_changes": {
                "made": sum(len(v) for v in self.statuses.values()),
                "orders_moved": len(self.statuses),
                "by_status": dict(Counter(s for v in self.statuses.values() for s in v)),
                "deferred_no_order_yet": self.status_deferred,
                "never_made": self.status_pending,
                "order_webhooks_applied": self.receiver.applied.get("order.status_changed", 0),
                "orders_at_desk_status": accepted - len(stale) - len(not_delivered)},
            "lost": len(lost) + len(not_delivered),
            "gone_endpoint": {"status_after": gone_status, "dead_letters": gone_records},
            "internal_errors_500": errors_500,
            "examples": {"lost": lost[:5], "twice": twice[:5], "refused": refused[:5],
                         "not_delivered": not_delivered[:5], "stale": stale[:5],
                         "problems": self.problems[:5]},
            "ok": not (lost or twice or refused or not_delivered or stale or self.problems
                       or figures["bad_signatures"] or errors_500
                       or gone_status in (None, "active")),
        }

    def done(self) -> bool:
        with self.lock:
            keys = {k for e in self.orders.values() for k in e["order_keys"]}
            want = {k: (self.statuses.get(k) or ["open"])[-1] for k in keys}
        held = {k: self.receiver.objects.get(("order.status_changed", k)) for k in keys}
        return all(h is not None and h.record.get("status") == want[k] for k, h in held.items())


def wait(channel: PortalChannel, deadline: float) -> float:
    """Wait (bounded) for the portal's requests to be answered and its webhooks to arrive."""
    started = time.monotonic()
    end = min(started + PORTAL_WAIT_S, deadline)
    channel.join(max(0.0, end - time.monotonic()))
    channel.catch_up()
    while not channel.done() and time.monotonic() < end:
        time.sleep(0.5)
    return round(time.monotonic() - started, 1)

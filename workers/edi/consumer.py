"""The EDI channel in the production processes: its consumer, its SoR lookups, its poller.

* ``channel_handler(app)``: the function the subscription named ``edi``
  (``[subscriptions.edi]``, queue ``coexist.channel.edi``) runs for its canonical
  events.  It takes a sequence of envelopes (the batch consumer hands it real batches;
  the one-message actor a one-element list; a lone envelope is accepted too) and calls
  ``handlers.handle_events``.  A ``technical_error`` outcome (the SoR could not be read,
  the state database is down) raises ``TechnicalError`` so the middleware retries the
  message; business errors are already in the exception store and are not raised.

  **Idempotent in effect**: one outbound document per (partner, document type, business
  key), ever.  ``_already_sent`` checks it inside the transaction that allocates the
  control numbers and records the document, and the unique index
  ``ix_edi_document_business`` enforces it against a concurrent worker (an
  ``IntegrityError`` is a ``duplicate``).  A redelivery after a crash therefore finds its
  document and sends nothing; a crash between that commit and the file's final name
  leaves the interchange ``allocated``, and the next ``flush_pending`` (at start, and on
  every poll) writes it with the stored bytes: same control numbers, no second file.

* ``EdiPoller``: ``handle_inbound`` every ``COEXIST_EDI_POLL_S`` seconds over every
  partner's ``inbound/``, ``flush_pending`` at start and on each pass, and
  ``release_held`` (the held 856s and 810s whose 855 / 856 is out or whose hold is
  over); run by
  ``coexist run`` and by a ``coexist worker`` that runs the edi channel, when
  ``[[edi.partners]]`` are configured.  Several pollers on the same folders are safe: a
  file is claimed by a rename only one of them wins, and an interchange is recorded under
  a unique (partner, sender:ISA13) key, so a second sighting is a duplicate, never a
  second order.

* ``edi_deps(app)``: the handlers' dependencies from the composition root: the state
  database, the exception store, the partner profiles, and two reads of the system of
  record (the product's unit of measure for 850 lines, 856 and 810; the order for 856 and
  810), each from the ERP the flag (and for an order its pin) names.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bus.envelope import Envelope
from bus.errors import TechnicalError
from coexistence.canonical.models import Order
from coexistence.edi.profiles import EdiSettings
from coexistence.router import LEGACY, placement
from workers.edi import handlers
from workers.errors import SetupError

if TYPE_CHECKING:
    from workers.bootstrap import App

log = logging.getLogger(__name__)

#: The subscription (``[subscriptions.edi]``) whose events this channel turns into documents.
CHANNEL = "edi"
#: Seconds a product's unit of measure is reused before the SoR is read again.
UNIT_TTL_S = 60.0


class SorReader:
    """Reads of the system of record the EDI documents need, through the app's flags."""

    def __init__(self, app: App, *, unit_ttl_s: float = UNIT_TTL_S) -> None:
        self.app = app
        self.unit_ttl_s = unit_ttl_s
        self._units: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def sor_of(self, domain: str, key: str) -> str:
        """The ERP that is the system of record of ``domain:key`` now (flag, then pin)."""
        from coexistence.canonical import DOCUMENT_DOMAINS
        from workers.router.state import get_route

        pinned = None
        if domain in DOCUMENT_DOMAINS:
            with self.app.state.connect() as conn:
                route = get_route(conn, domain, key)
            pinned = route.pinned_sor if route is not None else None
        _mode, sor, _shadows, _pinned = placement(domain, key, self.app.flags.state(domain),
                                                  {}, pinned)
        return sor

    def _erp(self, system: str):
        # Only the ERP asked for is opened (a one-off `coexist edi poll` on a legacy SoR
        # needs no cloud URL); a process has both open already.
        if self.app.has("erps"):
            return self.app.erps[system]
        return self.app.legacy if system == LEGACY else self.app.cloud

    def _read(self, domain: str, key: str):
        system = self.sor_of(domain, key)
        erp = self._erp(system)  # a SetupError names the setting: not retried
        try:
            return erp.get(domain, key)
        except TechnicalError:
            raise
        except Exception as exc:  # noqa: BLE001 - an ERP that cannot answer is retried
            raise TechnicalError(f"reading {domain} {key} from {system}: "
                                 f"{type(exc).__name__}: {exc}") from exc

    def unit_of(self, sku: str) -> str | None:
        """The product's unit of measure in its SoR (``None``: no such product)."""
        now = time.monotonic()
        with self._lock:
            hit = self._units.get(sku)
        if hit is not None and now - hit[0] < self.unit_ttl_s:
            return hit[1]
        product = self._read("product", sku)
        unit = str(product.unit) if product is not None else None
        with self._lock:
            self._units[sku] = (now, unit)
        return unit

    def get_order(self, key: str) -> Order | None:
        order = self._read("order", key)
        return order if isinstance(order, Order) else None


def edi_deps(app: App) -> handlers.EdiDeps:
    """The EDI handlers' dependencies, from the app's parts (built once per app)."""
    reader = SorReader(app)
    return handlers.EdiDeps(app.state, app.settings.edi or EdiSettings(), app.exceptions,
                            unit_of=reader.unit_of, get_order=reader.get_order)


def channel_handler(app: App) -> Callable[[Sequence[Envelope]], None]:
    """What the ``edi`` subscription's consumer runs for a batch of canonical events."""

    def handle(envelopes: Sequence[Envelope] | Envelope) -> list[handlers.Outcome]:
        batch = [envelopes] if isinstance(envelopes, Envelope) else list(envelopes)
        outcomes = handlers.handle_events(batch, app.edi)
        for o in outcomes:
            log.info("edi %s", o.status, extra={"message_id": o.message_id,
                                                "detail": o.detail})
        failed = [o for o in outcomes if o.status == "technical_error"]
        if failed:
            # Sent ones are duplicates on the retry: the whole batch may come again.
            raise TechnicalError("; ".join(f"{o.message_id}: {o.detail}" for o in failed))
        return outcomes

    handle.__name__ = f"channel_{CHANNEL}"
    # On the batch consumer (``handle.batched`` is not False).  An 856 whose 855 is not
    # out yet, or an 810 whose 856 is not, is held durably in ``edi_held`` (outcome
    # ``held``, acked), not retried by the bus: the batch that sends the awaited document,
    # or the next poll, sends it.
    return handle  # type: ignore[return-value]


def runs_edi(app: App) -> bool:
    """True when this process consumes the edi channel and partners are configured."""
    edi = app.settings.edi
    return bool(edi and edi.partners) and any(
        s.name == CHANNEL for s in app.subscriptions) and f"channel_{CHANNEL}" in app.actors


class EdiPoller:
    """``handle_inbound`` every ``poll_s`` over every partner, ``flush_pending`` each pass."""

    def __init__(self, deps: handlers.EdiDeps, *, poll_s: float,
                 abandoned_after_s: float = handlers.ABANDONED_CLAIM_S) -> None:
        self.deps = deps
        self.poll_s = poll_s
        self.abandoned_after_s = abandoned_after_s
        self.passes = 0

    def run_once(self) -> dict[str, Any]:
        """One pass: pending outbound files first, then every complete inbound file."""
        flushed = handlers.flush_pending(self.deps)
        files = handlers.handle_inbound(self.deps, abandoned_after_s=self.abandoned_after_s)
        released = handlers.release_held(self.deps)
        self.passes += 1
        for f in files:
            log.info("edi inbound %s %s", f.partner, f.file, extra={
                "ok": f.ok, "moved_to": f.moved_to, "orders": f.orders,
                "problems": f.problems[:5]})
        return {"flushed": len(flushed), "files": len(files),
                "released": sum(1 for o in released if o.status == "sent"),
                "failed": sum(1 for f in files if not f.ok),
                "orders": sum(len(f.orders) for f in files)}

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except (SetupError, TechnicalError) as exc:
                # A partner's SFTP server refusing the login or unreachable: one line.
                log.error("EDI poll failed: %s; trying again in %.1f s", exc, self.poll_s)
            except Exception:  # noqa: BLE001 - a pass that fails is retried next time
                log.exception("EDI poll failed; trying again in %.1f s", self.poll_s)
            stop.wait(self.poll_s)
        # A graceful stop still writes what is numbered but unwritten (a dead peer's
        # leftovers seen since the last pass), so no row is left ``allocated`` behind it.
        try:
            handlers.flush_pending(self.deps)
        except Exception:  # noqa: BLE001 - the next start's first pass writes them
            log.exception("EDI flush at stop failed; the next start writes what is left")


def start_poller(app: App, stop: threading.Event) -> threading.Thread | None:
    """Poll the partners' folders in a thread when this process runs the edi channel."""
    if not runs_edi(app):
        edi = app.settings.edi
        if edi and edi.partners and not any(s.name == CHANNEL for s in app.subscriptions):
            log.warning("EDI partners are configured but no [subscriptions.edi]: their "
                        "folders are not polled and no 855/856/810 is sent")
        return None
    s = app.settings
    poller = EdiPoller(app.edi, poll_s=s.edi_poll_s, abandoned_after_s=s.edi_claim_timeout_s)
    thread = threading.Thread(target=poller.run_forever, args=(stop,), name="edi-poller",
                              daemon=True)
    thread.start()
    log.info("edi poller started", extra={"partners": [p.id for p in s.edi.partners],
                                          "poll_s": s.edi_poll_s})
    return thread

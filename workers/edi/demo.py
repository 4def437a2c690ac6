"""A trading partner for ``coexist demo`` and the phased-cutover scenario.

``demo_sections(home, customer)`` is the partner's profile and the ``edi`` subscription
(also written into the demo's ``coexist.toml``, so ``coexist edi status``, ``trace`` and
``status`` find them afterwards).  ``EdiTrading.round`` plays the buyer and the
warehouse for a few orders:

1. the buyer drops 850s (written with coexist's own writer, ``documents.partner_850``)
   into the partner's ``inbound/``; one polling pass answers them (997) and queues an
   order command each;
2. the router writes each order into the system of record of the order domain (the
   flag; the order is pinned there) under ``COEXEDI``, and its fan-out brings the order
   event back to the edi channel: an 855;
3. a person in that same ERP ships and invoices the order: the 856 and the 810;
4. every outbound file is read back with coexist's reader and judged as the partner's
   997 would (``acks.judge_group``), and each order's documents are checked: one 997,
   855, 856 and 810, from the ERP that owned the order.

What went wrong is returned as problems (the demo prints them and fails), what went right
as notes.  The e2e test judges the same files with mock-edi and ansi-x12.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from bus.outbox import OutboxRecord
from coexistence.canonical.models import Invoice, Order, Shipment
from coexistence.edi import acks, documents, x12
from coexistence.edi.profiles import EdiSettings, PartnerProfile
from coexistence.router import LEGACY
from workers.edi.consumer import EdiPoller
from workers.edi.handlers import documents_for
from workers.edi.store import DOCUMENT, INTERCHANGE
from workers.router.state import get_route

PARTNER = "DEMOBUY"
#: Shipments and invoices the demo's warehouse creates get keys above the sample's.
DEMO_DOCUMENT_BASE = 8_100_000_000
PERSON_LEGACY = "JSMITH"
PERSON_CLOUD = "ana.cloud"


def demo_profile(home: Path, customer: str, *, partner_id: str = "DEMOBUY",
                 our_id: str = "COEXDIST") -> dict:
    """The demo partner's profile; ``partner_id``/``our_id`` are the ISA and GS ids of the
    partner and of us (the e2e test uses mock-edi's, which plays the partner)."""
    return {"id": PARTNER, "name": "Demo Buyer Inc.",
            "partner_isa": {"qualifier": "ZZ", "id": partner_id},
            "our_isa": {"qualifier": "ZZ", "id": our_id}, "partner_gs": partner_id,
            "our_gs": our_id, "usage": "test", "asn_structure": "SOI",
            "customers": [customer], "folder": str(home / "edi" / PARTNER)}


def demo_sections(home: Path, customer: str, **ids: str) -> dict:
    """The ``Settings`` sections of the demo's partner: ``subscriptions`` and ``edi``."""
    from workers.config import SubscriptionSection

    return {"subscriptions": {"edi": SubscriptionSection(
                domains=("order", "shipment", "invoice"), kinds=("event",))},
            "edi": EdiSettings.from_data({"partners": [demo_profile(home, customer, **ids)]})}


def demo_toml(home: Path, customer: str) -> str:
    """The same sections as TOML, for the demo home's ``coexist.toml``."""
    p = demo_profile(home, customer)
    return (
        "# written by `coexist demo`: its trading partner\n"
        "[subscriptions.edi]\ndomains = [\"order\", \"shipment\", \"invoice\"]\n"
        "kinds = [\"event\"]\n\n"
        "[[edi.partners]]\n"
        f"id = \"{p['id']}\"\nname = \"{p['name']}\"\n"
        "partner_isa = { qualifier = \"ZZ\", id = \"DEMOBUY\" }\n"
        "our_isa = { qualifier = \"ZZ\", id = \"COEXDIST\" }\n"
        "partner_gs = \"DEMOBUY\"\nour_gs = \"COEXDIST\"\nusage = \"test\"\n"
        "asn_structure = \"SOI\"\n"
        f"customers = [\"{customer}\"]\nfolder = \"{p['folder']}\"\n")


@dataclass
class EdiOrder:
    po: str
    key: str
    sor: str
    documents: dict[str, int] = field(default_factory=dict)


class EdiTrading:
    """The demo partner's buyer and the distributor's warehouse (see the module docstring)."""

    def __init__(self, app, settle: Callable[[], object], *,
                 person: Callable[[str, object], None],
                 buyer: Callable[[Order, dict[str, str]], None] | None = None) -> None:
        self.app = app
        self.settle = settle
        #: ``person(system, record)``: a person creates ``record`` in ``system``.
        self.person = person
        #: ``buyer(order, units)``: the partner sends an 850 for ``order`` (its PO number is
        #: ``order.customer_po``); by default coexist's own writer drops it into inbound/.
        self.buyer = buyer or self._drop_850
        self.profile: PartnerProfile = app.settings.edi.partners[0]
        self.poller = EdiPoller(app.edi, poll_s=1.0)
        self._control = itertools.count(1)
        self._doc = itertools.count(DEMO_DOCUMENT_BASE + 1)
        self.orders: list[EdiOrder] = []
        self.problems: list[str] = []

    def _catalogue(self) -> dict[str, str]:
        erp = self.app.erps[LEGACY]
        return {p.key: str(p.unit) for p in itertools.islice(erp.stream("product"), 6)}

    def round(self, label: str, expect_sor: str, n: int = 2) -> list[str]:
        """``n`` orders by 850, each shipped and invoiced in ``expect_sor``; returns notes."""
        units = self._catalogue()
        skus = sorted(units)
        at = datetime.now(UTC).replace(microsecond=0)
        pos = []
        for i in range(n):
            po = f"DEMO-{label}-{i + 1}"
            order = Order.model_validate({
                "key": "0", "customer_key": self.profile.customers[0], "status": "open",
                "channel": "edi", "customer_po": po, "currency": self.profile.currency,
                "ordered_at": at, "requested_date": at.date() + timedelta(days=7),
                "lines": [{"line_no": ln, "sku": sku, "quantity": 2 * ln + i,
                           "unit_price": f"{3 * ln}.50"}
                          for ln, sku in enumerate(skus[i % 2: i % 2 + 2], 1)]})
            self.buyer(order, units)
            pos.append(po)
        answered = self.poller.run_once()
        if answered["orders"] != n:
            self.problems.append(f"EDI {label}: {n} 850s dropped, {answered['orders']} order "
                                 f"command(s) ({answered['failed']} file(s) to failed/)")
        self.settle()  # orders into the SoR, their events back to the channel: 855s
        placed = []
        for po in pos:
            key = self._order_key(po)
            if key is None:
                self.problems.append(f"EDI {label}: PO {po} has no order")
                continue
            placed.append(self._place(label, po, key, expect_sor))
        for o in placed:
            order = self.app.erps[o.sor].get("order", o.key)
            ship_key, inv_key = str(next(self._doc)), str(next(self._doc))
            shipped = datetime.now(UTC).replace(microsecond=0)
            self.person(o.sor, Shipment.model_validate({
                "key": ship_key, "order_key": o.key, "warehouse": "DAL1", "carrier": "UPSN",
                "tracking_number": f"1ZDEMO{ship_key}",
                "milestones": [{"milestone": m, "at": shipped}
                               for m in ("picked", "packed", "shipped")],
                "lines": [{"line_no": n, "order_line_no": ln.line_no, "sku": ln.sku,
                           "quantity": ln.quantity} for n, ln in enumerate(order.lines, 1)]}))
            self.person(o.sor, Invoice.model_validate({
                "key": inv_key, "order_key": o.key, "customer_key": order.customer_key,
                "status": "open", "currency": order.currency, "issued_on": shipped.date(),
                "due_on": shipped.date() + timedelta(days=30), "tax_amount": "1.25",
                "lines": [{"line_no": ln.line_no, "sku": ln.sku, "description": ln.sku,
                           "quantity": ln.quantity, "unit_price": ln.unit_price}
                          for ln in order.lines]}))
        self.settle()  # shipment and invoice events: 856 and 810
        notes = []
        for o in placed:
            self._check(label, o)
            self.orders.append(o)
            numbers = ", ".join(f"{t} #{n}" for t, n in o.documents.items())
            notes.append(f"EDI {label}: PO {o.po} -> order {o.key} in {o.sor} (pinned); "
                         f"{numbers}")
        notes += self._read_back(label)
        return notes

    def _drop_850(self, order: Order, units: dict[str, str]) -> None:
        folder = self.app.edi.folder(self.profile).ensure()
        text = documents.partner_850(self.profile, order, control=next(self._control),
                                     at=order.ordered_at, unit_of=units.get)
        po = order.customer_po
        tmp = folder.inbound / f".{po}.edi.part"
        tmp.write_text(text)
        tmp.rename(folder.inbound / f"{po}.edi")  # the partner's final rename

    # ------------------------------------------------------------------ checks

    def _order_key(self, po: str) -> str | None:
        with self.app.state.connect() as conn:
            return conn.execute(select(DOCUMENT.c.order_key).where(
                DOCUMENT.c.partner == self.profile.id, DOCUMENT.c.direction == "in",
                DOCUMENT.c.po_number == po, DOCUMENT.c.order_key.is_not(None))
                .limit(1)).scalar_one_or_none()

    def _place(self, label: str, po: str, key: str, expect_sor: str) -> EdiOrder:
        with self.app.state.connect() as conn:
            route = get_route(conn, "order", key)
            sources = {r.source for r in conn.execute(
                select(OutboxRecord.__table__.c.payload.label("source"))
                .where(OutboxRecord.__table__.c.queue_name == "coexist.channel.edi",
                       OutboxRecord.__table__.c.domain == "order",
                       OutboxRecord.__table__.c.partition_key == key))}
        pinned = route.pinned_sor if route is not None else None
        if pinned != expect_sor:
            self.problems.append(f"EDI {label}: order {key} (PO {po}) is pinned to {pinned}, "
                                 f"expected {expect_sor}")
        if self.app.erps[expect_sor].get("order", key) is None:
            self.problems.append(f"EDI {label}: order {key} (PO {po}) is not in {expect_sor}")
        systems = {json.loads(s)["source_system"] for s in sources}
        if systems != {expect_sor}:
            self.problems.append(f"EDI {label}: order {key}'s events reached the edi channel "
                                 f"from {sorted(systems) or 'nowhere'}, expected {expect_sor}")
        return EdiOrder(po, key, expect_sor)

    def _check(self, label: str, o: EdiOrder) -> None:
        docs = documents_for(self.app.state, domain="order", key=o.key)
        kinds = [(d.direction, d.doc_type) for d in docs]
        want = [("in", "850"), ("out", "997"), ("out", "855"), ("out", "856"), ("out", "810")]
        if sorted(kinds) != sorted(want):
            self.problems.append(f"EDI {label}: order {o.key} has documents {kinds}, expected "
                                 f"one each of {want}")
        o.documents = {d.doc_type: d.isa13 for d in docs if d.direction == "out"}

    def _outbound_files(self, attempts: int = 10) -> tuple[list[Path], dict[Path, bytes]]:
        """Every outbound file we wrote, wherever the partner has it now, with its bytes.

        A partner may move what it has read into a folder of its own under outbound/, and
        mock-edi claims a file first by renaming it to ``NAME.processing``: a listing taken
        during such a move misses the file.  So the listing is taken again (briefly) until
        it holds every file the state database says was written."""
        folder = self.app.edi.folder(self.profile)
        with self.app.state.connect() as conn:
            names = {r.file_name for r in conn.execute(
                select(INTERCHANGE.c.file_name).where(
                    INTERCHANGE.c.partner == self.profile.id,
                    INTERCHANGE.c.direction == "out", INTERCHANGE.c.status == "written"))}
        found: dict[str, Path] = {}
        contents: dict[Path, bytes] = {}
        for attempt in range(attempts):
            for p in folder.outbound.rglob("*.x12*"):
                if p.name.startswith("."):
                    continue
                name = p.name[: p.name.index(".x12") + 4]
                if name in found:
                    continue
                try:
                    contents[p] = p.read_bytes()
                except FileNotFoundError:
                    continue  # moved while we looked: found again next time
                found[name] = p
            if names <= set(found) or attempt == attempts - 1:
                break
            time.sleep(0.1)
        files = sorted(found.values(), key=lambda p: p.name)
        return files, contents

    def _read_back(self, label: str) -> list[str]:
        """Every outbound file through coexist's reader and the partner's 997 judgement."""
        files, contents = self._outbound_files()
        seen: list[int] = []
        for path in files:
            try:
                interchanges = x12.read(contents[path], file=path.name)
            except x12.X12Error as exc:
                self.problems.append(f"EDI {label}: {path.name} does not read back: {exc}")
                continue
            for ic in interchanges:
                seen.append(int(ic.control))
                if ic.errors:
                    self.problems.append(f"EDI {label}: {path.name}: {ic.errors[0]}")
                for group in ic.groups:
                    codes = sorted({ts.code for ts in group.sets})
                    verdict = acks.judge_group(group, codes)
                    bad = [s for s in verdict.sets if s.status != "A"]
                    if bad:
                        self.problems.append(f"EDI {label}: {path.name}: the partner would "
                                             f"answer AK5 {bad[0].status} ({bad[0].reasons})")
        if sorted(seen) != list(range(1, len(seen) + 1)):
            self.problems.append(f"EDI {label}: outbound ISA13s {sorted(seen)} are not 1..N "
                                 "without gap or reuse")
        return [f"EDI {label}: {len(files)} outbound file(s) so far read back clean with "
                f"coexist's reader, ISA13 1..{len(seen)} without gap or reuse"] \
            if not self.problems else []

"""The EDI channel in the chaos run: a trading partner dropping 850s into its file-drop folder,
a warehouse shipping and invoicing the orders in the SoR, and a verdict read from the files
the partner receives (no coexist bookkeeping on the read path: the outbound folder, parsed,
and the legacy ERP's own order table).

The partner (the buyer) is this module: it writes each 850 with the X12 writer the demo's
buyer uses (``documents.partner_850``, the partner's identities and ISA13), under a
temporary name and renames it into ``inbound/`` as a partner's translator does. Now and then
it sends an interchange again under another file name (a duplicated delivery: same sender,
same ISA13), which must be answered as a duplicate and never become a second order.

The warehouse (a person in the legacy ERP, the order domain's SoR all run long) ships and
invoices every order the 850s became: one shipment and one invoice each, typed with
``person_upsert``; their events are the 856 and the 810.

Verdict, per 850 sent (by PO number): exactly one order in the legacy ERP (``ORDHDR.CUSTPO``),
one 997 answering its group (AK1 group control), one 855 (BAK03), one 856 (PRF01) and one
810 (BIG04) among the outbound files, every outbound set one the partner's 997 would accept
(``acks.judge_group``), our ISA13s unique and 1..N without a gap; ``inbound/`` and
``failed/`` empty.  ``lost``: a PO without its order or one of its four answers;
``duplicated``: a second order, or a second document of one type, for one PO.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

PARTNER = "CHAOSBUY"
PARTNER_ID = "CHAOSBUY"
OUR_ID = "COEXCHAOS"
#: Shipment and invoice keys the warehouse gives (above the seed's).
DOC_BASE = 8_200_000_000
#: How long after the ERPs settled the partner may wait for the last 856/810, in seconds.
EDI_WAIT_S = 120.0
#: Every ``RESEND_EVERY``-th 850 the partner sends again (same ISA13, another file name).
RESEND_EVERY = 5
ACTIONS = ("edi_850",)
#: The transaction sets the partner receives and the segment/element naming its PO.
PO_OF = {"855": ("BAK", 3), "856": ("PRF", 1), "810": ("BIG", 4)}


class EdiChannel:
    """The partner's folders and profile, the buyer, the warehouse and the verdict."""

    def __init__(self, home: Path, seed: int):
        self.home = home
        self.folder = home / "edi" / PARTNER
        self.customer: str | None = None
        self.lock = threading.Lock()
        self._n = 0
        #: PO number -> ISA13 of the 850 that carried it.
        self.sent: dict[str, int] = {}
        #: POs whose interchange was sent a second time.
        self.resent: list[str] = []
        #: PO -> order key, for the orders the warehouse shipped and invoiced.
        self.fulfilled: dict[str, str] = {}
        self._doc = DOC_BASE
        self.units: dict[str, str] = {}
        self.profile = None

    # ------------------------------------------------------------------ configuration

    def choose(self, keys: list[str], avoid: set[str]) -> list[str]:
        """The partner's customer (not one the clerks edit or delete); returns the rest."""
        self.customer = next(k for k in keys if k not in avoid)
        return [k for k in keys if k != self.customer]

    def toml(self) -> str:
        """``[subscriptions.edi]`` and the partner for the run's ``coexist.toml``."""
        return ('\n[subscriptions.edi]\ndomains = ["order", "shipment", "invoice"]\n'
                'kinds = ["event"]\n\n'
                f'[[edi.partners]]\nid = "{PARTNER}"\nname = "Chaos Buyer Inc."\n'
                f'partner_isa = {{ qualifier = "ZZ", id = "{PARTNER_ID}" }}\n'
                f'our_isa = {{ qualifier = "ZZ", id = "{OUR_ID}" }}\n'
                f'partner_gs = "{PARTNER_ID}"\nour_gs = "{OUR_ID}"\nusage = "test"\n'
                f'asn_structure = "SOI"\ncustomers = ["{self.customer}"]\n'
                f'folder = "{self.folder}"\n')

    @staticmethod
    def env() -> dict[str, str]:
        # Poll often; a claim whose worker was killed is taken over after 5 s.
        return {"COEXIST_EDI_POLL_S": "0.5", "COEXIST_EDI_CLAIM_TIMEOUT_S": "5"}

    def connect(self, legacy) -> None:
        """Read the catalogue (units) from the legacy ERP; the profile from the TOML."""
        from coexistence.edi.profiles import EdiSettings

        self.profile = EdiSettings.from_toml(self.toml()).partners[0]
        self.units = {p.key: str(p.unit) for p in legacy.stream("product")}
        for sub in ("inbound", "outbound", "processed", "failed"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ the partner

    def act(self, kind: str, legacy) -> None:
        if kind != "edi_850":
            raise ValueError(kind)
        self.send_850()
        self.warehouse(legacy)

    def send_850(self) -> str:
        from coexistence.canonical.models import Order
        from coexistence.edi import documents

        with self.lock:
            self._n += 1
            n = self._n
        po = f"CHAOS{n:06d}"
        at = datetime.now(UTC).replace(microsecond=0)
        skus = sorted(self.units)
        order = Order.model_validate({
            "key": "0", "customer_key": self.customer, "status": "open", "channel": "edi",
            "customer_po": po, "currency": "USD", "ordered_at": at,
            "requested_date": at.date() + timedelta(days=7),
            "lines": [{"line_no": ln, "sku": skus[(n + ln) % len(skus)],
                       "quantity": ln + n % 3, "unit_price": f"{2 * ln}.25"}
                      for ln in (1, 2)]})
        text = documents.partner_850(self.profile, order, control=n, at=at,
                                     unit_of=self.units.get)
        self._drop(f"{po}.edi", text)
        self.sent[po] = n
        if n % RESEND_EVERY == 0:
            # The partner's translator delivers the same interchange twice.
            self._drop(f"{po}-again.edi", text)
            self.resent.append(po)
        return po

    def _drop(self, name: str, text: str) -> None:
        tmp = self.folder / "inbound" / f".{name}.part"
        tmp.write_text(text)
        tmp.rename(self.folder / "inbound" / name)  # the partner's final rename

    # ------------------------------------------------------------------ the warehouse

    def orders_by_po(self, legacy_engine) -> dict[str, list[str]]:
        """The legacy ERP's orders carrying the partner's PO numbers (its own table)."""
        from sqlalchemy import text

        with legacy_engine.connect() as conn:
            rows = conn.execute(text('SELECT "ORDNO", "CUSTPO" FROM "ORDHDR" '
                                     "WHERE \"CUSTPO\" LIKE 'CHAOS%'")).all()
        out: dict[str, list[str]] = defaultdict(list)
        for ordno, po in rows:
            out[po.strip()].append(str(int(ordno)))
        return out

    def warehouse(self, legacy) -> int:
        """Ship and invoice every partner order not yet done; returns how many it did."""
        from coexistence.canonical.models import Invoice, Shipment

        done = 0
        for po, keys in self.orders_by_po(legacy.engine).items():
            if po in self.fulfilled or po not in self.sent:
                continue
            order = legacy.get("order", keys[0])
            if order is None:
                continue
            with self.lock:
                ship_key, inv_key = str(self._doc + 1), str(self._doc + 2)
                self._doc += 2
            at = datetime.now(UTC).replace(microsecond=0)
            legacy.person_upsert(Shipment.model_validate({
                "key": ship_key, "order_key": order.key, "warehouse": "DAL1",
                "carrier": "UPSN", "tracking_number": f"1ZCHAOS{ship_key}",
                "milestones": [{"milestone": m, "at": at}
                               for m in ("picked", "packed", "shipped")],
                "lines": [{"line_no": i, "order_line_no": ln.line_no, "sku": ln.sku,
                           "quantity": ln.quantity} for i, ln in enumerate(order.lines, 1)]}),
                "WAREHOUSE")
            legacy.person_upsert(Invoice.model_validate({
                "key": inv_key, "order_key": order.key, "customer_key": order.customer_key,
                "status": "open", "currency": order.currency, "issued_on": at.date(),
                "due_on": at.date() + timedelta(days=30), "tax_amount": "1.25",
                "lines": [{"line_no": ln.line_no, "sku": ln.sku, "description": ln.sku,
                           "quantity": ln.quantity, "unit_price": ln.unit_price}
                          for ln in order.lines]}), "BILLING")
            self.fulfilled[po] = order.key
            done += 1
        return done

    # ------------------------------------------------------------------ verdict

    def outbound(self) -> list[tuple[str, bytes]]:
        files = []
        for p in sorted((self.folder / "outbound").rglob("*.x12*")):
            if p.name.startswith(".") or not p.is_file():
                continue
            try:
                files.append((p.name, p.read_bytes()))
            except FileNotFoundError:
                continue
        return files

    def verdict(self, legacy_engine) -> dict:
        from coexistence.edi import acks, x12

        docs: dict[str, Counter] = defaultdict(Counter)  # PO -> Counter(type)
        answered: Counter = Counter()  # our 850 group control (= ISA13) -> 997s
        isa13s: list[int] = []
        rejected: list[str] = []
        unreadable: list[str] = []
        kinds: Counter = Counter()
        for name, data in self.outbound():
            try:
                interchanges = x12.read(data, file=name)
            except x12.X12Error as exc:
                unreadable.append(f"{name}: {exc}")
                continue
            for ic in interchanges:
                isa13s.append(int(ic.control))
                ta1 = not ic.groups and "TA1" in ic.text
                if ta1:
                    kinds["TA1"] += 1  # an interchange acknowledgment (no group)
                # (coexist's reader reads transaction sets: a TA1 is "outside" one to it)
                errors = [f for f in ic.errors if not (ta1 and f.segment == "TA1")]
                if errors:
                    unreadable.append(f"{name}: {errors[0]}")
                for group in ic.groups:
                    codes = sorted({ts.code for ts in group.sets})
                    verdict = acks.judge_group(group, codes)
                    rejected += [f"{name}: AK5 {s.status} {s.reasons}" for s in verdict.sets
                                 if s.status != "A"]
                    for ts in group.sets:
                        kinds[ts.code] += 1
                        if ts.code == "997":
                            for acked in acks.read_997(ts):
                                if acked.group_control:
                                    answered[int(acked.group_control)] += 1
                        elif ts.code in PO_OF:
                            tag, el = PO_OF[ts.code]
                            seg = next((s for s in ts.body if s.tag == tag), None)
                            if seg is not None:
                                docs[seg.get(el)][ts.code] += 1
        orders = self.orders_by_po(legacy_engine)
        lost, duplicated = [], []
        acknowledged = 0
        for po, control in self.sent.items():
            n_orders = len(orders.get(po, []))
            got = {"order": n_orders, "997": answered.get(control, 0),
                   **{t: docs[po][t] for t in PO_OF}}
            if got["997"]:
                acknowledged += 1
            missing = [t for t, c in got.items() if c == 0]
            twice = [t for t, c in got.items() if c > 1]
            if missing:
                lost.append({"po": po, "missing": missing})
            if twice:
                duplicated.append({"po": po, "twice": twice})
        strange = sorted(set(docs) - set(self.sent))
        numbers = sorted(isa13s)
        reused = [n for n, c in Counter(numbers).items() if c > 1]
        gap = numbers != list(range(1, len(numbers) + 1))
        left = {sub: sorted(p.name for p in (self.folder / sub).iterdir()
                            if not p.name.startswith("."))
                for sub in ("inbound", "failed")}
        # A duplicated delivery is answered TA1 025 and its file goes to failed/: those
        # are expected there, one each; anything else in failed/ is not.
        # (Either copy may be the one read second: both are in inbound/ at once.)
        failed_names = Counter(n.split(".edi")[0].removesuffix("-again")
                               for n in left["failed"])
        left["failed"] = sorted(n for n in left["failed"]
                                if n.split(".edi")[0].removesuffix("-again") not in self.resent
                                or failed_names[n.split(".edi")[0].removesuffix("-again")] > 1)
        duplicates_answered = sum(1 for po in self.resent if failed_names[po] == 1)
        return {
            "sent": len(self.sent), "resent_as_duplicates": len(self.resent),
            "acknowledged": acknowledged, "fulfilled": len(self.fulfilled),
            "outbound_sets": dict(kinds), "lost": len(lost), "duplicated": len(duplicated),
            "rejected_by_partner": len(rejected), "unreadable": len(unreadable),
            "unknown_po": len(strange), "isa13_reused": len(reused), "isa13_gap": gap,
            "left_in": {k: len(v) for k, v in left.items()},
            "duplicates_answered_ta1": min(kinds.get("TA1", 0), duplicates_answered),
            "examples": {"lost": lost[:5], "duplicated": duplicated[:5],
                         "rejected": rejected[:5], "unreadable": unreadable[:5],
                         "unknown_po": strange[:5], "left": {k: v[:5] for k, v in left.items()}},
            "ok": not (lost or duplicated or rejected or unreadable or strange or reused
                       or gap or any(left.values())
                       or kinds.get("TA1", 0) != len(self.resent)
                       or duplicates_answered != len(self.resent)),
        }

    def done(self, legacy_engine) -> bool:
        v = self.verdict(legacy_engine)
        return v["lost"] == 0 and v["left_in"]["inbound"] == 0


def wait(channel: EdiChannel, legacy, deadline: float) -> float:
    """Ship what is left and wait (bounded) until every 850 has its answers."""
    started = time.monotonic()
    end = min(started + EDI_WAIT_S, deadline)
    while True:
        channel.warehouse(legacy)
        if channel.done(legacy.engine) and len(channel.fulfilled) == len(channel.sent):
            break
        if time.monotonic() > end:
            break
        time.sleep(1.0)
    return round(time.monotonic() - started, 1)

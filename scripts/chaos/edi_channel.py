"""The EDI channel in the chaos run: a trading partner dropping 850s into its file-drop folder,
a warehouse shipping and invoicing the orders in the SoR, and a verdict read from the files
the partner receives (no coexist bookkeeping on the read path: the outbound folder, parsed,
and the legacy ERP's own order table).

The partner (the buyer) is mock-edi (``mockedi``, an independent X12 implementation coexist
does not ship, a test-only dependency), started in this process as ``CHAOSBUY`` with coexist
registered as its supplier ``COEXCHAOS``. It places each order (``POST /_mock/purchase``) and
writes its 850 into a pickup folder of its own; the partner's transport (this module, a
thread) moves each file into coexist's ``inbound/`` under a temporary name and renames it, as
a partner's translator does, and now and then delivers an 850 again under another file name
(a duplicated delivery: same sender, same ISA13), which must be answered as a duplicate and
never become a second order. mock-edi reads coexist's ``outbound/`` (it moves what it read
into ``outbound/processed/``), answers every group with its own 997 (carried back the same
way) and records where an 855/856/810 disagrees with the order it placed.

The warehouse (a person in the legacy ERP, the order domain's SoR all run long) ships and
invoices every order the 850s became: one shipment and one invoice each, typed with
``person_upsert``; their events are the 856 and the 810.

Verdict, per 850 sent (by PO number): exactly one order in the legacy ERP (``ORDHDR.CUSTPO``),
one 997 answering its group (AK1 group control), one 855 (BAK03), one 856 (PRF01) and one
810 (BIG04) among the outbound files, every outbound set one the partner's 997 would accept
(``acks.judge_group``), our ISA13s unique and 1..N without a gap; ``inbound/`` and
``failed/`` empty.  ``lost``: a PO without its order or one of its four answers;
``duplicated``: a second order, or a second document of one type, for one PO.  mock-edi's
judgments (``mock_edi``): its 997s for coexist's groups by functional id and AK5/AK9 status
(every 855/856/810 set accepted), its disagreements (none), and per PO its reconciliation
(ordered = confirmed = shipped = billed on every line).
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
#: The functional id (GS01) of each set coexist sends the partner, as mock-edi's 997 names it.
FUNCTIONAL_ID = {"855": "PR", "856": "SH", "810": "IN", "997": "FA"}
#: How often the partner's transport moves files from mock-edi's pickup folder, in seconds.
TRANSPORT_S = 0.25


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
        #: mock-edi (started by ``connect``), its pickup folder, the transport thread.
        self.mock = None
        self.staging = home / "edi" / "mock-pickup"
        self._stop = threading.Event()
        self._transport: threading.Thread | None = None
        self._moved = threading.Lock()
        #: PO -> the partner's number of it (which ones are delivered twice).
        self._n_of: dict[str, int] = {}
        #: mock-edi's 997 verdicts on coexist's sets: (functional id, AK5/AK9 status) -> n.
        self.mock_acks: Counter = Counter()
        self.mock_rejects: list[str] = []
        self.unreadable_from_mock: list[str] = []
        #: The names (without ``.edi``) of the files delivered twice.
        self._resent_files: list[str] = []

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
        self.staging.mkdir(parents=True, exist_ok=True)
        self.start_partner()

    def start_partner(self) -> None:
        """mock-edi as the buyer, coexist its supplier; and the partner's transport."""
        try:
            from mockedi.testing import Mock
        except ImportError as exc:  # a clear error, not a traceback deep in the run
            raise RuntimeError("the chaos run's EDI partner is mock-edi: install the test "
                               "dependencies (scripts/bootstrap.sh) or run with --channels "
                               "crm,deletes,portal") from exc

        # mock-edi reads coexist's outbound/ (our files are complete under their final
        # name, so no settle time) and writes into a pickup folder of its own.
        self.mock = Mock.start(as2_id=PARTNER_ID, drop_dir=str(self.folder / "outbound"),
                               pickup_dir=str(self.staging), drop_settle_ms=0,
                               drop_interval_ms=500)
        reply = self.mock.post("/_mock/partners", {
            "id": OUR_ID, "name": "Coexist chaos supplier", "role": "supplier",
            "behaviour": "accept", "qualifier": "ZZ", "dialect": "X12",
            "version": "004010"})
        if reply.status != 201:
            raise RuntimeError(f"mock-edi refused coexist as its supplier: {reply.body}")
        self._transport = threading.Thread(target=self._carry, name="edi-transport",
                                           daemon=True)
        self._transport.start()

    def close(self) -> None:
        self._stop.set()
        if self._transport is not None:
            self._transport.join(timeout=5)
        if self.mock is not None:
            self.mock.close()
            self.mock = None

    # ------------------------------------------------------------------ the partner

    def act(self, kind: str, legacy) -> None:
        if kind != "edi_850":
            raise ValueError(kind)
        self.send_850()
        self.warehouse(legacy)

    def send_850(self) -> str:
        """mock-edi places an order with coexist: its 850 goes out through the transport."""
        with self.lock:
            self._n += 1
            n = self._n
        po = f"CHAOS{n:06d}"
        skus = sorted(self.units)
        requested = (datetime.now(UTC) + timedelta(days=7)).date().isoformat()
        reply = self.mock.post("/_mock/purchase", {
            "partner": OUR_ID, "po_number": po, "requested_on": requested,
            "lines": [{"sku": skus[(n + ln) % len(skus)], "quantity": str(ln + n % 3),
                       "uom": self.units[skus[(n + ln) % len(skus)]],
                       "price": f"{2 * ln}.25"} for ln in (1, 2)]})
        if reply.status != 201:
            raise RuntimeError(f"mock-edi did not place {po}: {reply.body}")
        with self.lock:
            self._n_of[po] = n
            self.sent.setdefault(po, None)  # its group control once the 850 is carried
        self.carry()
        return po

    # ------------------------------------------------------------------ the transport

    def _carry(self) -> None:
        while not self._stop.wait(TRANSPORT_S):
            try:
                self.carry()
            except Exception as exc:  # noqa: BLE001 - the verdict shows what was not carried
                self.unreadable_from_mock.append(f"transport: {type(exc).__name__}: {exc}")

    def carry(self) -> int:
        """Move mock-edi's files into coexist's ``inbound/`` (every ``RESEND_EVERY``-th 850
        twice), reading on the way the PO and group of each 850 and the verdicts of each 997."""
        from coexistence.edi import acks, x12

        moved = 0
        with self._moved:
            for path in sorted(self.staging.iterdir()):
                if path.name.startswith(".") or path.name.endswith(".tmp") or path.is_dir():
                    continue
                data = path.read_bytes()
                again = False
                try:
                    interchanges = x12.read(data, file=path.name)
                except x12.X12Error as exc:
                    interchanges = []
                    self.unreadable_from_mock.append(f"{path.name}: {exc}")
                for ic in interchanges:
                    for group in ic.groups:
                        for ts in group.sets:
                            if ts.code == "850":
                                beg = next((g for g in ts.body if g.tag == "BEG"), None)
                                po = beg.get(3) if beg is not None else ""
                                with self.lock:
                                    self.sent[po] = int(group.control)
                                    again = self._n_of.get(po, 1) % RESEND_EVERY == 0
                                    if again:
                                        self.resent.append(po)
                                        self._resent_files.append(
                                            path.name.removesuffix(".edi"))
                            elif ts.code == "997":
                                for acked in acks.read_997(ts):
                                    self.mock_acks[(acked.functional_id, acked.status)] += 1
                                    if acked.status != "A":
                                        self.mock_rejects.append(
                                            f"{path.name}: group {acked.group_control} "
                                            f"{acked.functional_id} set {acked.control}: "
                                            f"{acked.status} {acked.note}")
                self._drop(path.name, data)
                if again:
                    # The partner's translator delivers the same interchange twice.
                    self._drop(path.name.removesuffix(".edi") + "-again.edi", data)
                path.unlink()
                moved += 1
        return moved

    def _drop(self, name: str, data: bytes) -> None:
        tmp = self.folder / "inbound" / f".{name}.part"
        tmp.write_bytes(data)
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

    def confirmed(self, po: str) -> bool:
        """mock-edi holds coexist's 855 for ``po``: every line confirmed as ordered."""
        reply = self.mock.get(f"/_mock/orders/{po}?partner={OUR_ID}")
        lines = reply.body.get("reconciliation") if reply.status == 200 else None
        return bool(lines) and all(ln["confirmed"] == ln["ordered"] for ln in lines)

    def warehouse(self, legacy) -> int:
        """Ship and invoice every partner order the buyer holds the 855 of and not yet done;
        returns how many it did. (A warehouse ships a confirmed order: one shipped seconds
        after it was entered, before its 855 was out, mock-edi reports as
        ``shipped-before-confirmed``; coexist does not hold an 856 back for the 855.)"""
        from coexistence.canonical.models import Invoice, Shipment

        done = 0
        for po, keys in self.orders_by_po(legacy.engine).items():
            if po in self.fulfilled or po not in self.sent:
                continue
            if not self.confirmed(po):
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

    def verdict(self, legacy_engine, details: bool = True) -> dict:
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
        resent = set(self._resent_files)
        left["failed"] = sorted(n for n in left["failed"]
                                if n.split(".edi")[0].removesuffix("-again") not in resent
                                or failed_names[n.split(".edi")[0].removesuffix("-again")] > 1)
        duplicates_answered = sum(1 for name in resent if failed_names[name] == 1)
        judged = self.mock_judgment(kinds, details=details)
        return {
            "sent": len(self.sent), "resent_as_duplicates": len(self.resent),
            "acknowledged": acknowledged, "fulfilled": len(self.fulfilled),
            "outbound_sets": dict(kinds), "lost": len(lost), "duplicated": len(duplicated),
            "rejected_by_partner": len(rejected), "unreadable": len(unreadable),
            "unknown_po": len(strange), "isa13_reused": len(reused), "isa13_gap": gap,
            "left_in": {k: len(v) for k, v in left.items()},
            "duplicates_answered_ta1": min(kinds.get("TA1", 0), duplicates_answered),
            "mock_edi": judged,
            "examples": {"lost": lost[:5], "duplicated": duplicated[:5],
                         "rejected": rejected[:5], "unreadable": unreadable[:5],
                         "unknown_po": strange[:5], "left": {k: v[:5] for k, v in left.items()}},
            "ok": not (lost or duplicated or rejected or unreadable or strange or reused
                       or gap or any(left.values())
                       or kinds.get("TA1", 0) != len(self.resent)
                       or duplicates_answered != len(self.resent) or not judged["ok"]),
        }

    def mock_judgment(self, kinds: Counter, details: bool = True) -> dict:
        """What mock-edi, the partner, says of coexist's documents: its 997s (per functional
        id and status), its disagreements with the orders it placed, and (``details``) per PO
        its own reconciliation of ordered, confirmed, shipped and billed quantities."""
        by_fid: dict[str, dict[str, int]] = defaultdict(dict)
        for (fid, status), n in sorted(self.mock_acks.items()):
            by_fid[fid][status] = n
        # mock-edi answers every group; coexist sends one set per group, so every 855, 856
        # and 810 coexist sent must be accepted ("A") by one 997 of the partner's.
        unanswered = {code: kinds.get(code, 0) - by_fid.get(fid, {}).get("A", 0)
                      for code, fid in FUNCTIONAL_ID.items() if code in PO_OF}
        # Files of ours mock-edi could not read at all it moves into outbound/failed/; one it
        # could not move it reports as stuck.
        failed = self.folder / "outbound" / "failed"
        could_not_read = sorted(p.name for p in failed.iterdir()) if failed.is_dir() else []
        drop = self.mock.get("/_mock/drop").body if self.mock is not None else {}
        stuck = drop.get("stuck") or []
        out = {"its_997s": dict(by_fid), "rejected": len(self.mock_rejects),
               "unanswered_sets": unanswered, "could_not_read": len(could_not_read),
               "stuck": len(stuck), "unreadable_from_it": len(self.unreadable_from_mock)}
        ok = not (self.mock_rejects or self.unreadable_from_mock or any(unanswered.values())
                  or could_not_read or stuck)
        if details and self.mock is not None:
            rules: Counter = Counter()
            found = self.mock.get(f"/_mock/disagreements?partner={OUR_ID}&limit=1000").body
            for d in found:
                rules[d.get("rule", "?")] += 1
            reconciled, off = 0, []
            for po in sorted(self.sent):
                reply = self.mock.get(f"/_mock/orders/{po}?partner={OUR_ID}")
                lines = reply.body.get("reconciliation") if reply.status == 200 else None
                if lines and all(ln["ordered"] == ln["confirmed"] == ln["shipped"]
                                 == ln["billed"] for ln in lines):
                    reconciled += 1
                else:
                    off.append({"po": po, "lines": lines})
            out.update({"orders_placed": len(self.sent), "orders_reconciled": reconciled,
                        "disagreements": dict(rules),
                        "examples": {"rejected": self.mock_rejects[:5],
                                     "could_not_read": could_not_read[:5],
                                     "unreadable": self.unreadable_from_mock[:5],
                                     "disagreements": found[:5], "not_reconciled": off[:5]}})
            ok = ok and not found and not off
        out["ok"] = ok
        return out

    def done(self, legacy_engine) -> bool:
        v = self.verdict(legacy_engine, details=False)
        return (v["lost"] == 0 and v["left_in"]["inbound"] == 0
                and not any(v["mock_edi"]["unanswered_sets"].values()))


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

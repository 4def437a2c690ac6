"""Business documents: 850 in -> canonical order; canonical order/shipment/invoice -> 855/856/810.

Each builder returns the body of one transaction set (the segments between ST
and SE) for ``x12.write_interchange``; the envelope, control numbers and
counts are the writer's.  What coexist maps, and so what the round-trip tests
hold to identity:

* 850: BEG03 PO number -> ``customer_po``; BEG05 -> ``ordered_at`` (midnight
  UTC: the 850 carries a date only); CUR02 -> ``currency``; DTM*002 ->
  ``requested_date``; N1*BY N104 -> ``customer_key`` (through the profile);
  N1*ST N104 -> ``ship_to_site_id``; PO101 -> ``line_no``; PO102 ->
  ``quantity`` (whole units); PO103 must be the product's unit; PO104 ->
  ``unit_price``; the VP (else SK, BP, IN) product id -> ``sku``.
* 855: BAK02 AD (every line as ordered), AC (some line changed, held or
  refused), RD (the order is refused); BAK03 PO, BAK04 order date, BAK08 our
  order key, BAK09 acknowledgment date; one PO1 + ACK per ordered line (IA
  accepted, IQ quantity changed, IB held / backordered, IR refused).
* 856: BSN02 shipment key, BSN03/04 shipped date and time, BSN05 0004 (SOI)
  or 0001 (SOPI); HL S (TD1, TD5 carrier, REF*BM shipment key, REF*CN
  tracking, DTM*011), HL O (PRF PO number and order date), [HL P (MAN*GM
  tracking or shipment key)], HL I (LIN order line + VP sku, SN1 quantity and
  unit); CTT01 = number of HL segments.
* 810: BIG01 issued on, BIG02 invoice key, BIG03 order date, BIG04 PO; ITD net
  due date and days; IT1 per line (quantity, unit, unit price, VP sku), PID
  description in pieces of 80; TDS01 = lines + charges (none in the
  canonical invoice) + tax, two implied decimals; TXI*TX tax amount; CTT.

Known losses, named: an 850's time of day (it has none); PO103 is checked,
not kept (the canonical order line has no unit: the product's unit is the
order's); 855/856/810 units come from the product; free text (PID, TD5
routing) loses accents (``free_text``); a one-digit shipment key is written
zero-padded in BSN02 (at least 2 characters); CTT02 is left out when the sum
of quantities exceeds its 10 digits; a tracking number longer than REF02's 30
characters is refused, not cut.  The canonical models carry no packaging, no
charges (TDS01 = lines + tax) and no line unit: proposed as optional fields
with a schema-version bump when a partner needs them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation

from pydantic import ValidationError

from coexistence.canonical.models import (
    Invoice,
    Milestone,
    Order,
    OrderChannel,
    OrderStatus,
    Shipment,
)
from coexistence.edi import x12
from coexistence.edi.profiles import PartnerProfile
from coexistence.edi.x12 import Segment, TransactionSet

#: Product qualifiers read for the SKU, most preferred first.
SKU_QUALIFIERS = ("VP", "SK", "BP", "IN")
#: PID05 holds 80 characters; a longer description is written as several PID segments.
PID_TEXT_CHARS = 80
#: The unit written when the product is unknown to the lookup.
DEFAULT_UNIT = "EA"

#: A product's unit of measure by SKU (``None``: no such product).
UnitLookup = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class Problem:
    """A business fault in an 850: names the segment, element and value, and the line."""

    file_position: int
    set_position: int
    segment: str
    element: str
    value: str | None
    reason: str
    line_no: int | None = None
    #: The 855 line ACK status this problem gives its line (IR: refused).
    line_status: str = "IR"

    def describe(self, file: str) -> str:
        shown = f" = {self.value!r}" if self.value is not None else ""
        return (f"{file}: segment {self.file_position} ({self.segment}, {self.set_position} in "
                f"its set), element {self.element}{shown}: {self.reason}")


@dataclass(frozen=True, slots=True)
class OrderedLine:
    """A line as the buyer ordered it (kept to answer it in the 855)."""

    line_no: int
    assigned_id: str
    sku: str
    quantity: Decimal
    unit: str
    unit_price: Decimal


@dataclass(slots=True)
class Inbound850:
    po_number: str
    lines: list[OrderedLine] = field(default_factory=list)
    order: Order | None = None
    problems: list[Problem] = field(default_factory=list)
    ordered_on: date | None = None


def _decimal(value: str) -> Decimal | None:
    try:
        d = Decimal(value)
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _date(value: str) -> date | None:
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def _sku_of(seg: Segment, first: int) -> tuple[str, int] | None:
    pairs = {}
    for i in range(first, len(seg.elements), 2):
        q, v = seg.get(i), seg.get(i + 1)
        if q and v and q not in pairs:
            pairs[q] = (v, i + 1)
    for q in SKU_QUALIFIERS:
        if q in pairs:
            return pairs[q]
    return None


def read_850(ts: TransactionSet, profile: PartnerProfile, *, order_key: str,
             unit_of: UnitLookup) -> Inbound850:
    """Map one syntactically valid 850 to a canonical order, or name what is wrong.

    ``unit_of(sku)`` is the SoR catalogue's unit of the product (``None``:
    unknown SKU).  The order is built only when no problem was found.
    """
    beg = next((s for s in ts.body if s.tag == "BEG"), None)
    result = Inbound850(po_number=beg.get(3) if beg else "")
    problems = result.problems

    def problem(seg: Segment, n: int, reason: str, line: int | None = None,
                status: str = "IR") -> None:
        problems.append(Problem(seg.file_position, ts.position(seg), seg.tag, seg.name(n),
                                seg.get(n) or None, reason, line, status))

    if beg is None:
        problems.append(Problem(ts.segments[0].file_position, 1, "BEG", "BEG", None,
                                "the 850 has no BEG segment"))
        return result
    ordered_on = _date(beg.get(5))
    if ordered_on is None:
        problem(beg, 5, "not a valid date (CCYYMMDD)")
    result.ordered_on = ordered_on
    if beg.get(1) not in ("00", "05", "06", "07"):
        problem(beg, 1, "coexist takes original (00) and replacement (05) orders only; "
                        "changes and cancellations come as an 860, which is not traded")
    currency, requested, buyer, ship_to = profile.currency, None, None, None
    lines: list[tuple[Segment, OrderedLine]] = []
    loop = None
    for seg in ts.body:
        if seg.tag == "PO1":
            loop = "PO1"
        elif seg.tag == "N1" and loop != "PO1":
            if seg.get(1) == "BY":
                buyer = seg
            elif seg.get(1) == "ST":
                ship_to = seg
        if seg.tag == "CUR" and loop is None:
            currency = seg.get(2)
        elif seg.tag == "DTM" and loop is None and seg.get(1) == "002":
            requested = _date(seg.get(2))
            if requested is None:
                problem(seg, 2, "not a valid date (CCYYMMDD)")
        elif seg.tag == "PO1":
            line = _read_po1(seg, problem, len(lines) + 1)
            if line is not None:
                lines.append((seg, line))
    customer = _customer(buyer, profile, problem, beg)
    site = None
    if ship_to is not None and ship_to.get(4):
        site = profile.ship_to.get(ship_to.get(4), ship_to.get(4))
    seen: set[int] = set()
    for seg, line in lines:
        if line.line_no in seen:
            problem(seg, 1, "line number used twice in one order", line.line_no)
        seen.add(line.line_no)
        unit = unit_of(line.sku)
        sku_elem = _sku_of(seg, 6)
        sku_n = sku_elem[1] if sku_elem else 7
        if unit is None:
            problem(seg, sku_n, "unknown SKU: no such product in the system of record",
                    line.line_no)
        elif unit != line.unit:
            problem(seg, 3, f"unit {line.unit} is not the product's unit {unit}; coexist "
                            "orders in the product's unit", line.line_no)
    result.lines = [line for _, line in lines]
    if problems:
        return result
    assert ordered_on is not None  # a missing BEG05 is one of the problems above
    try:
        result.order = Order.model_validate({
            "key": order_key,
            "customer_key": customer,
            "ship_to_site_id": site,
            "status": OrderStatus.OPEN,
            "channel": OrderChannel.EDI,
            "customer_po": result.po_number,
            "currency": currency,
            "ordered_at": datetime.combine(ordered_on, time(0), tzinfo=UTC),
            "requested_date": requested,
            "lines": [{"line_no": ln.line_no, "sku": ln.sku, "quantity": int(ln.quantity),
                       "unit_price": ln.unit_price} for ln in result.lines],
        })
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        seg, n = _element_for(where, beg, buyer, ship_to, lines, ts)
        problem(seg, n, f"cannot be taken into the canonical order ({where}): {err['msg']}")
    return result


def _read_po1(seg: Segment, problem, ordinal: int) -> OrderedLine | None:
    assigned = seg.get(1)
    line_no = int(assigned) if assigned.isdigit() and int(assigned) > 0 else ordinal
    qty = _decimal(seg.get(2))
    price = _decimal(seg.get(4))
    sku = _sku_of(seg, 6)
    ok = True
    if qty is None:
        problem(seg, 2, "quantity is not a number", line_no)
        ok = False
    elif qty <= 0 or qty != qty.to_integral_value():
        problem(seg, 2, "quantity must be a whole number of units above 0", line_no)
        ok = False
    if price is None:
        problem(seg, 4, "unit price is not a number", line_no)
        ok = False
    elif price < 0:
        problem(seg, 4, "unit price must not be negative", line_no)
        ok = False
    if sku is None:
        problem(seg, 6, f"no product id with qualifier {'/'.join(SKU_QUALIFIERS)}", line_no)
        ok = False
    if not ok:
        return None
    return OrderedLine(line_no, assigned, sku[0], qty, seg.get(3), price)  # type: ignore[index,arg-type]


def _customer(buyer: Segment | None, profile: PartnerProfile, problem, beg: Segment) -> str | None:
    code = buyer.get(4) if buyer is not None else ""
    if code and code in profile.buyer_ids:
        return profile.buyer_ids[code]
    if len(profile.customers) == 1:
        return profile.customers[0]
    if buyer is None:
        problem(beg, 3, f"the 850 has no N1*BY and partner {profile.id} has several customers; "
                        "its buyer cannot be told")
    else:
        problem(buyer, 4, f"buyer id is not in partner {profile.id}'s buyer_ids")
    return None


def _element_for(where: str, beg, buyer, ship_to, lines, ts) -> tuple[Segment, int]:
    if where.startswith("lines."):
        parts = where.split(".")
        idx = int(parts[1]) if parts[1].isdigit() else 0
        seg = lines[min(idx, len(lines) - 1)][0] if lines else beg
        return seg, {"sku": 7, "quantity": 2, "unit_price": 4, "line_no": 1}.get(
            parts[-1] if len(parts) > 2 else "", 1)
    if where == "customer_po":
        return beg, 3
    if where == "currency":
        cur = next((s for s in ts.body if s.tag == "CUR"), beg)
        return cur, 2
    if where == "ship_to_site_id" and ship_to is not None:
        return ship_to, 4
    if where == "customer_key" and buyer is not None:
        return buyer, 4
    return beg, 3


# --------------------------------------------------------------------------- formatting


def number(value: Decimal | int) -> str:
    """An X12 R (decimal) value: no exponent, no trailing zeros, no leading plus."""
    d = Decimal(value)
    if d == d.to_integral_value():
        return str(d.quantize(Decimal(1)))
    return format(d.normalize(), "f")


def cents(value: Decimal) -> str:
    """An N2 value: two implied decimals.  Raises ``ValueError`` for a fraction of a cent."""
    scaled = Decimal(value) * 100
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value} has more than two decimals; an N2 amount cannot carry it")
    return str(int(scaled))


def free_text(text: str) -> str:
    """Free text in X12's character set: accents dropped (``Müller`` -> ``Muller``), any other
    character outside printable ASCII as ``?``.  A named loss: X12 declares no character set."""
    plain = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in plain)


def shipment_id(key: str) -> str:
    """BSN02 is at least 2 characters: a one-digit key is written zero-padded (``"07"``)."""
    return key.zfill(2)


def _hash_total(total: Decimal) -> str:
    """CTT02 (R, at most 10 digits); left out when the sum is too large to carry."""
    text = number(total)
    return text if len(text.replace(".", "")) <= 10 else ""


def ymd(d: date) -> str:
    return d.strftime("%Y%m%d")


def _pieces(text: str, width: int) -> list[str]:
    """Split ``text`` into pieces of at most ``width``; joining them gives ``text`` back."""
    return [text[i:i + width] for i in range(0, len(text), width)] or [""]


# --------------------------------------------------------------------------- 850 (buyer side)


def build_850(order: Order, *, unit_of: UnitLookup, buyer_id: str | None = None,
              ship_to_id: str | None = None) -> list[list[str]]:
    """An 850 as a buyer would send it for ``order`` (the demo partner and benchmarks)."""
    body: list[list[str]] = [
        ["BEG", "00", "SA", order.customer_po or order.key, "", ymd(order.ordered_at.date())],
        ["CUR", "BY", order.currency],
    ]
    if order.requested_date:
        body.append(["DTM", "002", ymd(order.requested_date)])
    if buyer_id:
        body.append(["N1", "BY", "", "92", buyer_id])
    if ship_to_id or order.ship_to_site_id:
        body.append(["N1", "ST", "", "92", ship_to_id or order.ship_to_site_id or ""])
    for line in order.lines:
        body.append(["PO1", str(line.line_no), str(line.quantity),
                     unit_of(line.sku) or DEFAULT_UNIT, number(line.unit_price), "", "VP",
                     line.sku])
    body.append(["CTT", str(len(order.lines))])
    return body


def partner_850(profile: PartnerProfile, order: Order, *, control: int, at: datetime,
                unit_of: UnitLookup, buyer_id: str | None = None) -> str:
    """A whole interchange with one 850 as the partner of ``profile`` sends it to us (its
    identities and separators; ISA13 = GS06 = ``control``): the demo's buyer, tests, the
    benchmark."""
    body = build_850(order, unit_of=unit_of, buyer_id=buyer_id)
    return x12.write_interchange(
        sender=profile.partner_isa.party(), receiver=profile.our_isa.party(), control=control,
        at=at, groups=[x12.GroupSpec("PO", profile.partner_gs, profile.our_gs, control,
                                     [x12.SetSpec("850", 1, body)])],
        separators=profile.separators, usage=profile.isa15,
        segment_suffix=profile.segment_suffix)


# --------------------------------------------------------------------------- 855


@dataclass(frozen=True, slots=True)
class LineAnswer:
    status: str
    quantity: Decimal


def answer_lines(order: Order | None, ordered: Sequence[OrderedLine],
                 refused: Mapping[int, str] | None = None) -> dict[int, LineAnswer]:
    """Per ordered line, what the seller will do (ACK01 and ACK02).

    ``order`` is the SoR's order (``None``: it never reached the SoR);
    ``refused`` names lines refused at the edge (unknown SKU...).  A line the SoR
    dropped is IR; a quantity it changed IQ; every line of an order on hold IB;
    every line of a cancelled or refused order IR.
    """
    refused = refused or {}
    sor = {ln.line_no: ln for ln in order.lines} if order is not None else {}
    out: dict[int, LineAnswer] = {}
    whole_refused = order is None or order.status is OrderStatus.CANCELLED or bool(refused)
    for ln in ordered:
        if whole_refused:
            out[ln.line_no] = LineAnswer("IR", Decimal(0))
            continue
        have = sor.get(ln.line_no)
        if have is None:
            out[ln.line_no] = LineAnswer("IR", Decimal(0))
        elif order.status is OrderStatus.ON_HOLD:  # type: ignore[union-attr]
            out[ln.line_no] = LineAnswer("IB", Decimal(have.quantity))
        elif Decimal(have.quantity) != ln.quantity:
            out[ln.line_no] = LineAnswer("IQ", Decimal(have.quantity))
        else:
            out[ln.line_no] = LineAnswer("IA", ln.quantity)
    return out


def ack_type(answers: Mapping[int, LineAnswer]) -> str:
    """BAK02: AD every line as ordered, RD every line refused, AC otherwise."""
    statuses = {a.status for a in answers.values()}
    if statuses <= {"IA"}:
        return "AD"
    if statuses == {"IR"}:
        return "RD"
    return "AC"


def build_855(*, po_number: str, ordered_on: date, order_key: str, currency: str,
              ordered: Sequence[OrderedLine], answers: Mapping[int, LineAnswer],
              acknowledged_on: date) -> list[list[str]]:
    body: list[list[str]] = [
        ["BAK", "00", ack_type(answers), po_number, ymd(ordered_on), "", "", "", order_key,
         ymd(acknowledged_on)],
        ["CUR", "SE", currency],
    ]
    hash_total = Decimal(0)
    for ln in ordered:
        a = answers[ln.line_no]
        body.append(["PO1", ln.assigned_id or str(ln.line_no), number(ln.quantity), ln.unit,
                     number(ln.unit_price), "", "VP", ln.sku])
        body.append(["ACK", a.status, number(a.quantity), ln.unit])
        hash_total += ln.quantity
    body.append(["CTT", str(len(ordered)), _hash_total(hash_total)])
    return body


# --------------------------------------------------------------------------- 856


def shipped_at(shipment: Shipment) -> datetime | None:
    """When the shipment left (its ``shipped`` milestone); ``None`` before that."""
    return next((m.at for m in shipment.milestones if m.milestone is Milestone.SHIPPED), None)


def build_856(shipment: Shipment, order: Order, *, structure: str, unit_of: UnitLookup,
              weight_kg: Decimal | None = None) -> list[list[str]]:
    """An 856 for a shipped shipment, SOI (S/O/I) or SOPI (S/O/P/I: one pack)."""
    at = shipped_at(shipment)
    if at is None:
        raise ValueError(f"shipment {shipment.key} has not shipped: no 856 before it does")
    if order.customer_po is None:
        raise ValueError(f"order {order.key} has no customer PO number: PRF01 is mandatory")
    body: list[list[str]] = [
        ["BSN", "00", shipment_id(shipment.key), ymd(at.date()), at.strftime("%H%M"),
         "0001" if structure == "SOPI" else "0004"],
    ]
    hl = 0

    def level(parent: int | None, code: str, has_children: bool) -> int:
        nonlocal hl
        hl += 1
        body.append(["HL", str(hl), "" if parent is None else str(parent), code,
                     "1" if has_children else "0"])
        return hl

    s = level(None, "S", True)
    td1 = ["TD1", "CTN25", "1" if structure == "SOPI" else str(len(shipment.lines))]
    if weight_kg is not None:
        td1 += ["", "", "", "G", number(weight_kg), "KG"]
    body.append(td1)
    if shipment.carrier:
        carrier = shipment.carrier
        if 2 <= len(carrier) <= 4 and carrier.isalnum() and carrier.isupper():
            body.append(["TD5", "B", "2", carrier, "M"])
        else:
            body.append(["TD5", "B", "", "", "M", free_text(carrier)[:35]])
    body.append(["REF", "BM", shipment.key])
    if shipment.tracking_number:
        body.append(["REF", "CN", shipment.tracking_number])
    body.append(["DTM", "011", ymd(at.date()), at.strftime("%H%M")])
    o = level(s, "O", True)
    body.append(["PRF", order.customer_po, "", "", ymd(order.ordered_at.date())])
    parent = o
    if structure == "SOPI":
        parent = level(o, "P", True)
        body.append(["MAN", "GM", shipment.tracking_number or shipment.key])
    ordered = {ln.line_no: ln for ln in order.lines}
    for ln in shipment.lines:
        level(parent, "I", False)
        unit = unit_of(ln.sku) or DEFAULT_UNIT
        body.append(["LIN", str(ln.order_line_no), "VP", ln.sku])
        o_line = ordered.get(ln.order_line_no)
        body.append(["SN1", str(ln.order_line_no), str(ln.quantity), unit, "",
                     str(o_line.quantity) if o_line else "", unit if o_line else ""])
    body.append(["CTT", str(hl)])
    return body


# --------------------------------------------------------------------------- 810


def build_810(invoice: Invoice, order: Order | None, *, unit_of: UnitLookup
              ) -> list[list[str]]:
    """An 810 for a posted invoice; TDS01 = lines + charges (none) + tax."""
    body: list[list[str]] = [
        ["BIG", ymd(invoice.issued_on), invoice.key,
         ymd(order.ordered_at.date()) if order else "",
         (order.customer_po or "") if order else ""],
        ["CUR", "SE", invoice.currency],
        ["REF", "VN", invoice.order_key],
        ["ITD", "01", "3", "", "", "", ymd(invoice.due_on),
         str((invoice.due_on - invoice.issued_on).days)],
    ]
    hash_total = 0
    for ln in invoice.lines:
        unit = unit_of(ln.sku) or DEFAULT_UNIT
        body.append(["IT1", str(ln.line_no), str(ln.quantity), unit, number(ln.unit_price), "",
                     "VP", ln.sku])
        for piece in _pieces(free_text(ln.description), PID_TEXT_CHARS):
            if piece:
                body.append(["PID", "F", "", "", "", piece])
        hash_total += ln.quantity
    body.append(["TDS", cents(invoice.subtotal + invoice.tax_amount)])
    body.append(["TXI", "TX", number(invoice.tax_amount)])
    body.append(["CTT", str(len(invoice.lines)), _hash_total(Decimal(hash_total))])
    return body

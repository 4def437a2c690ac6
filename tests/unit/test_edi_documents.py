"""Documents: canonical order/shipment/invoice -> X12 -> read back is the identity on every
element coexist maps; bad 850 input is named precisely."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from coexistence.canonical.models import Milestone, Order, OrderStatus
from coexistence.edi import acks, documents, validate, x12
from coexistence.sample import SampleSpec
from tests.support import edi as support
from tests.unit.strategies import invoices, orders, shipments

AT = datetime(2026, 5, 6, 7, 8, tzinfo=UTC)
SEPS = set("*>~")
PROFILE = support.profile()
SAMPLE = SampleSpec(customers=5)


def units(_sku: str) -> str:
    return "EA"


def write(code: str, body) -> str:
    assert validate.check_outbound(code, body) == []
    return x12.write_interchange(
        sender=x12.Party("ZZ", "DISTCO"), receiver=x12.Party("ZZ", "ACMEBUY"), control=1, at=AT,
        groups=[x12.GroupSpec(acks.FUNCTIONAL_IDS[code], "DISTCO", "ACMEBUY", 1,
                              [x12.SetSpec(code, 1, body)])])


def _850_set(order: Order) -> x12.TransactionSet:
    return support.only_set(write("850", documents.build_850(order, unit_of=units)))


_po = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="*>~"),
              min_size=1, max_size=22)


@settings(max_examples=120, deadline=None)
@given(orders(), _po)
def test_an_order_through_an_850_reads_back_as_the_same_order(order, po):
    order = order.model_copy(update={"customer_po": po})
    prof = support.profile(customers=[order.customer_key])
    inbound = documents.read_850(_850_set(order), prof, order_key=order.key, unit_of=units)
    assert inbound.problems == []
    back = inbound.order
    assert back.model_dump(exclude={"ordered_at", "status", "channel"}) == \
        order.model_dump(exclude={"ordered_at", "status", "channel"})
    # Named losses: the 850 carries a date only; an order that arrives by EDI is open.
    assert back.ordered_at == datetime.combine(order.ordered_at.astimezone(UTC).date(),
                                               datetime.min.time(), tzinfo=UTC) or \
        back.ordered_at.date() == order.ordered_at.date()
    assert (back.status, back.channel.value) == (OrderStatus.OPEN, "edi")


@settings(max_examples=80, deadline=None)
@given(orders(), st.data())
def test_an_855_answers_every_ordered_line_and_reads_back(order, data):
    ordered = [documents.OrderedLine(ln.line_no, str(ln.line_no), ln.sku, Decimal(ln.quantity),
                                     "EA", ln.unit_price) for ln in order.lines]
    sor = order.model_copy(update={"status": data.draw(st.sampled_from(
        [OrderStatus.OPEN, OrderStatus.ON_HOLD, OrderStatus.CANCELLED]))})
    answers = documents.answer_lines(sor, ordered)
    body = documents.build_855(po_number="PO-1", ordered_on=date(2026, 1, 2),
                               order_key=order.key, currency=order.currency, ordered=ordered,
                               answers=answers, acknowledged_on=date(2026, 1, 3))
    back = support.read_855(support.only_set(write("855", body)))
    expected_type = {OrderStatus.OPEN: "AD", OrderStatus.ON_HOLD: "AC",
                     OrderStatus.CANCELLED: "RD"}[sor.status]
    assert (back["ack_type"], back["po"], back["order_key"], back["currency"]) == \
        (expected_type, "PO-1", order.key, order.currency)
    assert [(ln["line_no"], ln["sku"], ln["quantity"], ln["unit_price"]) for ln in back["lines"]] \
        == [(ln.line_no, ln.sku, Decimal(ln.quantity), ln.unit_price) for ln in order.lines]
    status = {OrderStatus.OPEN: "IA", OrderStatus.ON_HOLD: "IB", OrderStatus.CANCELLED: "IR"}
    assert {ln["status"] for ln in back["lines"]} == {status[sor.status]}
    assert back["ctt"][0] == len(order.lines)


def test_an_855_says_what_the_sor_changed_line_by_line():
    order = Order.model_validate({
        "key": "7", "customer_key": "1", "status": "open", "channel": "edi", "currency": "USD",
        "ordered_at": AT, "lines": [{"line_no": 1, "sku": "A-1", "quantity": 5, "unit_price": 1},
                                    {"line_no": 2, "sku": "B-1", "quantity": 3, "unit_price": 2}]})
    ordered = [documents.OrderedLine(1, "1", "A-1", Decimal(5), "EA", Decimal(1)),
               documents.OrderedLine(2, "2", "B-1", Decimal(4), "EA", Decimal(2)),
               documents.OrderedLine(3, "3", "C-1", Decimal(1), "EA", Decimal(9))]
    answers = documents.answer_lines(order, ordered)
    assert [(n, a.status, a.quantity) for n, a in answers.items()] == [
        (1, "IA", 5), (2, "IQ", 3), (3, "IR", 0)]
    assert documents.ack_type(answers) == "AC"


@settings(max_examples=100, deadline=None)
@given(shipments(), orders(), st.sampled_from(["SOI", "SOPI"]), _po)
def test_a_shipped_shipment_through_an_856_reads_back_with_a_well_formed_hl_tree(
        shipment, order, structure, po):
    assume(documents.shipped_at(shipment) is not None)
    order = order.model_copy(update={"customer_po": po})
    if shipment.tracking_number is not None and len(shipment.tracking_number) > 30:
        shipment = shipment.model_copy(update={"tracking_number": shipment.tracking_number[:30]})
    body = documents.build_856(shipment, order, structure=structure, unit_of=units)
    back = support.read_856(support.only_set(write("856", body)))
    at = documents.shipped_at(shipment)
    assert back["key"].lstrip("0") == shipment.key and back["refs"]["BM"] == shipment.key
    assert (back["shipped_on"], back["shipped_hhmm"]) == (at.date(), at.strftime("%H%M"))
    assert back["structure"] == ("0001" if structure == "SOPI" else "0004")
    assert back["po"] == order.customer_po and back["ordered_on"] == order.ordered_at.date()
    assert (back["refs"].get("CN") or None) == (shipment.tracking_number or None)
    assert (back.get("carrier") or None) == (shipment.carrier or None)
    assert [(ln["order_line_no"], ln["sku"], ln["quantity"]) for ln in back["lines"]] == \
        [(ln.order_line_no, ln.sku, ln.quantity) for ln in shipment.lines]
    # The tree: ids 1..n, every parent an earlier level, child flags true exactly for parents.
    levels = back["levels"]
    ids = [int(hid) for hid, _, _, _ in levels]
    assert ids == list(range(1, len(levels) + 1)) and back["ctt"] == len(levels)
    parents = {p for _, p, _, _ in levels if p}
    for hid, parent, code, child in levels:
        assert (child == "1") == (hid in parents)
        assert parent == "" if code == "S" else int(parent) < int(hid)
    codes = [c for _, _, c, _ in levels]
    assert codes[:2] == ["S", "O"] and codes.count("I") == len(shipment.lines)
    assert ("P" in codes) == (structure == "SOPI")


def test_no_856_before_the_shipment_ships():
    shipment = SAMPLE.record("shipment", 0).model_copy(update={"milestones": ()})
    with pytest.raises(ValueError, match="has not shipped"):
        documents.build_856(shipment, Order.model_validate({
            "key": "1", "customer_key": "1", "status": "open", "channel": "edi",
            "currency": "USD", "ordered_at": AT, "customer_po": "P",
            "lines": [{"line_no": 1, "sku": "A-1", "quantity": 1, "unit_price": 1}]}),
            structure="SOI", unit_of=units)


@settings(max_examples=120, deadline=None)
@given(invoices())
def test_an_invoice_through_an_810_reads_back_and_tds_is_lines_plus_tax(invoice):
    total = invoice.subtotal + invoice.tax_amount
    assume(total * 100 == (total * 100).to_integral_value() and total < 10**12)
    assume(all(not (SEPS & set(ln.description)) for ln in invoice.lines))
    body = documents.build_810(invoice, None, unit_of=units)
    back = support.read_810(support.only_set(write("810", body)))
    assert (back["key"], back["issued_on"], back["due_on"], back["currency"],
            back["order_key"]) == (invoice.key, invoice.issued_on, invoice.due_on,
                                   invoice.currency, invoice.order_key)
    assert back["net_days"] == (invoice.due_on - invoice.issued_on).days
    assert back["total"] == total and back["tax"] == invoice.tax_amount
    assert back["total"] == sum(ln["unit_price"] * ln["quantity"] for ln in back["lines"]) \
        + back["tax"]
    assert [(ln["line_no"], ln["sku"], ln["quantity"], ln["unit_price"], ln["description"])
            for ln in back["lines"]] == [
        (ln.line_no, ln.sku, ln.quantity, ln.unit_price, documents.free_text(ln.description))
        for ln in invoice.lines]


def test_an_invoice_with_a_fraction_of_a_cent_is_refused_by_name():
    inv = SAMPLE.record("invoice", 0).model_copy(update={"tax_amount": Decimal("0.001")})
    with pytest.raises(ValueError, match="more than two decimals"):
        documents.build_810(inv, None, unit_of=units)


# --------------------------------------------------------------------------- bad 850 input

GOOD = ("ISA*00*          *00*          *ZZ*ACMEBUY        *ZZ*DISTCO         *260506*0708*U*"
        "00401*000000001*0*T*>~\nGS*PO*ACMEBUY*DISTCO*20260506*0708*1*X*004010~\n"
        "ST*850*0001~\nBEG*00*SA*PO-77**20260506~\nCUR*BY*USD~\nDTM*002*20260520~\n"
        "N1*ST*Dock 4*92*S001~\nPO1*1*10*EA*2.50**VP*WID-01000~\nPO1*2*3*EA*7**VP*GIZ-00020~\n"
        "CTT*2~\nSE*9*0001~\nGE*1*1~\nIEA*1*000000001~\n")


def _set(text: str) -> x12.TransactionSet:
    [ic] = x12.read(text, file="po.edi")
    return ic.groups[0].sets[0]


def test_a_good_850_maps_dates_quantities_prices_and_ship_to():
    inbound = documents.read_850(_set(GOOD), PROFILE, order_key="7000000001", unit_of=units)
    o = inbound.order
    assert inbound.problems == [] and o.customer_po == "PO-77" and o.customer_key == "10000"
    assert o.ordered_at == datetime(2026, 5, 6, tzinfo=UTC)
    assert o.requested_date == date(2026, 5, 20) and o.ship_to_site_id == "S001"
    assert [(ln.sku, ln.quantity, ln.unit_price) for ln in o.lines] == [
        ("WID-01000", 10, Decimal("2.50")), ("GIZ-00020", 3, Decimal("7"))]


@pytest.mark.parametrize(("old", "new", "tag", "position", "element", "code"), [
    ("BEG*00*SA*PO-77**20260506", "BEG*00*SA*PO-77**20261345", "BEG", 2, 5, "8"),
    ("PO1*1*10*EA", "PO1*1*ten*EA", "PO1", 6, 2, "6"),
    ("BEG*00*SA*PO-77*", "BEG*00*SA*" + "P" * 23 + "*", "BEG", 2, 3, "5"),
    ("PO1*2*3*EA", "PO1*2*3*XX", "PO1", 7, 3, "7"),
    ("DTM*002*20260520", "DTM*002*2026-05-20", "DTM", 4, 2, "8"),
])
def test_a_bad_element_gets_ak3_ak4_and_ak5_r(old, new, tag, position, element, code):
    ts = _set(GOOD.replace(old, new))
    verdict = acks.judge_set(ts, ["850"])
    assert verdict.status == "R" and "5" in verdict.reasons
    [f] = verdict.findings
    assert (f.tag, f.position, f.code) == (tag, position, "8")
    [e] = f.elements
    assert (e.position, e.code) == (element, code)
    body = acks.build_997([acks.GroupVerdict("PO", "1", [verdict], "R")])
    assert ["AK3", tag, str(position), "PO1" if tag == "PO1" else "", "8"] in body
    assert any(s[:4] == ["AK4", str(element), e.ref, code] for s in body)
    assert "po.edi" in f.describe("po.edi") and f"{tag}{element:02d}" in f.describe("po.edi")


@pytest.mark.parametrize(("old", "new", "element", "reason"), [
    ("VP*GIZ-00020", "VP*NOPE-1", "PO107", "unknown SKU"),
    ("PO1*1*10*EA", "PO1*1*10.5*EA", "PO102", "whole number"),
    ("PO1*2*3*EA", "PO1*2*3*BX", "PO103", "not the product's unit"),
])
def test_a_business_fault_in_an_850_names_segment_element_and_value(old, new, element, reason):
    ts = _set(GOOD.replace(old, new))
    assert acks.judge_set(ts, ["850"]).status == "A"  # syntax is fine: an 855 RD answers it
    inbound = documents.read_850(ts, PROFILE, order_key="1",
                                 unit_of=lambda s: None if s == "NOPE-1" else "EA")
    assert inbound.order is None
    [p] = inbound.problems
    assert p.element == element and reason in p.reason
    words = p.describe("po.edi")
    assert words.startswith("po.edi: segment ") and element in words


def test_an_unknown_segment_is_noted_and_the_850_accepted_with_errors():
    ts = _set(GOOD.replace("CUR*BY*USD~", "CUR*BY*USD~\nZZZ*1~").replace("SE*9", "SE*10"))
    verdict = acks.judge_set(ts, ["850"])
    assert verdict.status == "E" and verdict.findings[0].code == "2"


def test_a_997_reads_back_into_per_set_verdicts():
    g = acks.GroupVerdict("PR", "12", [acks.SetVerdict("855", "0012", "A"),
                                       acks.SetVerdict("855", "0013", "R", ["5"])], "P")
    ts = support.only_set(write("997", acks.build_997([g])))
    assert [(a.group_control, a.control, a.status) for a in acks.read_997(ts)] == [
        ("12", "0012", "A"), ("12", "0013", "R")]
    whole = support.only_set(write("997", [["AK1", "SH", "4"], ["AK9", "A", "3", "3", "3"]]))
    assert [(a.group_control, a.control, a.status) for a in acks.read_997(whole)] == [
        ("4", None, "A")]


def test_a_milestone_other_than_shipped_is_not_a_ship_date():
    s = SAMPLE.record("shipment", 0).model_copy(update={"milestones": ()})
    assert documents.shipped_at(s) is None
    assert Milestone.SHIPPED.value == "shipped"

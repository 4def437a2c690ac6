"""mock-edi (an independent implementation coexist does not ship) as the buyer: it sends an 850
into the drop folder and judges coexist's 997, 855, 856 and 810 - syntax (its own 997s back)
and business disagreements.  Every outbound file is also parsed by ansi-x12."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

pytest.importorskip("mockedi")
from mockedi.testing import Mock  # noqa: E402
from x12.core.parser import parse_x12_interchange  # noqa: E402
from x12.core.tokenizer import tokenize_x12  # noqa: E402

from bus.envelope import new_envelope  # noqa: E402
from bus.exception_store import ExceptionStore  # noqa: E402
from bus.outbox import OutboxRecord  # noqa: E402
from coexistence.canonical.models import Invoice, Order, Shipment  # noqa: E402
from coexistence.edi.profiles import EdiSettings  # noqa: E402
from workers.db import create_state_engine  # noqa: E402
from workers.edi import handlers  # noqa: E402
from workers.migrate import upgrade as upgrade_schema  # noqa: E402

CATALOG = {"WIDGET-001": "EA", "GEAR-100": "EA"}


def _profile(folder, structure):
    return EdiSettings.from_data({"partners": [{
        "id": "MOCKEDI", "partner_isa": {"qualifier": "ZZ", "id": "MOCKEDI"},
        "our_isa": {"qualifier": "ZZ", "id": "NORTHWIND"}, "partner_gs": "MOCKEDI",
        "our_gs": "NORTHWIND", "customers": ["10000"], "asn_structure": structure,
        "folder": str(folder)}]})


@pytest.fixture
def trade(tmp_path):
    def start(structure="SOI"):
        folder = tmp_path / "mockedi"
        settings = _profile(folder, structure)
        engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
        upgrade_schema(engine)
        orders: dict[str, Order] = {}
        deps = handlers.EdiDeps(engine, settings, ExceptionStore(engine), unit_of=CATALOG.get,
                                get_order=orders.get)
        dp = deps.folder(settings.partners[0]).ensure()
        # coexist's outbound/ is the mock's drop directory, its pickup directory our inbound/.
        # Our files are complete under their final name: no settle time needed.
        mock = Mock.start(drop_dir=str(dp.outbound), pickup_dir=str(dp.inbound),
                          drop_settle_ms=0)
        return deps, dp, mock, orders

    yield start


def _purchase(mock, po="4500001001", qty=("100", "5")):
    r = mock.post("/_mock/purchase", {
        "partner": "NORTHWIND", "po_number": po, "requested_on": "2026-10-15",
        "lines": [{"sku": "WIDGET-001", "quantity": qty[0], "uom": "EA", "price": "12.50"},
                  {"sku": "GEAR-100", "quantity": qty[1], "uom": "EA", "price": "8.90"}]})
    assert r.status == 201, r.body
    mock.advance(everything=True)
    mock.settle()


def _sor_accepts(deps, orders) -> Order:
    with deps.engine.connect() as conn:
        [row] = conn.execute(select(OutboxRecord.__table__.c.payload)).all()
    order = Order.model_validate(json.loads(row.payload)["payload"]["record"])
    orders[order.key] = order
    return order


def _event(record):
    return new_envelope(domain=record.domain, kind="event", key=record.key,
                        payload={"record": record.model_dump(mode="json")},
                        source_system="legacy", source_version=1)


def _documents(order: Order, shipped_extra: int = 0):
    now = datetime.now(UTC)
    shipment = Shipment.model_validate({
        "key": "5550001", "order_key": order.key, "warehouse": "W1", "carrier": "UPSN",
        "tracking_number": "1Z999AA10123456784",
        "milestones": [{"milestone": "picked", "at": now - timedelta(hours=2)},
                       {"milestone": "packed", "at": now - timedelta(hours=1)},
                       {"milestone": "shipped", "at": now}],
        "lines": [{"line_no": n, "order_line_no": ln.line_no, "sku": ln.sku,
                   "quantity": ln.quantity + (shipped_extra if n == 1 else 0)}
                  for n, ln in enumerate(order.lines, 1)]})
    invoice = Invoice.model_validate({
        "key": "7770001", "order_key": order.key, "customer_key": order.customer_key,
        "status": "open", "currency": "USD", "issued_on": now.date(),
        "due_on": now.date() + timedelta(days=30), "tax_amount": "0",
        "lines": [{"line_no": ln.line_no, "sku": ln.sku, "description": ln.sku,
                   "quantity": ln.quantity, "unit_price": ln.unit_price}
                  for ln in order.lines]})
    return shipment, invoice


def _structurally_valid(folder):
    files = sorted(folder.outbound.rglob("NORTHWIND*.x12")) + sorted(
        p for p in folder.outbound.rglob("*.x12"))
    assert files
    for path in set(files):
        ic = parse_x12_interchange(tokenize_x12(path.read_bytes()))  # raises on any fault
        assert ic.header.tag == "ISA"


def _exchange(deps, folder, mock, orders, **kw):
    _purchase(mock, **kw)
    [result] = handlers.handle_inbound(deps)
    assert result.ok, result.problems
    order = _sor_accepts(deps, orders)
    return order


def test_mock_edi_accepts_coexists_997_855_856_810_without_a_disagreement(trade):
    deps, folder, mock, orders = trade("SOI")
    with mock:
        order = _exchange(deps, folder, mock, orders)
        shipment, invoice = _documents(order)
        out = handlers.handle_events([_event(order), _event(shipment), _event(invoice)], deps)
        assert [o.status for o in out] == ["sent", "sent", "sent"]
        _structurally_valid(folder)
        scan = mock.post("/_mock/drop/scan").body
        mock.advance(everything=True)
        mock.settle()
        assert mock.get("/_mock/disagreements?partner=NORTHWIND").body == [], scan
        placed = mock.order("4500001001", partner="NORTHWIND")
        assert [(ln["confirmed"], ln["shipped"], ln["invoiced"]) for ln in placed["lines"]] == \
            [("100", "100", "100"), ("5", "5", "5")]
        # The mock's own 997s come back into our inbound/: every set accepted.
        answers = handlers.handle_inbound(deps)
        assert answers and all(a.ok for a in answers), [a.problems for a in answers]
        docs = handlers.documents_for(deps.engine, domain="order", key=order.key)
        assert {d.doc_type: d.ack_status for d in docs if d.direction == "out"} == {
            "997": "none", "855": "A", "856": "A", "810": "A"}


def test_mock_edi_catches_a_shipment_of_more_than_was_confirmed(trade):
    deps, folder, mock, orders = trade("SOI")
    with mock:
        order = _exchange(deps, folder, mock, orders)
        shipment, _ = _documents(order, shipped_extra=7)
        handlers.handle_events([_event(order), _event(shipment)], deps)
        mock.post("/_mock/drop/scan")
        rules = {d["rule"] for d in mock.get("/_mock/disagreements?partner=NORTHWIND").body}
        assert "shipped-more-than-confirmed" in rules


def test_mock_edi_catches_an_invoice_total_that_is_not_its_lines(trade):
    deps, folder, mock, orders = trade("SOI")
    with mock:
        order = _exchange(deps, folder, mock, orders)
        shipment, invoice = _documents(order)
        handlers.handle_events([_event(order), _event(shipment), _event(invoice)], deps)
        [inv] = sorted(folder.outbound.glob("*-810.x12"))
        text = inv.read_text()
        tds = next(s for s in text.split("~") if s.strip().startswith("TDS"))
        tampered = inv.with_name("tampered-" + inv.name)
        tampered.write_text(text.replace(tds.strip(), "TDS*1").replace("000000004", "000000099")
                            .replace("*4*X*", "*99*X*").replace("GE*1*4", "GE*1*99"))
        inv.unlink()
        mock.post("/_mock/drop/scan")
        rules = {d["rule"] for d in mock.get("/_mock/disagreements?partner=NORTHWIND").body}
        assert "total-not-lines" in rules


def test_mock_edi_notes_man_in_an_sopi_856_its_known_gap(trade):
    deps, folder, mock, orders = trade("SOPI")
    with mock:
        order = _exchange(deps, folder, mock, orders)
        shipment, _ = _documents(order)
        handlers.handle_events([_event(order), _event(shipment)], deps)
        _structurally_valid(folder)
        mock.post("/_mock/drop/scan")
        mock.advance(everything=True)
        mock.settle()
        handlers.handle_inbound(deps)
        docs = {d.doc_type: d for d in handlers.documents_for(deps.engine, domain="order",
                                                              key=order.key)}
        # mock-edi's 856 dictionary has no MAN, so it accepts the SOPI 856 with errors (AK5 E).
        assert docs["856"].ack_status == "E" and "MAN" in (docs["856"].ack_note or "")
        assert docs["855"].ack_status == "A"

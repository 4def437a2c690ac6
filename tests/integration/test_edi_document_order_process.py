"""An 856 never reaches the partner before its order's 855, in a real ``coexist worker``
process (RabbitMQ, PostgreSQL state, the legacy reference ERP as the SoR): mock-edi (an
independent X12 implementation coexist does not ship, test-only) places the order as the
buyer and judges what it receives, reading coexist's ``outbound/`` as files appear.

The shipment's event is delivered before the order's (the 855's event delayed, as after a
worker kill in the chaos run, where mock-edi reported ``shipped-before-confirmed``); the
invoice's comes between them.  The worker holds the 856 for the 855 and the 810 for the
856 (``edi_held``), and sends all three in order once the order's event comes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dramatiq
import pytest
from sqlalchemy import select

pytest.importorskip("mockedi")
from mockedi.testing import Mock  # noqa: E402

from bus.envelope import new_envelope  # noqa: E402
from bus.outbox import OutboxRecord  # noqa: E402
from coexistence.canonical.models import Invoice, Order, Shipment  # noqa: E402
from tests.support import cloud_sim  # noqa: E402
from tests.support.edi_world import worker_world  # noqa: E402
from tests.support.processes import Process, wait_until  # noqa: E402
from workers.bootstrap import App  # noqa: E402
from workers.edi.store import DOCUMENT, HELD  # noqa: E402
from workers.router import queues  # noqa: E402

simulator, sim = cloud_sim.simulator, cloud_sim.sim

WAIT_S = 90
PO = "4500007001"
#: mock-edi's own ids (its buyer, and the supplier it knows coexist as).
PARTNER_TOML = '''[[edi.partners]]
id = "MOCKEDI"
partner_isa = {{ qualifier = "ZZ", id = "MOCKEDI" }}
our_isa = {{ qualifier = "ZZ", id = "NORTHWIND" }}
partner_gs = "MOCKEDI"
our_gs = "NORTHWIND"
asn_structure = "SOI"
customers = ["{customer}"]
folder = "{folder}"
'''


@pytest.fixture
def world(tmp_path, sim, pg_url, fresh_rabbit_vhost):
    amqp, _vhost = fresh_rabbit_vhost
    folder = tmp_path / "mockedi"
    for sub in ("inbound", "outbound", "processed", "failed"):
        (folder / sub).mkdir(parents=True)

    def partner(customer):
        return folder, PARTNER_TOML.format(customer=customer, folder=folder)

    with worker_world(tmp_path, sim.url, pg_url, amqp, partner, claim_timeout_s="5") as w:
        # The buyer reads our outbound/ as files appear (every 100 ms), as a partner's
        # translator does, and answers into our inbound/.
        mock = Mock.start(drop_dir=str(folder / "outbound"), pickup_dir=str(folder / "inbound"),
                          drop_settle_ms=0, drop_interval_ms=100)
        with mock:
            yield {**w, "mock": mock}


def enqueue(w, record) -> None:
    """The router's fan-out of ``record``'s event to the edi channel's queue."""
    env = new_envelope(domain=record.domain, kind="event", key=record.key,
                       payload={"record": record.model_dump(mode="json")},
                       source_system="legacy", source_version=1)
    app = App(w["settings"])
    try:
        app.broker.enqueue(dramatiq.Message(
            queue_name="coexist.channel.edi", actor_name="channel_edi",
            args=(env.model_dump(mode="json"),), kwargs={}, options={},
            message_id=env.message_id))
    finally:
        app.close()


def the_order_command(w) -> Order | None:
    with w["state"].connect() as conn:
        rows = conn.execute(select(OutboxRecord.__table__.c.payload).where(
            OutboxRecord.__table__.c.queue_name == queues.COMMAND_QUEUE)).all()
    if not rows:
        return None
    [row] = rows
    return Order.model_validate(json.loads(row.payload)["payload"]["record"])


def sent(w) -> dict[str, int]:
    """Outbound documents recorded, by type."""
    with w["state"].connect() as conn:
        types = conn.execute(select(DOCUMENT.c.doc_type).where(
            DOCUMENT.c.direction == "out")).scalars().all()
    return {t: types.count(t) for t in set(types)}


def held(w) -> int:
    """Documents held for another one of their order."""
    with w["state"].connect() as conn:
        return len(conn.execute(select(HELD)).all())


def test_a_shipment_whose_event_overtakes_its_orders_reaches_mock_edi_after_the_855(world):
    w = world
    mock = w["mock"]
    skus = sorted(w["units"])[:2]
    worker = Process(["worker", "--threads", "2"], w["env"], w["home"] / "worker.log")
    try:
        wait_until(lambda: worker.alive() and '"edi poller started"' in worker.output(),
                   WAIT_S, "worker polling", alive=[worker.popen])
        reply = mock.post("/_mock/purchase", {
            "partner": "NORTHWIND", "po_number": PO, "requested_on": "2026-10-15",
            "lines": [{"sku": sku, "quantity": str(n * 5), "uom": w["units"][sku],
                       "price": "12.50"} for n, sku in enumerate(skus, 1)]})
        assert reply.status == 201, reply.body
        mock.advance(everything=True)
        mock.settle()
        # The worker answers the 850 (its 997) and sends the order command to the router;
        # the test is the router here: it enters the order in the SoR.
        command = wait_until(lambda: the_order_command(w), WAIT_S, "the 850's order command",
                             alive=[worker.popen])
        order = command
        w["erp"].person_upsert(order, "ORDERDESK")
        at = datetime.now(UTC).replace(microsecond=0)
        shipment = Shipment.model_validate({
            "key": "8200000001", "order_key": order.key, "warehouse": "DAL1",
            "carrier": "UPSN", "tracking_number": "1Z999AA10123456784",
            "milestones": [{"milestone": m, "at": at} for m in ("picked", "packed", "shipped")],
            "lines": [{"line_no": n, "order_line_no": ln.line_no, "sku": ln.sku,
                       "quantity": ln.quantity} for n, ln in enumerate(order.lines, 1)]})
        invoice = Invoice.model_validate({
            "key": "8200000002", "order_key": order.key, "customer_key": order.customer_key,
            "status": "open", "currency": "USD", "issued_on": at.date(),
            "due_on": at.date() + timedelta(days=30), "tax_amount": "0",
            "lines": [{"line_no": ln.line_no, "sku": ln.sku, "description": ln.sku,
                       "quantity": ln.quantity, "unit_price": ln.unit_price}
                      for ln in order.lines]})
        w["erp"].person_upsert(shipment, "WAREHOUSE")
        w["erp"].person_upsert(invoice, "BILLING")
        # The shipment's event first, then the invoice's, the order's (the 855) last.
        enqueue(w, shipment)
        wait_until(lambda: held(w) or sent(w).get("856"), WAIT_S,
                   "the shipment's event handled", alive=[worker.popen])
        enqueue(w, invoice)
        wait_until(lambda: held(w) == 2 or sent(w).get("810"), WAIT_S,
                   "the invoice's event handled", alive=[worker.popen])
        enqueue(w, order)
        wait_until(lambda: all(sent(w).get(t) for t in ("855", "856", "810")), WAIT_S,
                   "855, 856 and 810 sent", alive=[worker.popen])
        # The buyer has read them (it moves what it read into outbound/processed/) and
        # its 997s came back and were applied.
        wait_until(lambda: not list((w["folder"] / "outbound").glob("*.x12")), WAIT_S,
                   "mock-edi read every file", alive=[worker.popen])
        mock.advance(everything=True)
        mock.settle()
        disagreements = mock.get("/_mock/disagreements?partner=NORTHWIND").body
        placed = mock.order(PO, partner="NORTHWIND")
        assert worker.stop() == 0
    finally:
        worker.stop()
    assert [d["rule"] for d in disagreements] == [], disagreements
    assert [(ln["confirmed"], ln["shipped"], ln["invoiced"]) for ln in placed["lines"]] == [
        ("5", "5", "5"), ("10", "10", "10")]
    assert held(w) == 0 and sent(w) == {"997": 1, "855": 1, "856": 1, "810": 1}

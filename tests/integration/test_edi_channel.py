"""The EDI handlers on real files and a real state database (SQLite): every inbound case ends
where the rules say (997/TA1, exception record, processed/ or failed/), outbound documents go
to the owning partner only, once, and acknowledgments are tracked."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from bus.envelope import new_envelope
from bus.exception_store import ExceptionStore
from bus.outbox import OutboxRecord
from coexistence.canonical.models import Invoice, Order, Shipment
from coexistence.edi import documents, x12
from coexistence.edi.profiles import EdiSettings
from tests.support import edi as support
from workers.db import create_state_engine
from workers.edi import control, handlers
from workers.edi.store import DOCUMENT, HELD, INTERCHANGE
from workers.edi.transport import DropFolder, OutboundExists
from workers.migrate import upgrade as upgrade_schema
from workers.router import queues

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KNOWN = {"WID-01000": "EA", "GIZ-00020": "EA"}


@pytest.fixture
def edi(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    acme = support.profile(str(tmp_path / "acme"), customers=["10000"])
    beta = support.profile(str(tmp_path / "beta"), id="BETA", customers=["20000"],
                           partner_isa={"qualifier": "ZZ", "id": "BETABUY"},
                           partner_gs="BETABUY", asn_structure="SOPI",
                           hold_810_for_856_minutes=0)
    orders: dict[str, Order] = {}
    deps = handlers.EdiDeps(engine, EdiSettings(partners=(acme, beta)), ExceptionStore(engine),
                            unit_of=KNOWN.get, get_order=orders.get, clock=lambda: NOW)
    deps.orders = orders  # type: ignore[attr-defined]
    yield deps
    engine.dispose()


def order_850(po="PO-77", lines=(("WID-01000", "10", "2.50"), ("GIZ-00020", "3", "7")),
              control_no=1, sender="ACMEBUY", date="20260601", extra=""):
    body = [f"BEG*00*SA*{po}**{date}", "CUR*BY*USD", "DTM*002*20260610"]
    body += [f"PO1*{n}*{q}*EA*{p}**VP*{s}" for n, (s, q, p) in enumerate(lines, 1)]
    body += [f"CTT*{len(lines)}"]
    if extra:
        body.append(extra)
    segs = [b.split("*") for b in body]
    return x12.write_interchange(
        sender=x12.Party("ZZ", sender), receiver=x12.Party("ZZ", "DISTCO"), control=control_no,
        at=NOW, groups=[x12.GroupSpec("PO", sender, "DISTCO", 1, [x12.SetSpec("850", 1, segs)])],
        segment_suffix="\n", usage="T")


def drop(deps, name, text, partner="ACME"):
    folder = deps.folder(deps.settings.partner(partner)).ensure()
    (folder.inbound / name).write_bytes(text.encode() if isinstance(text, str) else text)
    return folder


def outbound(folder, kind):
    return sorted(p for p in folder.outbound.iterdir() if p.name.endswith(f"-{kind}.x12"))


def commands(deps):
    with deps.engine.connect() as conn:
        return [json.loads(r.payload) for r in conn.execute(select(OutboxRecord.__table__))]


def exceptions(deps):
    return ExceptionStore(deps.engine).list()


def test_an_850_becomes_one_order_command_and_a_997_committed_together(edi):
    folder = drop(edi, "po77.edi", order_850())
    [result] = handlers.handle_inbound(edi)
    assert result.ok and (folder.processed / "po77.edi").exists()
    assert not any(folder.inbound.iterdir())
    [cmd] = commands(edi)
    assert (cmd["kind"], cmd["domain"], cmd["payload"]["channel"]) == ("command", "order", "edi")
    order = Order.model_validate(cmd["payload"]["record"])
    assert order.customer_po == "PO-77" and order.key == result.orders[0]
    assert order.key.startswith("7") and len(order.lines) == 2
    with edi.engine.connect() as conn:
        q = conn.execute(select(OutboxRecord.__table__.c.queue_name,
                                OutboxRecord.__table__.c.actor_name)).one()
    assert tuple(q) == (queues.COMMAND_QUEUE, queues.COMMAND_ACTOR)
    [ack] = outbound(folder, "997")
    text = ack.read_text()
    assert "AK1*PO*1~" in text and "AK2*850*0001~" in text and "AK5*A~" in text
    assert "AK9*A*1*1*1~" in text
    [doc850] = [d for d in handlers.documents_for(edi.engine, domain="order", key=order.key)
                if d.doc_type == "850"]
    assert doc850.correlation_id == cmd["correlation_id"]
    assert exceptions(edi) == []


def test_a_duplicate_interchange_gets_ta1_025_an_exception_and_no_second_order(edi):
    drop(edi, "a.edi", order_850())
    handlers.handle_inbound(edi)
    folder = drop(edi, "b.edi", order_850())
    [result] = handlers.handle_inbound(edi)
    assert not result.ok and (folder.failed / "b.edi").exists()
    assert len(commands(edi)) == 1
    [ta1] = outbound(folder, "TA1")
    assert "TA1*000000001*" in ta1.read_text() and "*R*025~" in ta1.read_text()
    assert len(outbound(folder, "997")) == 1  # a TA1, no 997
    [rec] = exceptions(edi)
    assert rec.error_type == "EdiDuplicateInterchange" and "ISA13 = '000000001'" in \
        rec.error_message and "b.edi" in rec.error_message


def test_a_restated_850_for_the_same_po_keeps_its_order_key(edi):
    drop(edi, "a.edi", order_850())
    [first] = handlers.handle_inbound(edi)
    drop(edi, "b.edi", order_850(control_no=2, lines=(("WID-01000", "12", "2.50"),)))
    [second] = handlers.handle_inbound(edi)
    assert second.ok and second.orders == first.orders
    cmds = commands(edi)
    assert [c["source_version"] for c in cmds] == sorted(c["source_version"] for c in cmds)


@pytest.mark.parametrize(("text", "answer", "words"), [
    (order_850()[:-40], "TA1*000000001*260601*1200*R*023", "truncated"),
    (order_850(sender="STRANGER"), "TA1*000000001*260601*1200*R*006", "unknown partner"),
    (order_850().replace("IEA*1*000000001", "IEA*1*000000002"), "*R*001",
     "does not match ISA13"),
    (order_850().replace("ZZ*ACMEBUY        ", "ZZ*ACMEBUY", 1), "*R*006",
     "must be exactly 106"),
])
def test_a_broken_envelope_gets_a_ta1_no_997_and_the_file_in_failed(edi, text, answer, words):
    folder = drop(edi, "bad.edi", text)
    [result] = handlers.handle_inbound(edi)
    assert not result.ok and (folder.failed / "bad.edi").exists()
    [ta1] = outbound(folder, "TA1")
    assert answer in ta1.read_text()
    assert outbound(folder, "997") == [] and commands(edi) == []
    [rec] = exceptions(edi)
    assert words in rec.error_message and "bad.edi: segment" in rec.error_message


@pytest.mark.parametrize(("text", "ak", "words"), [
    (order_850(date="20261399"), ["AK3*BEG*2**8", "AK4*5*373*8*20261399", "AK5*R*5"],
     "BEG05 = '20261399': not a valid date"),
    (order_850(lines=(("WID-01000", "ten", "2.50"),)), ["AK3*PO1*5*PO1*8", "AK4*2*330*6*ten"],
     "PO102 = 'ten': must be a number"),
    (order_850(po="P" * 23), ["AK4*3*324*5*" + "P" * 23, "AK5*R*5"], "the maximum is 22"),
    (order_850().replace("SE*8*0001", "SE*9*0001"), ["AK5*R*4", "AK9*R*1*1*0"],
     "SE01 = '9'"),
])
def test_bad_elements_get_a_997_with_ak3_ak4_ak5_an_exception_and_no_order(edi, text, ak, words):
    folder = drop(edi, "bad.edi", text)
    [result] = handlers.handle_inbound(edi)
    assert not result.ok and (folder.failed / "bad.edi").exists() and commands(edi) == []
    [ack] = outbound(folder, "997")
    body = ack.read_text()
    for segment in ak:
        assert segment + "~" in body or segment + "*" in body, (segment, body)
    [rec] = exceptions(edi)
    assert words in rec.error_message and "bad.edi" in rec.error_message


def test_an_unknown_sku_is_answered_by_an_855_rd_and_an_exception_naming_po107(edi):
    folder = drop(edi, "sku.edi", order_850(lines=(("WID-01000", "1", "2"), ("NOPE-1", "2", "3"))))
    [result] = handlers.handle_inbound(edi)
    assert not result.ok and (folder.failed / "sku.edi").exists() and commands(edi) == []
    assert "AK5*A~" in outbound(folder, "997")[0].read_text()
    [rd] = outbound(folder, "855")
    text = rd.read_text()
    assert "BAK*00*RD*PO-77*20260601" in text and text.count("ACK*IR*0*EA~") == 2
    [rec] = exceptions(edi)
    assert "element PO107 = 'NOPE-1': unknown SKU" in rec.error_message


def test_an_unreadable_file_is_an_exception_and_goes_to_failed(edi):
    folder = drop(edi, "junk.edi", b"hello, this is not EDI")
    [result] = handlers.handle_inbound(edi)
    assert not result.ok and (folder.failed / "junk.edi").exists()
    assert "junk.edi: not an X12 interchange" in exceptions(edi)[0].error_message


def test_wrong_separators_are_named(edi):
    folder = drop(edi, "seps.edi", order_850().replace(">~", ">A", 1))
    [result] = handlers.handle_inbound(edi)
    assert not result.ok and (folder.failed / "seps.edi").exists()
    assert "wrong separators" in exceptions(edi)[0].error_message


def test_files_still_being_written_are_never_taken(edi):
    folder = drop(edi, ".po.edi.tmp", order_850())
    (folder.inbound / "po.edi.part").write_text(order_850())
    assert handlers.handle_inbound(edi) == []
    assert sorted(p.name for p in folder.inbound.iterdir()) == [".po.edi.tmp", "po.edi.part"]


def test_a_claim_is_a_rename_that_only_one_worker_wins(edi):
    folder = drop(edi, "po.edi", order_850())
    first, second = folder.claim("po.edi"), folder.claim("po.edi")
    assert first is not None and second is None and first.path.exists()


def test_nothing_is_ever_overwritten(tmp_path):
    folder = DropFolder(tmp_path).ensure()
    folder.write_outbound("x.x12", b"one")
    assert folder.write_outbound("x.x12", b"one")[1] is False
    with pytest.raises(OutboundExists):
        folder.write_outbound("x.x12", b"two")
    (folder.processed / "po.edi").write_text("earlier")
    (folder.inbound / "po.edi").write_text("later")
    moved = folder.finish(folder.claim("po.edi"), ok=True)
    assert moved.name == "po.edi.1" and (folder.processed / "po.edi").read_text() == "earlier"


# --------------------------------------------------------------------------- outbound


def _accept_order(edi) -> Order:
    drop(edi, "po.edi", order_850())
    handlers.handle_inbound(edi)
    order = Order.model_validate(commands(edi)[0]["payload"]["record"])
    edi.orders[order.key] = order
    return order


def event(record, **kw):
    return new_envelope(domain=record.domain, kind="event", key=record.key,
                        payload={"record": record.model_dump(mode="json")},
                        source_system="legacy", source_version=1, **kw)


def shipment_of(order: Order, *, shipped=True, key="555", qty=None) -> Shipment:
    ms = [{"milestone": "picked", "at": NOW}, {"milestone": "packed", "at": NOW}]
    if shipped:
        ms.append({"milestone": "shipped", "at": NOW + timedelta(hours=1)})
    return Shipment.model_validate({
        "key": key, "order_key": order.key, "warehouse": "W1", "carrier": "UPSN",
        "tracking_number": "1Z999", "milestones": ms,
        "lines": [{"line_no": n, "order_line_no": ln.line_no, "sku": ln.sku,
                   "quantity": qty or ln.quantity} for n, ln in enumerate(order.lines, 1)]})


def invoice_of(order: Order, key="777", customer=None, status="open") -> Invoice:
    return Invoice.model_validate({
        "key": key, "order_key": order.key, "customer_key": customer or order.customer_key,
        "status": status, "currency": "USD", "issued_on": "2026-06-02", "due_on": "2026-07-02",
        "tax_amount": "3.15",
        "lines": [{"line_no": ln.line_no, "sku": ln.sku, "description": f"item {ln.sku}",
                   "quantity": ln.quantity, "unit_price": ln.unit_price} for ln in order.lines]})


def test_events_become_855_856_810_once_each_and_neighbours_survive_a_bad_one(edi):
    order = _accept_order(edi)
    folder = edi.folder(edi.settings.partner("ACME"))
    bad = new_envelope(domain="invoice", kind="event", key="9", payload={"record": {"key": "9"}},
                       source_system="legacy", source_version=1)
    envs = [event(order), bad, event(shipment_of(order, shipped=False)),
            event(shipment_of(order)), event(invoice_of(order)), event(order)]
    out = handlers.handle_events(envs, edi)
    assert [o.status for o in out] == ["sent", "business_error", "skipped", "sent", "sent",
                                       "duplicate"]
    assert "cannot translate invoice 9" in exceptions(edi)[0].error_message
    ack = outbound(folder, "855")[0].read_text()
    assert "BAK*00*AD*PO-77*20260601****" + order.key in ack and ack.count("ACK*IA*") == 2
    asn = outbound(folder, "856")[0].read_text()
    assert "HL*1**S*1~" in asn and "PRF*PO-77***20260601~" in asn and "CTT*4~" in asn
    inv = outbound(folder, "810")[0].read_text()
    assert "TDS*4915~" in inv  # 10 x 2.50 + 3 x 7 + 3.15 tax = 49.15
    docs = handlers.documents_for(edi.engine, domain="order", key=order.key)
    assert [d.doc_type for d in docs] == ["850", "997", "855", "856", "810"]
    isa = [d.isa13 for d in docs if d.direction == "out"]
    assert isa == sorted(set(isa))
    # The same events again (the bus delivers at least once): nothing new is sent.
    again = handlers.handle_events(envs[3:5], edi)
    assert [o.status for o in again] == ["duplicate", "duplicate"]


def test_a_partner_never_receives_another_partners_customers_documents(edi):
    order = _accept_order(edi)
    other = invoice_of(order, key="778", customer="20000")
    stranger = invoice_of(order, key="779", customer="99999")
    [a, b] = handlers.handle_events([event(other), event(stranger)], edi)
    assert a.status == "sent" and b.status == "skipped"
    acme = edi.folder(edi.settings.partner("ACME"))
    beta = edi.folder(edi.settings.partner("BETA"))
    assert outbound(acme, "810") == [] and len(outbound(beta, "810")) == 1
    assert "*ZZ*BETABUY        *" in outbound(beta, "810")[0].read_text()


def test_the_partners_997_sets_the_acknowledgment_state_and_is_never_answered(edi):
    order = _accept_order(edi)
    handlers.handle_events([event(order), event(shipment_of(order))], edi)
    docs = {d.doc_type: d for d in handlers.documents_for(edi.engine, domain="order",
                                                          key=order.key)}
    late = NOW + timedelta(days=2)
    overdue = handlers.acknowledgment_problems(edi.engine, edi.settings, now=late)
    assert {(p.document.doc_type, p.problem) for p in overdue} == {("855", "overdue"),
                                                                   ("856", "overdue")}
    body = [["AK1", "PR", str(docs["855"].gs06)], ["AK2", "855", docs["855"].st02], ["AK5", "A"],
            ["AK9", "A", "1", "1", "1"], ["AK1", "SH", str(docs["856"].gs06)],
            ["AK2", "856", docs["856"].st02], ["AK3", "SN1", "9", "HL", "8"],
            ["AK4", "2", "382", "6", "x"], ["AK5", "R", "5"], ["AK9", "R", "1", "1", "0"]]
    # Each AK1 answers one group: one 997 set per group, as partners send them.
    sets = [x12.SetSpec("997", 5, body[:4]), x12.SetSpec("997", 6, body[4:])]
    text = x12.write_interchange(sender=x12.Party("ZZ", "ACMEBUY"),
                                 receiver=x12.Party("ZZ", "DISTCO"), control=40, at=NOW,
                                 groups=[x12.GroupSpec("FA", "ACMEBUY", "DISTCO", 9, sets)])
    folder = drop(edi, "ack.edi", text)
    before = len(outbound(folder, "997"))
    [result] = handlers.handle_inbound(edi)
    assert result.ok and len(outbound(folder, "997")) == before  # a 997 is never acknowledged
    problems = handlers.acknowledgment_problems(edi.engine, edi.settings, now=late)
    assert [(p.document.doc_type, p.problem) for p in problems] == [("856", "rejected")]
    assert "SN1 at segment 9" in problems[0].document.ack_note


def test_a_crash_after_allocation_leaves_an_allocated_interchange_that_flush_writes(edi):
    profile = edi.settings.partner("ACME")
    with edi.engine.begin() as conn:
        out = control.record_outbound(conn, profile, kind="855", at=NOW, sets=[control.OutSet(
            "855", [["BAK", "00", "AD", "PO-1", "20260601"]], "order", "1")])
    folder = edi.folder(profile)
    assert not (folder.outbound / out.file_name).exists()  # "killed" before the rename
    assert handlers.flush_pending(edi) == [out.id]
    assert (folder.outbound / out.file_name).read_bytes() == out.content
    assert handlers.flush_pending(edi) == []
    with edi.engine.connect() as conn:
        assert conn.execute(select(INTERCHANGE.c.status).where(
            INTERCHANGE.c.id == out.id)).scalar_one() == "written"


def test_a_resend_is_the_same_bytes_under_the_same_numbers_and_is_audited(edi):
    order = _accept_order(edi)
    [sent] = handlers.handle_events([event(order)], edi)
    folder = edi.folder(edi.settings.partner("ACME"))
    [original] = outbound(folder, "855")
    content = original.read_bytes()
    picked_up = original.rename(folder.root / "picked-up.x12")
    path = handlers.resend(edi, sent.interchange_id, actor="ana", reason="partner lost it")
    assert path.name == original.name and path.read_bytes() == content
    again = handlers.resend(edi, sent.interchange_id, actor="ana", reason="twice")
    assert again == path  # still waiting in outbound/: not written a second time
    assert picked_up.read_bytes() == content
    from workers.edi.store import EVENT

    with edi.engine.connect() as conn:
        rows = conn.execute(select(EVENT.c.actor, EVENT.c.reason)).all()
    assert [tuple(r) for r in rows] == [("ana", "partner lost it"), ("ana", "twice")]


def test_outbound_documents_are_recorded_with_their_control_numbers(edi):
    order = _accept_order(edi)
    handlers.handle_events([event(order)], edi)
    with edi.engine.connect() as conn:
        rows = conn.execute(select(DOCUMENT.c.doc_type, DOCUMENT.c.gs06, DOCUMENT.c.st02)
                            .where(DOCUMENT.c.direction == "out")).all()
    assert [tuple(r) for r in rows] == [("997", 1, "0001"), ("855", 2, "0002")]
    assert documents.ack_type({1: documents.LineAnswer("IA", 1)}) == "AD"


def test_the_same_file_sent_again_under_the_same_name_is_a_duplicate_not_our_own_rerun(edi):
    # Partners resend a whole file on a timeout: same name, same bytes.  Our own crashed run
    # of a file is recognised by its claim; this one is the partner's, so TA1 025.
    drop(edi, "po.edi", order_850())
    [first] = handlers.handle_inbound(edi)
    folder = drop(edi, "po.edi", order_850())
    [again] = handlers.handle_inbound(edi)
    assert first.ok and not again.ok and (folder.failed / "po.edi").exists()
    assert len(commands(edi)) == 1
    [ta1] = outbound(folder, "TA1")
    assert "*R*025~" in ta1.read_text()
    assert [r.error_type for r in exceptions(edi)] == ["EdiDuplicateInterchange"]


def test_an_abandoned_claim_is_taken_over_by_one_worker_and_answered_once(edi):
    folder = drop(edi, "po.edi", order_850())
    dead = folder.claim("po.edi")  # a worker claimed it and died before answering
    assert dead is not None
    assert handlers.handle_inbound(edi, abandoned_after_s=60) == []  # still fresh: held
    # The claim's mtime is the claim's time, not the partner's file's.
    import os
    import time
    old = time.time() - 120
    os.utime(dead.path, (old, old))
    other = DropFolder(folder.root)
    taken = folder.abandoned_claims(60)
    assert [c.name for c in taken] == ["po.edi"] and other.abandoned_claims(60) == []
    assert taken[0].first_claim_name == dead.claim_name
    [result] = handlers.handle_files(edi, edi.settings.partner("ACME"), folder, taken)
    assert result.ok and len(commands(edi)) == 1 and len(outbound(folder, "997")) == 1
    assert [p.name for p in folder.processed.iterdir()] == ["po.edi"]


def test_a_crash_after_the_commit_is_finished_from_the_record_on_the_next_claim(edi):
    folder = drop(edi, "po.edi", order_850())
    claimed = folder.claim("po.edi")
    outcome = handlers._answer_file(edi, edi.settings.partner("ACME"), claimed)
    assert outcome.ok  # committed; then the worker died: no 997 file, the claim left over
    assert outbound(folder, "997") == []
    import os
    os.utime(claimed.path, (0, 0))
    [again] = handlers.handle_inbound(edi, abandoned_after_s=1)
    assert again.ok and again.orders == outcome.orders
    assert len(commands(edi)) == 1 and len(outbound(folder, "997")) == 1
    assert exceptions(edi) == []


def test_an_810_waits_for_its_orders_856_and_goes_once_the_856_is_sent(edi):
    # mock-edi found it in the e2e: an invoice event that overtakes its shipment's must not
    # bill the partner before the 856 (rule billed-before-shipped).
    order = _accept_order(edi)
    edi.orders[order.key] = order
    [confirmed] = handlers.handle_events([event(order)], edi)  # its 855
    assert confirmed.status == "sent"
    inv = event(invoice_of(order)).model_copy(update={"occurred_at": NOW})
    [waiting] = handlers.handle_events([inv], edi)
    folder = edi.folder(edi.settings.partner("ACME"))
    assert waiting.status == "held" and "held for the 856" in waiting.detail
    assert outbound(folder, "810") == []
    with edi.engine.connect() as conn:
        assert conn.execute(select(HELD.c.business_key)).scalars().all() == [inv.key]
    # The 856's own call releases the held 810 (no bus retry): after the 856, once.
    [shipped] = handlers.handle_events([event(shipment_of(order))], edi)
    assert shipped.status == "sent"
    assert [p.name.rsplit("-", 1)[1] for p in sorted(folder.outbound.glob("*.x12"))] == [
        "997.x12", "855.x12", "856.x12", "810.x12"]
    with edi.engine.connect() as conn:
        assert conn.execute(select(HELD.c.business_key)).scalars().all() == []
    [again] = handlers.handle_events([inv], edi)  # a redelivered invoice event
    assert again.status == "duplicate"
    assert handlers.release_held(edi) == []


def test_a_held_810_whose_856_went_out_elsewhere_is_released_by_the_poll(edi):
    # Two concurrent batches: one held the 810, the other sent the 856 without seeing the
    # hold; the poll (or the later commit's own release) sends it.
    order = _accept_order(edi)
    edi.orders[order.key] = order
    handlers.handle_events([event(order)], edi)  # its 855
    inv = event(invoice_of(order)).model_copy(update={"occurred_at": NOW})
    [held] = handlers.handle_events([inv], edi)
    assert held.status == "held"
    [shipped] = handlers.handle_events([event(shipment_of(order))], edi, release=False)
    assert shipped.status == "sent"
    folder = edi.folder(edi.settings.partner("ACME"))
    assert outbound(folder, "810") == []
    [released] = handlers.release_held(edi)
    assert released.status == "sent" and len(outbound(folder, "810")) == 1
    assert handlers.release_held(edi) == []


def test_a_held_810_goes_without_its_856_once_the_hold_is_over(edi):
    order = _accept_order(edi)
    edi.orders[order.key] = order
    inv = event(invoice_of(order)).model_copy(update={"occurred_at": NOW})
    [held] = handlers.handle_events([inv], edi)
    assert held.status == "held" and handlers.release_held(edi) == []
    hold = edi.settings.partner("ACME").hold_810_for_856_minutes
    [acme] = [r for r in handlers.partner_status(edi.engine, edi.settings, now=NOW)
              if r["partner"] == "ACME"]
    assert acme["held_810"] == 1 and not any("held" in a for a in acme["attention"])
    # Past the hold and nothing released it (no poll ran): coexist status says so.
    [acme] = [r for r in handlers.partner_status(
        edi.engine, edi.settings, now=NOW + timedelta(minutes=hold, hours=1))
        if r["partner"] == "ACME"]
    assert any("held for their 856 past the hold" in a for a in acme["attention"])
    later = edi.clock() + timedelta(minutes=hold, seconds=1)
    edi.clock = lambda: later
    [released] = handlers.release_held(edi)
    assert released.status == "sent"
    folder = edi.folder(edi.settings.partner("ACME"))
    assert len(outbound(folder, "810")) == 1 and outbound(folder, "856") == []


def test_an_810_for_an_order_that_never_ships_goes_after_the_hold(edi):
    order = _accept_order(edi)
    edi.orders[order.key] = order
    old = event(invoice_of(order)).model_copy(update={"occurred_at": NOW - timedelta(hours=2)})
    [sent] = handlers.handle_events([old], edi)
    assert sent.status == "sent"


def test_856_and_810_carry_the_po_number_as_the_partner_sent_it_not_as_the_erp_stores_it(edi):
    # The legacy ERP upper-cases PO numbers; mock-edi matched no 856/810 to its order.
    drop(edi, "po.edi", order_850(po="Po-9x"))
    handlers.handle_inbound(edi)
    sent = Order.model_validate(commands(edi)[0]["payload"]["record"])
    stored = sent.model_copy(update={"customer_po": "PO-9X"})
    edi.orders[stored.key] = stored
    out = handlers.handle_events([event(stored), event(shipment_of(stored)),
                                  event(invoice_of(stored))], edi)
    assert [o.status for o in out] == ["sent", "sent", "sent"]
    folder = edi.folder(edi.settings.partner("ACME"))
    assert "PRF*Po-9x***" in outbound(folder, "856")[0].read_text()
    assert "*Po-9x~" in next(s for s in outbound(folder, "810")[0].read_text().split("\n")
                             if s.startswith("BIG"))
    assert "BAK*00*AD*Po-9x*" in outbound(folder, "855")[0].read_text()


def test_a_poller_stopping_writes_what_a_dead_peer_left_allocated(edi):
    """A peer died between numbering and the file's final name; this poller is asked to
    stop before its next pass: it still writes the file and records it ``written``."""
    import threading

    from workers.edi.consumer import EdiPoller

    profile = edi.settings.partner("ACME")
    with edi.engine.begin() as conn:
        out = control.record_outbound(conn, profile, kind="855", at=NOW, sets=[control.OutSet(
            "855", [["BAK", "00", "AD", "PO-2", "20260601"]], "order", "2")])
    stop = threading.Event()
    stop.set()  # no pass runs at all: only the flush at stop
    EdiPoller(edi, poll_s=0.01).run_forever(stop)
    assert (edi.folder(profile).outbound / out.file_name).read_bytes() == out.content
    with edi.engine.connect() as conn:
        assert conn.execute(select(INTERCHANGE.c.status).where(
            INTERCHANGE.c.id == out.id)).scalar_one() == "written"


def _sent_in_order(folder) -> list[str]:
    """The types of the order documents the partner received, in ISA13 order."""
    files = sorted(folder.outbound.glob("*.x12"))
    return [p.name.rsplit("-", 1)[1].removesuffix(".x12") for p in files
            if not p.name.endswith("-997.x12")]


@pytest.mark.parametrize("arrival", list(__import__("itertools").permutations(
    ("order", "shipment", "invoice"))))
def test_855_856_810_reach_the_partner_in_that_order_whatever_order_their_events_come_in(
        edi, arrival):
    # mock-edi found it in the chaos run: after worker kills a shipment's event overtook
    # its order's and the partner got an 856 before the 855 (shipped-before-confirmed).
    order = _accept_order(edi)
    records = {"order": order, "shipment": shipment_of(order), "invoice": invoice_of(order)}
    statuses = []
    for name in arrival:  # one event per call, as separate deliveries
        [o] = handlers.handle_events([event(records[name])], edi)
        statuses.append(o.status)
    folder = edi.folder(edi.settings.partner("ACME"))
    assert _sent_in_order(folder) == ["855", "856", "810"], statuses
    with edi.engine.connect() as conn:
        assert conn.execute(select(HELD)).all() == []
    assert handlers.release_held(edi) == [] and exceptions(edi) == []
    assert statuses.count("held") == {("order", "shipment", "invoice"): 0,
                                      ("order", "invoice", "shipment"): 1,
                                      ("shipment", "order", "invoice"): 1,
                                      ("shipment", "invoice", "order"): 2,
                                      ("invoice", "order", "shipment"): 1,
                                      ("invoice", "shipment", "order"): 2}[arrival]


def test_an_856_held_for_its_855_is_sent_by_the_poll_when_the_855_went_out_elsewhere(edi):
    order = _accept_order(edi)
    [held] = handlers.handle_events([event(shipment_of(order))], edi)
    assert held.status == "held" and "held for the 855 of order" in held.detail
    [inv] = handlers.handle_events([event(invoice_of(order))], edi)
    assert inv.status == "held" and "held for the 856" in inv.detail
    views = handlers.held_documents(edi.engine, now=NOW)
    assert sorted((v.doc_type, v.business_domain, v.business_key, v.waits_for)
                  for v in views) == [("810", "invoice", "777", "856"),
                                      ("856", "shipment", "555", "855")]
    [acme] = [r for r in handlers.partner_status(edi.engine, edi.settings, now=NOW)
              if r["partner"] == "ACME"]
    assert (acme["held_856"], acme["held_810"]) == (1, 1)
    # A concurrent batch sent the 855 without seeing the holds: the poll releases the 856,
    # and the 810 after it in the same call.
    [confirmed] = handlers.handle_events([event(order)], edi, release=False)
    assert confirmed.status == "sent"
    released = handlers.release_held(edi)
    assert [o.status for o in released] == ["sent", "sent"]
    assert _sent_in_order(edi.folder(edi.settings.partner("ACME"))) == ["855", "856", "810"]
    assert handlers.held_documents(edi.engine, now=NOW) == []


def test_an_856_goes_without_its_855_once_the_hold_is_over_and_status_says_so_before(edi):
    order = _accept_order(edi)
    ship = event(shipment_of(order)).model_copy(update={"occurred_at": NOW})
    [held] = handlers.handle_events([ship], edi)
    assert held.status == "held"
    hold = edi.settings.partner("ACME").hold_for_855_minutes
    [acme] = [r for r in handlers.partner_status(
        edi.engine, edi.settings, now=NOW + timedelta(minutes=hold, hours=1))
        if r["partner"] == "ACME"]
    assert any("1 856(s) held for their 855 past the hold" in a for a in acme["attention"])
    later = NOW + timedelta(minutes=hold, seconds=1)
    edi.clock = lambda: later
    [released] = handlers.release_held(edi)
    assert released.status == "sent"
    assert _sent_in_order(edi.folder(edi.settings.partner("ACME"))) == ["856"]


def test_an_856_waits_for_no_855_when_its_order_did_not_come_by_850(edi):
    # An order typed into the ERP gets no 855: its 856 must not wait for one.
    order = Order.model_validate({
        "key": "4242", "customer_key": "10000", "status": "open", "currency": "USD",
        "channel": "erp",
        "customer_po": "PHONE-1", "ordered_at": NOW,
        "lines": [{"line_no": 1, "sku": "WID-01000", "quantity": 2, "unit_price": "2.50"}]})
    edi.orders[order.key] = order
    [sent] = handlers.handle_events([event(shipment_of(order))], edi)
    assert sent.status == "sent"


def test_an_856_waits_for_no_855_when_the_partner_sets_no_hold(edi):
    # BETA: hold_810_for_856_minutes = 0 in the fixture; no 855 hold either here.
    beta = edi.settings.partner("BETA").model_copy(update={"hold_for_855_minutes": 0})
    edi.settings = EdiSettings(partners=(edi.settings.partner("ACME"), beta))
    drop(edi, "po.edi", order_850(sender="BETABUY"), partner="BETA")
    handlers.handle_inbound(edi)
    order = Order.model_validate(commands(edi)[0]["payload"]["record"])
    order = order.model_copy(update={"customer_key": "20000"})
    edi.orders[order.key] = order
    out = handlers.handle_events([event(shipment_of(order)), event(invoice_of(order))], edi)
    assert [o.status for o in out] == ["sent", "sent"]


def _partner_ta1(control_no: str, status: str, note: str, isa13: int) -> str:
    """A TA1 the partner sends on one of our interchanges, as mock-edi writes it."""
    return x12.write_interchange(sender=x12.Party("ZZ", "ACMEBUY"),
                                 receiver=x12.Party("ZZ", "DISTCO"), control=isa13, at=NOW,
                                 groups=[], extra=[["TA1", control_no, "260601", "1200",
                                                    status, note]])


def test_a_partners_ta1_is_recorded_on_our_interchange_never_answered_and_not_failed(edi):
    """mock-edi answered a repeated ISA13 of ours with TA1 R 025; coexist put those files in
    failed/ as "segment outside a transaction set" (chaos run).  A TA1 is the partner's
    interchange acknowledgment: it is recorded on the interchange it names (``ta1``), an R or
    E is an exception naming our interchange and the note, and nothing answers it."""
    folder = drop(edi, "po77.edi", order_850())
    handlers.handle_inbound(edi)
    [ours] = outbound(folder, "997")
    drop(edi, "ta1-1-ok.edi", _partner_ta1("000000001", "A", "000", 50))
    drop(edi, "ta1-2-dup.edi", _partner_ta1("000000001", "R", "025", 51))
    results = handlers.handle_inbound(edi)
    assert [r.ok for r in results] == [True, True], [r.problems for r in results]
    assert sorted(p.name for p in folder.processed.iterdir()) == [
        "po77.edi", "ta1-1-ok.edi", "ta1-2-dup.edi"]
    assert sorted(p.name for p in folder.outbound.iterdir()) == [ours.name]  # no answer
    with edi.engine.connect() as conn:
        assert conn.execute(select(INTERCHANGE.c.ta1).where(
            INTERCHANGE.c.direction == "out")).scalar_one() == "R025"
        kinds = conn.execute(select(INTERCHANGE.c.kind, INTERCHANGE.c.status).where(
            INTERCHANGE.c.direction == "in", INTERCHANGE.c.kind == "TA1")).all()
    assert sorted(kinds) == [("TA1", "acknowledgment")] * 2
    [rec] = exceptions(edi)
    assert rec.error_type == "EdiInterchangeRejected"
    assert "ta1-2-dup.edi" in rec.error_message and "interchange 1 (997)" in rec.error_message
    assert "duplicate interchange control number" in rec.error_message


def test_a_ta1_for_an_interchange_we_never_sent_is_an_exception_and_goes_to_failed(edi):
    folder = drop(edi, "ta1.edi", _partner_ta1("000000999", "R", "025", 52))
    [result] = handlers.handle_inbound(edi)
    assert not result.ok and (folder.failed / "ta1.edi").exists()
    assert not list(folder.outbound.iterdir())
    [rec] = exceptions(edi)
    assert rec.error_type == "EdiUnmatchedAcknowledgment" and "999" in rec.error_message


@pytest.mark.parametrize("renameat2", [True, False])
def test_a_published_file_the_partner_took_is_never_published_again(tmp_path, monkeypatch,
                                                                      renameat2):
    from workers.edi import transport

    if not renameat2:  # the fallback: link, then unlink
        monkeypatch.setattr(transport, "_libc_renameat2", lambda: None)
    folder = DropFolder(tmp_path / "p").ensure()
    items = [("P-000000001-997.x12", b"one"), ("P-000000002-855.x12", b"two")]
    assert folder.stage_many(items) == [True, True]
    assert [p.name for p in folder.publish_many(items)] == [n for n, _ in items]
    taken = tmp_path / "taken"
    taken.mkdir()
    for name, _ in items:
        (folder.outbound / name).rename(taken / name)
    # A crash after the renames: the rows still say staged; the next flush publishes again.
    assert [p.name for p in folder.publish_many(items)] == [n for n, _ in items]
    assert sorted(p.name for p in folder.outbound.iterdir()) == []
    # A name that holds other bytes is never replaced.
    assert folder.stage_many([("P-000000003-810.x12", b"three")]) == [True]
    (folder.outbound / "P-000000003-810.x12").write_bytes(b"other")
    [res] = folder.publish_many([("P-000000003-810.x12", b"three")])
    assert isinstance(res, OutboundExists)
    assert (folder.outbound / "P-000000003-810.x12").read_bytes() == b"other"

"""The EDI channel in batches (SQLite, real files): a pass's inbound files and a batch's
outbound documents are each one state transaction; an 810 whose 856 is in the same batch
goes after it instead of waiting; files appear in ISA13 order, a peer's lower numbers
first; and a fault in a batch falls back to one transaction per interchange or document
without losing or doubling anything."""

from __future__ import annotations

import os

from sqlalchemy import event as sa_event
from sqlalchemy import select

from tests.integration import test_edi_channel
from tests.integration.test_edi_channel import (
    NOW,
    _accept_order,
    commands,
    drop,
    event,
    exceptions,
    invoice_of,
    order_850,
    outbound,
    shipment_of,
)
from workers.edi import control, handlers, transport
from workers.edi.store import INTERCHANGE

edi = test_edi_channel.edi  # the same fixture: two partners on SQLite, real folders


def _transactions(engine):
    """A counter of the transactions begun on ``engine`` (BEGIN statements)."""
    seen = []
    sa_event.listen(engine, "begin", lambda conn: seen.append(1))
    return seen


def test_a_pass_of_files_is_answered_in_one_state_transaction(edi):
    for i in range(12):
        drop(edi, f"po{i:02d}.edi", order_850(po=f"PO-{i}", control_no=100 + i))
    begun = _transactions(edi.engine)
    results = handlers.handle_inbound(edi)
    assert len(results) == 12 and all(r.ok for r in results)
    # The batch; the flush's read of what is allocated, its update to staged (the stage
    # files fsynced) and to written; the inputs marked moved: not one per file (the code
    # before this change began 12 + 3).
    assert len(begun) == 5, len(begun)
    assert len(commands(edi)) == 12
    folder = edi.folder(edi.settings.partner("ACME"))
    isa13s = [int(p.name.split("-")[1]) for p in outbound(folder, "997")]
    assert isa13s == list(range(1, 13))


def test_a_duplicate_inside_one_pass_is_a_ta1_025_not_a_second_order(edi):
    drop(edi, "a.edi", order_850(control_no=7))
    drop(edi, "b.edi", order_850(control_no=7, po="PO-OTHER"))
    a, b = handlers.handle_inbound(edi)
    assert a.ok and not b.ok
    assert len(commands(edi)) == 1
    folder = edi.folder(edi.settings.partner("ACME"))
    [ta1] = outbound(folder, "TA1")
    assert "*R*025~" in ta1.read_text()
    [rec] = exceptions(edi)
    assert rec.error_type == "EdiDuplicateInterchange" and "b.edi" in rec.error_message


def test_a_bug_in_one_interchange_rolls_the_batch_back_and_only_its_file_fails(edi, monkeypatch):
    for i in range(4):
        drop(edi, f"po{i}.edi", order_850(po=f"PO-{i}", control_no=10 + i))
    real = handlers._interchange_transaction

    def buggy(conn, deps, profile, claimed, ic, *a, **kw):
        if claimed.name == "po2.edi":
            raise RuntimeError("a bug")
        return real(conn, deps, profile, claimed, ic, *a, **kw)

    monkeypatch.setattr(handlers, "_interchange_transaction", buggy)
    results = handlers.handle_inbound(edi)
    assert [r.ok for r in results] == [True, True, False, True]
    folder = edi.folder(edi.settings.partner("ACME"))
    assert (folder.failed / "po2.edi").exists()
    assert sorted(c["payload"]["po_number"] for c in commands(edi)) == ["PO-0", "PO-1", "PO-3"]
    assert len(outbound(folder, "997")) == 3
    [rec] = exceptions(edi)
    assert rec.error_type == "RuntimeError" and "po2.edi" in rec.error_message


def test_an_810_before_its_856_in_one_batch_goes_after_it_without_waiting(edi):
    # The phased e2e saw an 810 outwait its 856 when both came in one batch: before this
    # change the 810 was judged first, found no 856 sent, and went back to be retried.
    order = _accept_order(edi)
    inv = event(invoice_of(order)).model_copy(update={"occurred_at": NOW})
    out = handlers.handle_events([inv, event(shipment_of(order)), event(order)], edi)
    assert [o.status for o in out] == ["sent", "sent", "sent"]
    folder = edi.folder(edi.settings.partner("ACME"))
    kinds = [p.name.rsplit("-", 1)[1] for p in sorted(folder.outbound.glob("*.x12"))]
    assert kinds == ["997.x12", "855.x12", "856.x12", "810.x12"]


def test_an_810_whose_856_is_not_in_the_batch_still_waits_and_its_neighbours_go(edi):
    order = _accept_order(edi)
    inv = event(invoice_of(order)).model_copy(update={"occurred_at": NOW})
    out = handlers.handle_events([inv, event(order)], edi)
    assert [o.status for o in out] == ["held", "sent"]
    assert "held for the 856" in out[0].detail


def test_a_batch_of_documents_is_one_transaction_and_files_appear_in_isa13_order(
        edi, monkeypatch):
    order = _accept_order(edi)
    edi.orders[order.key] = order
    profile = edi.settings.partner("ACME")
    # A peer numbered an interchange and died before its file's final name.
    with edi.engine.begin() as conn:
        dead = control.record_outbound(conn, profile, kind="855", at=NOW, sets=[
            control.OutSet("855", [["BAK", "00", "AD", "PO-1", "20260601"]], "order", "1")])
    linked: list[str] = []
    real_rename = transport._rename_noreplace

    def rename(src, dst):  # the final name is given by this one rename
        linked.append(os.path.basename(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(transport, "_rename_noreplace", rename)
    begun = _transactions(edi.engine)
    envs = [event(order), event(shipment_of(order)), event(invoice_of(order))]
    out = handlers.handle_events(envs, edi)
    assert [o.status for o in out] == ["sent", "sent", "sent"]
    # The batch; the flush's read and its updates to staged and to written (before this
    # change: one per document).
    assert len(begun) == 4, len(begun)
    # The dead peer's lower number appeared first, then ours in ISA13 order (before this
    # change only the batch's own files were written and the peer's waited for a poll).
    assert linked == sorted(linked) and linked[0] == dead.file_name
    with edi.engine.connect() as conn:
        assert conn.execute(select(INTERCHANGE.c.status).where(
            INTERCHANGE.c.id == dead.id)).scalar_one() == "written"


def test_a_document_that_fails_in_the_batch_costs_its_neighbours_nothing(edi, monkeypatch):
    order = _accept_order(edi)
    edi.orders[order.key] = order
    real = control.record_outbound

    def refuse_856(conn, profile, *, kind, **kw):
        if kind == "856":
            raise control.x12.X12WriteError("a document that fails its own checks")
        return real(conn, profile, kind=kind, **kw)

    monkeypatch.setattr(control, "record_outbound", refuse_856)
    envs = [event(order), event(shipment_of(order)),
            event(invoice_of(order)).model_copy(update={"occurred_at": NOW})]
    out = handlers.handle_events(envs, edi)
    # The 810 was counted on the batch's 856, which did not go: it waits (never billed
    # before shipped), and the 855 goes.
    assert [o.status for o in out] == ["sent", "business_error", "held"]
    assert "held for the 856" in out[2].detail
    folder = edi.folder(edi.settings.partner("ACME"))
    assert len(outbound(folder, "855")) == 1 and outbound(folder, "810") == []
    isa13s = sorted(int(p.name.split("-")[1]) for p in folder.outbound.glob("*.x12"))
    assert isa13s == list(range(1, len(isa13s) + 1))  # the rolled-back batch left no gap


def test_a_numbering_batch_hands_out_consecutive_numbers_and_gives_them_back_on_rollback(edi):
    profile = edi.settings.partner("ACME")
    with edi.engine.begin() as conn:
        assert control.allocate(conn, profile.id, control.ISA) == 1
    with edi.engine.begin() as conn, control.numbering_batch(conn):
        got = [control.allocate(conn, profile.id, control.ISA) for _ in range(3)]
        got.append(control.allocate(conn, profile.id, control.ISA, 2))
    assert got == [2, 3, 4, 5]
    try:
        with edi.engine.begin() as conn, control.numbering_batch(conn):
            assert control.allocate(conn, profile.id, control.ISA, 3) == 7
            raise RuntimeError("the batch fails")
    except RuntimeError:
        pass
    with edi.engine.begin() as conn:
        # The batch's final value was written once (6), the failed one's not at all.
        assert control.allocate(conn, profile.id, control.ISA) == 7
        assert control._BATCH_KEY not in conn.info


def _statements(engine):
    """The SQL statements run on ``engine`` (an executemany counts once)."""
    seen: list[str] = []
    sa_event.listen(engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *a: seen.append(statement))
    return seen


def test_a_pass_of_850s_costs_two_statements_per_interchange_not_eight(edi):
    for i in range(12):
        drop(edi, f"po{i:02d}.edi", order_850(po=f"PO-{i}", control_no=100 + i))
    ran = _statements(edi.engine)
    results = handlers.handle_inbound(edi)
    assert len(results) == 12 and all(r.ok for r in results)
    # Per interchange: its inbound record and its 997's (their ids are needed); the
    # look-ups (same bytes, sender:ISA13, PO) are one query each for the pass, and the
    # documents and order commands one multi-row INSERT each.  (Before: 8 per interchange.)
    # Besides: BEGINs, the counters (created here: an UPDATE, INSERT, UPDATE each, and
    # the batch's final UPDATE), the flush's read and updates.
    assert len(ran) <= 2 * 12 + 30, len(ran)
    assert len(commands(edi)) == 12
    with edi.engine.connect() as conn:
        docs = conn.execute(select(handlers.DOCUMENT.c.doc_type)).scalars().all()
    assert sorted(docs) == ["850"] * 12 + ["997"] * 12


def test_a_pass_restating_an_earlier_po_keeps_its_order_key(edi):
    drop(edi, "a.edi", order_850(po="PO-1"))
    [first] = handlers.handle_inbound(edi)
    drop(edi, "b.edi", order_850(po="PO-1", control_no=2, lines=(("WID-01000", "12", "2.50"),)))
    drop(edi, "c.edi", order_850(po="PO-2", control_no=3))
    second, third = handlers.handle_inbound(edi)
    assert second.ok and third.ok
    assert second.orders == first.orders and third.orders != first.orders


def test_a_pass_with_one_po_twice_gives_both_the_same_order_key(edi):
    # Two interchanges of one pass share a PO: the second reads what the first wrote, so
    # the pass's statements run as they come (no look-up up front, nothing deferred).
    drop(edi, "a.edi", order_850(po="PO-7", control_no=1))
    drop(edi, "b.edi", order_850(po="PO-7", control_no=2, lines=(("WID-01000", "1", "2.50"),)))
    a, b = handlers.handle_inbound(edi)
    assert a.ok and b.ok and a.orders == b.orders and len(commands(edi)) == 2

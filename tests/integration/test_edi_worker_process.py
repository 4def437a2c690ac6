"""The EDI channel in real ``coexist worker`` processes (RabbitMQ, PostgreSQL state, the
legacy reference ERP as the SoR, the cloud simulator): two workers poll the same folders and
consume the same queue; one is killed with SIGKILL in the middle of answering 850s and
sending 810s, and nothing is lost, nothing processed or sent twice."""

from __future__ import annotations

import json
import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dramatiq
import pytest
from sqlalchemy import func, select

from bus.envelope import new_envelope
from bus.outbox import OutboxRecord
from coexistence.canonical.models import Invoice, Order
from coexistence.edi import documents
from tests.support import cloud_sim
from tests.support.edi import partner_toml
from tests.support.edi_world import worker_world
from tests.support.processes import Process, wait_until
from workers.bootstrap import App
from workers.edi.handlers import UNWRITTEN
from workers.edi.store import DOCUMENT, INTERCHANGE
from workers.router import queues

simulator, sim = cloud_sim.simulator, cloud_sim.sim

N_850 = 30
N_810 = 30
WAIT_S = 90


def _world(tmp_path, sim, pg_url, amqp, sftp_server=None):
    """The world's parts; with ``sftp_server`` (a ``LoopbackSftp``) the partner's folders are
    on that SFTP server (its root is the world's ``folder``), else a file drop."""
    def partner(customer):
        if sftp_server is None:
            return tmp_path / "acme", partner_toml(tmp_path / "acme", [customer])
        table = ", ".join(f"{k} = {json.dumps(v)}" for k, v in sftp_server.settings().items())
        return sftp_server.root, (partner_toml("", [customer], transport="sftp")
                                  + f"sftp = {{ {table} }}\n")

    with worker_world(tmp_path, sim.url, pg_url, amqp, partner) as w:
        yield w


@pytest.fixture
def world(tmp_path, sim, pg_url, fresh_rabbit_vhost):
    amqp, _vhost = fresh_rabbit_vhost
    yield from _world(tmp_path, sim, pg_url, amqp)


@pytest.fixture(params=["folder", "sftp"])
def either_world(request, tmp_path, sim, pg_url, fresh_rabbit_vhost):
    """``world`` on a file drop, and with the partner's folders on an SFTP server."""
    amqp, _vhost = fresh_rabbit_vhost
    if request.param == "folder":
        yield from _world(tmp_path, sim, pg_url, amqp)
        return
    pytest.importorskip("asyncssh")
    from tests.support.sftp_server import LoopbackSftp

    root = tmp_path / "sftp-root"
    for sub in ("inbound", "outbound", "processed", "failed"):
        (root / sub).mkdir(parents=True)
    server = LoopbackSftp(root, tmp_path / "keys").start()
    try:
        yield from _world(tmp_path, sim, pg_url, amqp, sftp_server=server)
    finally:
        server.stop()


def drop_850s(w, n: int, first: int = 1) -> None:
    inbound = w["folder"] / "inbound"
    inbound.mkdir(parents=True, exist_ok=True)
    at = datetime(2026, 6, 1, 12, tzinfo=UTC)
    for i in range(first, first + n):
        order = Order.model_validate({
            "key": "0", "customer_key": w["customer"], "status": "open", "channel": "edi",
            "customer_po": f"PO-{i:06d}", "currency": "USD", "ordered_at": at,
            "requested_date": at.date() + timedelta(days=5),
            "lines": [{"line_no": n, "sku": sku, "quantity": n + 1, "unit_price": "2.50"}
                      for n, sku in enumerate(w["skus"][:2], 1)]})
        text = documents.partner_850(w["profile"], order, control=i, at=at,
                                     unit_of=w["units"].get)
        tmp = inbound / f".po{i:05d}.edi.part"
        tmp.write_text(text)
        tmp.rename(inbound / f"po{i:05d}.edi")  # the partner's final rename


def enqueue_invoices(w, n: int) -> None:
    app = App(w["settings"])
    try:
        for i in range(1, n + 1):
            inv = Invoice.model_validate({
                "key": str(800_000 + i), "order_key": str(900_000 + i),
                "customer_key": w["customer"], "status": "open", "currency": "USD",
                "issued_on": "2026-06-02", "due_on": "2026-07-02", "tax_amount": "1.00",
                "lines": [{"line_no": 1, "sku": w["skus"][0], "description": "w",
                           "quantity": 2, "unit_price": "3.00"}]})
            env = new_envelope(domain="invoice", kind="event", key=inv.key,
                               payload={"record": inv.model_dump(mode="json")},
                               source_system="legacy", source_version=1)
            app.broker.enqueue(dramatiq.Message(
                queue_name="coexist.channel.edi", actor_name="channel_edi",
                args=(env.model_dump(mode="json"),), kwargs={}, options={},
                message_id=env.message_id))
    finally:
        app.close()


def worker(w, name: str) -> Process:
    return Process(["worker", "--threads", "2"], w["env"], w["home"] / f"{name}.log")


def bootstrapped(p: Process) -> bool:
    assert p.alive(), p.output()[-3000:]
    out = p.output()  # consuming the queue and polling the folders, both
    return '"coexist bootstrapped"' in out and '"edi poller started"' in out


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) \
        if folder.is_dir() else []


def isa13(path: Path) -> int:
    return int(re.match(r"ISA(?:\*[^*]*){12}\*(\d{9})", path.read_text()).group(1))


def check_exactly_once(w, n_850: int, n_810: int) -> None:
    folder, state = w["folder"], w["state"]
    assert names(folder / "inbound") == [] and names(folder / "failed") == []
    # Every 850 processed once: its own name in processed/, never a second copy (name.1).
    assert names(folder / "processed") == [f"po{i:05d}.edi" for i in range(1, n_850 + 1)]
    with state.connect() as conn:
        commands = conn.execute(select(OutboxRecord.__table__.c.message_id).where(
            OutboxRecord.__table__.c.queue_name == queues.COMMAND_QUEUE)).scalars().all()
        answers = conn.execute(select(INTERCHANGE.c.answers, func.count()).where(
            INTERCHANGE.c.direction == "out", INTERCHANGE.c.kind == "997")
            .group_by(INTERCHANGE.c.answers)).all()
        inbound = conn.execute(select(func.count()).select_from(INTERCHANGE).where(
            INTERCHANGE.c.direction == "in")).scalar_one()
        out_rows = conn.execute(select(INTERCHANGE.c.isa13, INTERCHANGE.c.file_name,
                                       INTERCHANGE.c.status, INTERCHANGE.c.content).where(
            INTERCHANGE.c.direction == "out")).all()
        invoices = conn.execute(select(DOCUMENT.c.business_key, func.count()).where(
            DOCUMENT.c.direction == "out", DOCUMENT.c.doc_type == "810")
            .group_by(DOCUMENT.c.business_key)).all()
    # One order command and one 997 per 850, no more.
    assert len(commands) == len(set(commands)) == n_850
    assert inbound == n_850
    assert len(answers) == n_850 and all(count == 1 for _, count in answers)
    # One 810 per invoice; every interchange written, once, with the bytes recorded.
    assert len(invoices) == n_810 and all(count == 1 for _, count in invoices)
    files = names(folder / "outbound")
    assert sorted(r.file_name for r in out_rows) == files
    unwritten = [(r.file_name, r.status) for r in out_rows if r.status != "written"]
    assert not unwritten, (unwritten, exception_summary(w))
    for r in out_rows:
        assert (folder / "outbound" / r.file_name).read_bytes() == bytes(r.content)
    # Control numbers: never reused, no gap the partner would see.
    numbers = sorted(isa13(folder / "outbound" / f) for f in files)
    assert numbers == list(range(1, n_850 + n_810 + 1))
    assert len([f for f in files if f.endswith("-997.x12")]) == n_850
    assert len([f for f in files if f.endswith("-810.x12")]) == n_810


def exception_summary(w) -> list[tuple[str, str]]:
    """The business exceptions the run recorded (what a failed check should show)."""
    from bus.exception_store import ExceptionRecord

    with w["state"].connect() as conn:
        rows = conn.execute(select(ExceptionRecord.__table__.c.error_type,
                                   ExceptionRecord.__table__.c.error_message)).all()
    return [(r.error_type, r.error_message[:200]) for r in rows]


def done(w, n_850: int, n_810: int):
    """Every file there, and no interchange still unwritten (a victim's file can be on
    disk before the peer's next pass records it written)."""
    folder = w["folder"]
    out = names(folder / "outbound")
    if not (len(names(folder / "processed")) == n_850
            and len([f for f in out if f.endswith("-810.x12")]) == n_810
            and len([f for f in out if f.endswith("-997.x12")]) == n_850):
        return False
    with w["state"].connect() as conn:
        return conn.execute(select(func.count()).select_from(INTERCHANGE).where(
            INTERCHANGE.c.direction == "out", INTERCHANGE.c.status.in_(UNWRITTEN))
        ).scalar_one() == 0



def _killed_at_810(w, fault: str) -> None:
    """A ``coexist worker`` run with ``fault`` set for 810s, which must die by SIGKILL."""
    victim = Process(["worker", "--threads", "2"], {**w["env"], fault: "810"},
                     w["home"] / "victim.log")
    try:
        victim.popen.wait(WAIT_S)
    finally:
        victim.stop()
    assert victim.popen.returncode == -9, victim.output()[-3000:]

def test_a_killed_edi_worker_loses_nothing_and_its_peer_on_the_same_folders_doubles_nothing(
        world):
    """Two workers poll the same folders and consume the same queue; one is killed with
    SIGKILL while they work.  The other takes over its claims (after the claim timeout) and
    its unacked messages (RabbitMQ redelivers them): every 850 answered once, every invoice
    billed once, control numbers without gap or reuse."""
    w = world
    enqueue_invoices(w, N_810)
    victim, peer = worker(w, "victim"), worker(w, "peer")
    try:
        for p in (victim, peer):
            wait_until(lambda p=p: bootstrapped(p), WAIT_S, "worker bootstrapped")
        drop_850s(w, N_850)
        wait_until(lambda: len(names(w["folder"] / "outbound")) >= 3, WAIT_S,
                   "first outbound files", poll_s=0.02)
        victim.signal(signal.SIGKILL)
        victim.popen.wait(30)
        assert victim.popen.returncode == -9
        assert not done(w, N_850, N_810), "the work was over before the kill"
        wait_until(lambda: done(w, N_850, N_810), WAIT_S, "every 850 answered, every 810 sent")
        assert peer.stop() == 0
    finally:
        victim.stop()
        peer.stop()
    check_exactly_once(w, N_850, N_810)
    assert all("edi poller started" in p.output() for p in (victim, peer))


def test_a_coexist_worker_killed_between_numbering_and_the_final_rename_loses_no_number(
        either_world):
    """The real ``coexist worker`` SIGKILLs itself (``COEXIST_FAULT_EDI_KILL_BEFORE_RENAME``)
    after the 810s' control numbers were committed and their bytes fsynced under temporary
    names, right before the first final rename.  The next worker writes those interchanges
    with the recorded bytes (no reuse, no gap) and sends nothing twice for the redelivered
    invoice events.  On the file drop and over SFTP."""
    from workers.edi.transport import FAULT_KILL_BEFORE_RENAME

    w = either_world
    n = 3
    enqueue_invoices(w, n)
    _killed_at_810(w, FAULT_KILL_BEFORE_RENAME)
    outbound = w["folder"] / "outbound"
    # Killed at the rename: numbers committed, no file under its final name yet.
    assert names(outbound) == []
    assert any(p.name.endswith(".tmp") for p in outbound.iterdir())
    with w["state"].connect() as conn:
        allocated = {r.file_name: bytes(r.content) for r in conn.execute(
            select(INTERCHANGE.c.file_name, INTERCHANGE.c.content).where(
                INTERCHANGE.c.direction == "out", INTERCHANGE.c.status.in_(UNWRITTEN)))}
    assert allocated and all(f.endswith("-810.x12") for f in allocated)
    peer = worker(w, "peer")
    try:
        wait_until(lambda: done(w, 0, n), WAIT_S, "every 810 sent", poll_s=0.05)
        assert peer.stop() == 0
    finally:
        peer.stop()
    check_exactly_once(w, 0, n)
    # The killed worker's interchanges went out with the numbers and bytes it committed.
    for name, content in allocated.items():
        assert (outbound / name).read_bytes() == content


def test_a_coexist_worker_killed_after_the_final_rename_sends_no_second_copy(either_world):
    """The real ``coexist worker`` SIGKILLs itself (``COEXIST_FAULT_EDI_KILL_AFTER_RENAME``)
    right after an 810's file got its final name, before the state says ``written``; the
    partner then takes the file away (as mock-edi does: into ``outbound/processed/``).  The
    next worker must not write that interchange again: in the chaos run the same name and
    bytes reached the partner twice (mock-edi answered TA1 025, duplicate ISA13).  On the
    file drop and over SFTP (the worker's session to the server dies with it)."""
    from workers.edi.transport import FAULT_KILL_AFTER_RENAME

    w = either_world
    n = 3
    enqueue_invoices(w, n)
    _killed_at_810(w, FAULT_KILL_AFTER_RENAME)
    outbound = w["folder"] / "outbound"
    taken = outbound / "processed"
    taken.mkdir()
    # The partner takes every file that is there (at least the one renamed at the kill).
    first = names(outbound)
    assert first and all(f.endswith("-810.x12") for f in first if f != "processed")
    for f in first:
        if f != "processed":
            (outbound / f).rename(taken / f)
    with w["state"].connect() as conn:
        unwritten = conn.execute(select(func.count()).select_from(INTERCHANGE).where(
            INTERCHANGE.c.direction == "out", INTERCHANGE.c.status.in_(UNWRITTEN))
        ).scalar_one()
    assert unwritten, "the kill left nothing unwritten"

    def settled() -> bool:
        with w["state"].connect() as conn:
            rows = conn.execute(select(INTERCHANGE.c.status).where(
                INTERCHANGE.c.direction == "out")).scalars().all()
        return len(rows) == n and all(s == "written" for s in rows)

    peer = worker(w, "peer")
    try:
        wait_until(settled, WAIT_S, "every 810 written", poll_s=0.05)
        assert peer.stop() == 0
    finally:
        peer.stop()
    # What the partner received over both runs: each interchange once, ISA13 1..n.
    received = [p for p in (*taken.iterdir(), *outbound.iterdir())
                if p.is_file() and not p.name.startswith(".")]
    assert sorted(isa13(p) for p in received) == list(range(1, n + 1)), sorted(
        p.name for p in received)
    with w["state"].connect() as conn:
        rows = conn.execute(select(INTERCHANGE.c.file_name, INTERCHANGE.c.content).where(
            INTERCHANGE.c.direction == "out")).all()
    by_name = {p.name: p.read_bytes() for p in received}
    assert {r.file_name: bytes(r.content) for r in rows} == by_name
    assert not [p for p in outbound.iterdir() if p.name.endswith(".tmp")]

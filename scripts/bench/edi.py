"""EDI channel throughput, each against a same-run baseline that moves the same files unprocessed.

    .venv/bin/python scripts/bench/edi.py [--documents 400] [--state-url URL]

* ``inbound``: 850 files in a partner's ``inbound/`` -> ``handle_inbound`` (claim, read,
  envelope and element checks, 850 -> canonical order, one state transaction with the
  inbound record, documents, the order command in the outbox and the 997 with its control
  numbers, the 997 file written and fsynced, the 850 moved to ``processed/``).  Baseline: the
  same files read, a file of the same size written (temp name, fsync, rename) and the input
  moved, with no processing.
* ``outbound``: shipment and invoice events -> ``handle_events`` (856 and 810 built, checked,
  numbered in one transaction with their document records, written and fsynced).  Baseline:
  the same bytes written as files the same way.

Prints one JSON line per direction: documents per second, the baseline's, their ratio, and
the CPU time per document of each (less dependent on the machine's load than the rates).
coexist fsyncs a batch's files concurrently (``DropFolder.stage_many``) where the
baseline fsyncs one file after another, so a second baseline (``baseline_batch_fsync``) moves
the same files with the files of each 200 fsynced together: the I/O floor coexist itself
works against.
Target: >= 500 documents/s each way.  State is SQLite in a temporary folder unless
``--state-url`` names another database (it must be empty).

``--transport sftp`` measures the inbound path over the SFTP transport instead: the
partner's folders on an asyncssh SFTP server on loopback (started in this process, the
test suite's ``tests/support/sftp_server.py``, so its CPU is counted too), and as the
baseline a plain asyncssh SFTP client doing, per file, what the file-drop baseline does:
claim rename, read, a same-size answer written under a temporary name, fsynced and
renamed, the input renamed into ``processed/``; no processing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bus.envelope import new_envelope  # noqa: E402
from bus.exception_store import ExceptionStore  # noqa: E402
from coexistence.canonical.models import Invoice, Order, Shipment  # noqa: E402
from coexistence.edi import documents, x12  # noqa: E402
from coexistence.edi.profiles import EdiSettings  # noqa: E402
from workers.db import create_state_engine  # noqa: E402
from workers.edi import handlers  # noqa: E402
from workers.edi.transport import DropFolder  # noqa: E402
from workers.migrate import upgrade as upgrade_schema  # noqa: E402

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _settings(folder: Path, customers: list[str]) -> EdiSettings:
    return EdiSettings.from_data({"partners": [{
        "id": "ACME", "partner_isa": {"qualifier": "ZZ", "id": "ACMEBUY"},
        "our_isa": {"qualifier": "ZZ", "id": "DISTCO"}, "partner_gs": "ACMEBUY",
        "our_gs": "DISTCO", "customers": customers, "folder": str(folder),
        "buyer_ids": {c: c for c in customers}}]})


def _order(i: int) -> Order:
    return Order.model_validate({
        "key": str(100_000 + i), "customer_key": "10000", "status": "open", "channel": "edi",
        "customer_po": f"PO-{i:08d}", "currency": "USD", "ordered_at": NOW,
        "requested_date": NOW.date() + timedelta(days=7),
        "lines": [{"line_no": n, "sku": f"WID-{n:05d}", "quantity": 3 + n,
                   "unit_price": f"{n}.25"} for n in range(1, 5)]})


def _850(i: int) -> bytes:
    body = documents.build_850(_order(i), unit_of=lambda s: "EA", buyer_id="10000")
    return x12.write_interchange(
        sender=x12.Party("ZZ", "ACMEBUY"), receiver=x12.Party("ZZ", "DISTCO"), control=i + 1,
        at=NOW, groups=[x12.GroupSpec("PO", "ACMEBUY", "DISTCO", i + 1,
                                      [x12.SetSpec("850", 1, body)])],
        segment_suffix="\n", usage="T").encode()


def _write_like(folder: Path, name: str, content: bytes) -> None:
    tmp = folder / f".{name}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, folder / name)


def _write_batch_like(folder: Path, items: list[tuple[str, bytes]]) -> None:
    """The same files as ``_write_like``, 200 at a time: written, fsynced together, renamed."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        for start in range(0, len(items), 200):
            chunk = items[start:start + 200]
            temps = []
            for name, content in chunk:
                tmp = folder / f".{name}.tmp"
                tmp.write_bytes(content)
                temps.append(tmp)

            def sync(path: Path) -> None:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

            list(pool.map(sync, temps))
            for tmp, (name, _) in zip(temps, chunk, strict=True):
                os.rename(tmp, folder / name)


class Stages:
    """User and system CPU (``os.times``) per stage of the inbound path, by wrapping the
    handlers' stage functions for the duration of the measured call (bench only)."""

    def __init__(self) -> None:
        self.cpu: dict[str, list[float]] = {}

    def wrap(self, owner, attr: str, stage: str):
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            t0 = os.times()
            try:
                return original(*args, **kwargs)
            finally:
                t1 = os.times()
                acc = self.cpu.setdefault(stage, [0.0, 0.0])
                acc[0] += t1.user - t0.user
                acc[1] += t1.system - t0.system

        setattr(owner, attr, timed)
        return lambda: setattr(owner, attr, original)

    def report(self, n: int) -> dict:
        return {stage: {"user_ms": round(1000 * u / n, 3), "sys_ms": round(1000 * s / n, 3)}
                for stage, (u, s) in self.cpu.items()}


def _inbound_stages() -> tuple[Stages, list]:
    from workers.edi import transport

    st = Stages()
    undo = [st.wrap(handlers, "_read_file", "read_and_plan"),
            st.wrap(handlers, "_answer_batch", "state_transaction"),
            st.wrap(handlers, "flush_pending", "write_997s"),
            st.wrap(transport.DropFolder, "claim", "claim"),
            st.wrap(transport.DropFolder, "finish", "move_to_processed"),
            st.wrap(transport.DropFolder, "sync_dirs", "directory_fsyncs")]
    return st, undo


def bench_inbound(root: Path, n: int, url: str | None) -> dict:
    files = [_850(i) for i in range(n)]
    # Baseline: the same files in, a same-size answer out, the input moved; no processing.
    base = DropFolder(root / "base").ensure()
    for i, content in enumerate(files):
        (base.inbound / f"po{i:06d}.edi").write_bytes(content)
    t0, c0 = time.perf_counter(), time.process_time()
    for i, name in enumerate(sorted(os.listdir(base.inbound))):
        data = (base.inbound / name).read_bytes()
        _write_like(base.outbound, f"ans{i:06d}.x12", data[: 400])
        os.rename(base.inbound / name, base.processed / name)
    baseline = n / (time.perf_counter() - t0)
    base_cpu = time.process_time() - c0
    # The same, the answers of 200 files fsynced together.
    base2 = DropFolder(root / "base2").ensure()
    for i, content in enumerate(files):
        (base2.inbound / f"po{i:06d}.edi").write_bytes(content)
    t0 = time.perf_counter()
    names = sorted(os.listdir(base2.inbound))
    answers = [(f"ans{i:06d}.x12", (base2.inbound / name).read_bytes()[:400])
               for i, name in enumerate(names)]
    _write_batch_like(base2.outbound, answers)
    for name in names:
        os.rename(base2.inbound / name, base2.processed / name)
    baseline2 = n / (time.perf_counter() - t0)

    deps = _deps(root / "in", url)
    folder = deps.folder(deps.settings.partners[0]).ensure()
    for i, content in enumerate(files):
        (folder.inbound / f"po{i:06d}.edi").write_bytes(content)
    stages, undo = _inbound_stages()
    t0, c0, o0 = time.perf_counter(), time.process_time(), os.times()
    results = handlers.handle_inbound(deps)
    elapsed, cpu, o1 = time.perf_counter() - t0, time.process_time() - c0, os.times()
    for u in undo:
        u()
    assert len(results) == n and all(r.ok for r in results), results[:1]
    return {"bench": "edi_inbound_850_to_997_and_command", "documents": n,
            "docs_per_s": round(n / elapsed), "baseline_docs_per_s": round(baseline),
            "ratio": round(n / elapsed / baseline, 3), "target_docs_per_s": 500,
            "baseline_batch_fsync_docs_per_s": round(baseline2),
            "cpu_ms_per_doc": round(1000 * cpu / n, 3),
            "user_ms_per_doc": round(1000 * (o1.user - o0.user) / n, 3),
            "sys_ms_per_doc": round(1000 * (o1.system - o0.system) / n, 3),
            "stages_cpu_per_doc": stages.report(n),
            "baseline_cpu_ms_per_doc": round(1000 * base_cpu / n, 3)}


def bench_outbound(root: Path, n: int, url: str | None) -> dict:
    deps = _deps(root / "out", url)
    orders = {o.key: o for o in (_order(i) for i in range(n // 2))}
    deps.get_order = orders.get
    envs = []
    for i, order in enumerate(orders.values()):
        ship = Shipment.model_validate({
            "key": str(500_000 + i), "order_key": order.key, "warehouse": "W1",
            "carrier": "UPSN", "tracking_number": f"1Z{i:016d}",
            "milestones": [{"milestone": "shipped", "at": NOW}],
            "lines": [{"line_no": ln.line_no, "order_line_no": ln.line_no, "sku": ln.sku,
                       "quantity": ln.quantity} for ln in order.lines]})
        inv = Invoice.model_validate({
            "key": str(700_000 + i), "order_key": order.key, "customer_key": "10000",
            "status": "open", "currency": "USD", "issued_on": NOW.date(),
            "due_on": NOW.date() + timedelta(days=30), "tax_amount": "1.50",
            "lines": [{"line_no": ln.line_no, "sku": ln.sku, "description": f"widget {ln.sku}",
                       "quantity": ln.quantity, "unit_price": ln.unit_price}
                      for ln in order.lines]})
        for rec in (ship, inv):
            envs.append(new_envelope(domain=rec.domain, kind="event", key=rec.key,
                                     payload={"record": rec.model_dump(mode="json")},
                                     source_system="legacy", source_version=1))
    t0, c0 = time.perf_counter(), time.process_time()
    out = handlers.handle_events(envs, deps)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert all(o.status == "sent" for o in out), out[:1]
    folder = deps.folder(deps.settings.partners[0])
    written = sorted(folder.outbound.iterdir())
    contents = [p.read_bytes() for p in written]
    base = DropFolder(root / "outbase").ensure()
    t0, c0 = time.perf_counter(), time.process_time()
    for i, content in enumerate(contents):
        _write_like(base.outbound, f"doc{i:06d}.x12", content)
    baseline = len(contents) / (time.perf_counter() - t0)
    base_cpu = time.process_time() - c0
    base2 = DropFolder(root / "outbase2").ensure()
    t0 = time.perf_counter()
    _write_batch_like(base2.outbound, [(f"doc{i:06d}.x12", c) for i, c in enumerate(contents)])
    baseline2 = len(contents) / (time.perf_counter() - t0)
    m = len(envs)
    return {"bench": "edi_outbound_856_810_written", "documents": m,
            "docs_per_s": round(m / elapsed), "baseline_docs_per_s": round(baseline),
            "ratio": round(m / elapsed / baseline, 3), "target_docs_per_s": 500,
            "baseline_batch_fsync_docs_per_s": round(baseline2),
            "cpu_ms_per_doc": round(1000 * cpu / m, 3),
            "baseline_cpu_ms_per_doc": round(1000 * base_cpu / len(contents), 3)}


def _deps(root: Path, url: str | None) -> handlers.EdiDeps:
    root.mkdir(parents=True, exist_ok=True)
    engine = create_state_engine(url or f"sqlite:///{root / 'state.db'}")
    upgrade_schema(engine)
    return handlers.EdiDeps(engine, _settings(root / "acme", ["10000"]), ExceptionStore(engine),
                            unit_of=lambda s: "EA", get_order=lambda k: None)


def bench_inbound_sftp(root: Path, n: int, url: str | None) -> dict:
    import asyncio

    import asyncssh

    from tests.support.sftp_server import LoopbackSftp
    from workers.edi import sftp

    files = [_850(i) for i in range(n)]
    srv = LoopbackSftp(root / "sftp-root", root / "keys")
    (root / "sftp-root").mkdir()
    srv.start()
    try:
        # Baseline: a plain client, the same steps per file as the file-drop baseline.
        for sub in ("b-inbound", "b-outbound", "b-processed"):
            (srv.root / sub).mkdir()
        for i, content in enumerate(files):
            _write_like(srv.root / "b-inbound", f"po{i:06d}.edi", content)

        async def plain() -> float:
            async with asyncssh.connect(
                    "127.0.0.1", srv.port, username="distco",
                    client_keys=[str(srv.client_key_path)],
                    known_hosts=str(srv.known_hosts)) as conn, conn.start_sftp_client() as c:
                t0 = time.perf_counter()
                for i, name in enumerate(sorted(await c.listdir("b-inbound"))):
                    if name.startswith("."):
                        continue
                    claim = f"b-inbound/{name}.x.processing"
                    await c.rename(f"b-inbound/{name}", claim)
                    async with c.open(claim, "rb") as fh:
                        data = await fh.read()
                    tmp = f"b-outbound/.ans{i:06d}.x12.tmp"
                    async with c.open(tmp, "wb") as fh:
                        await fh.write(data[:400])
                        await fh.fsync()
                    await c.rename(tmp, f"b-outbound/ans{i:06d}.x12")
                    await c.rename(claim, f"b-processed/{name}")
                return time.perf_counter() - t0

        c0 = time.process_time()
        base_elapsed = asyncio.run(plain())
        base_cpu = time.process_time() - c0

        root_in = root / "in-sftp"
        root_in.mkdir()
        engine = create_state_engine(url or f"sqlite:///{root_in / 'state.db'}")
        upgrade_schema(engine)
        settings = EdiSettings.from_data({"partners": [{
            "id": "ACME", "partner_isa": {"qualifier": "ZZ", "id": "ACMEBUY"},
            "our_isa": {"qualifier": "ZZ", "id": "DISTCO"}, "partner_gs": "ACMEBUY",
            "our_gs": "DISTCO", "customers": ["10000"], "buyer_ids": {"10000": "10000"},
            "transport": "sftp", "sftp": {**srv.settings(), "timeout_s": 30.0}}]})
        deps = handlers.EdiDeps(engine, settings, ExceptionStore(engine),
                                unit_of=lambda s: "EA", get_order=lambda k: None)
        deps.folder(settings.partners[0]).ensure()
        for i, content in enumerate(files):
            _write_like(srv.root / "inbound", f"po{i:06d}.edi", content)
        deps.folder(settings.partners[0]).ready()  # connected before the clock starts
        t0, c0, o0 = time.perf_counter(), time.process_time(), os.times()
        results = handlers.handle_inbound(deps)
        elapsed, cpu, o1 = time.perf_counter() - t0, time.process_time() - c0, os.times()
        assert len(results) == n and all(r.ok for r in results), results[:1]
        assert len(list((srv.root / "outbound").glob("*-997.x12"))) == n
    finally:
        sftp.close_all()
        srv.stop()
    return {"bench": "edi_inbound_850_to_997_and_command_over_sftp", "documents": n,
            "docs_per_s": round(n / elapsed), "baseline_docs_per_s": round(n / base_elapsed),
            "ratio": round(base_elapsed / elapsed, 3), "target_docs_per_s": 500,
            "cpu_ms_per_doc": round(1000 * cpu / n, 3),
            "user_ms_per_doc": round(1000 * (o1.user - o0.user) / n, 3),
            "sys_ms_per_doc": round(1000 * (o1.system - o0.system) / n, 3),
            "baseline_cpu_ms_per_doc": round(1000 * base_cpu / n, 3),
            "note": "server in this process: its CPU is in both figures"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--documents", type=int, default=400)
    ap.add_argument("--state-url", default=None)
    ap.add_argument("--transport", choices=["folder", "sftp"], default="folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="coexist-edi-bench-") as tmp:
        root = Path(tmp)
        if args.transport == "sftp":
            print(json.dumps({**bench_inbound_sftp(root, args.documents, args.state_url),
                              "load_avg": os.getloadavg()[0]}))
            return
        print(json.dumps({**bench_inbound(root, args.documents, args.state_url),
                          "load_avg": os.getloadavg()[0]}))
        print(json.dumps({**bench_outbound(root, args.documents, args.state_url),
                          "load_avg": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()

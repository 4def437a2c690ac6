"""Control numbers on PostgreSQL: four concurrent allocator processes never share a number
and each sees its own numbers increase; a kill -9 between allocation and the file's final
rename leaves neither a gap nor a reuse (``coexist edi flush`` writes the same bytes)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from tests.support.edi import partner_toml
from workers.db import create_state_engine
from workers.edi.store import INTERCHANGE
from workers.migrate import upgrade as upgrade_schema

ROOT = Path(__file__).resolve().parents[2]
PER_WORKER = 40


def _config(tmp_path) -> Path:
    path = tmp_path / "edi.toml"
    path.write_text(partner_toml(tmp_path / "acme"))
    return path


def _worker(*args):
    return subprocess.Popen([sys.executable, "-m", "tests.integration.edi_worker", *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_four_concurrent_allocators_never_share_a_number(pg_url, tmp_path):
    engine = create_state_engine(pg_url)
    upgrade_schema(engine)
    config, barrier = _config(tmp_path), tmp_path / "go"
    procs = [_worker("allocate", pg_url, config, PER_WORKER, barrier) for _ in range(4)]
    barrier.touch()
    seen: dict[str, list[int]] = {"isa": [], "gs": [], "st": []}
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        mine = [tuple(int(x) for x in line.split()) for line in out.splitlines()]
        assert len(mine) == PER_WORKER
        for i, kind in enumerate(("isa", "gs", "st")):
            numbers = [m[i] for m in mine]
            assert numbers == sorted(numbers) and len(set(numbers)) == PER_WORKER
            seen[kind] += numbers
    total = 4 * PER_WORKER
    for kind, numbers in seen.items():
        # Unique across workers and without a gap: every committed number was used once.
        assert sorted(numbers) == list(range(1, total + 1)), kind
    engine.dispose()


def test_a_kill_between_allocation_and_rename_leaves_no_gap_and_no_reuse(pg_url, tmp_path):
    engine = create_state_engine(pg_url)
    upgrade_schema(engine)
    config = _config(tmp_path)
    crashed = _worker("invoice", pg_url, config, "901", "--kill-at-rename")
    crashed.communicate(timeout=60)
    assert crashed.returncode == -9
    outbound = tmp_path / "acme" / "outbound"
    assert not any(p.suffix == ".x12" for p in outbound.iterdir())
    with engine.connect() as conn:
        [row] = conn.execute(select(INTERCHANGE.c.isa13, INTERCHANGE.c.status,
                                    INTERCHANGE.c.file_name, INTERCHANGE.c.content)).all()
    assert (row.isa13, row.status) == (1, "staged")  # fsynced under its stage name
    env = {**os.environ, "COEXIST_STATE_URL": pg_url, "COEXIST_CONFIG": str(config)}
    coexist = str(Path(sys.executable).parent / "coexist")
    flushed = subprocess.run([coexist, "edi", "flush"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=60)
    assert flushed.returncode == 0, flushed.stderr
    assert "1 pending interchange(s) written" in flushed.stdout
    assert (outbound / row.file_name).read_bytes() == bytes(row.content)
    nxt = _worker("invoice", pg_url, config, "902")
    out, err = nxt.communicate(timeout=60)
    assert nxt.returncode == 0 and out.startswith("sent"), err
    with engine.connect() as conn:
        numbers = [r.isa13 for r in conn.execute(select(INTERCHANGE.c.isa13)
                                                 .order_by(INTERCHANGE.c.id))]
    assert numbers == [1, 2]  # the crashed one was sent with its number; the next follows
    names = sorted(p.name for p in outbound.iterdir())
    assert [n for n in names if not n.startswith(".")] == ["ACME-000000001-810.x12",
                                                          "ACME-000000002-810.x12"]
    # The killed writer's temporary file is a dot-name: never read by a partner.
    assert all(n.endswith(".tmp") for n in names if n.startswith("."))
    engine.dispose()


def test_two_flushers_racing_a_partner_that_takes_files_write_each_file_once(pg_url, tmp_path):
    """The chaos run's "reused ISA13": two processes flushed the same committed interchange
    (a worker's batch and its peer's poll), the partner took the first copy in between, and
    the second flusher, seeing no file of that name, wrote it again (mock-edi: TA1 025).
    Here this process pauses right after giving a file its final name, the partner takes
    it, and a second process runs ``flush_pending``: it must not write that file again."""
    from datetime import UTC, datetime

    from bus.exception_store import ExceptionStore
    from coexistence.edi.profiles import EdiSettings
    from workers.edi import control, handlers, transport

    engine = create_state_engine(pg_url)
    upgrade_schema(engine)
    config = _config(tmp_path)
    settings = EdiSettings.from_toml(config.read_text())
    profile = settings.partners[0]
    deps = handlers.EdiDeps(engine, settings, ExceptionStore(engine), unit_of=lambda s: "EA",
                            get_order=lambda k: None)
    body = [["AK1", "PO", "1"], ["AK9", "A", "0", "0", "0"]]
    with engine.begin() as conn:
        out = control.record_outbound(conn, profile, kind="997", at=datetime.now(UTC),
                                      sets=[control.OutSet("997", body)])
    outbound = tmp_path / "acme" / "outbound"
    taken = tmp_path / "partner-took"
    taken.mkdir()
    peer: list[subprocess.Popen] = []
    # The one call that gives a file its final name (main's code: os.link in transport).
    name_of = "_rename_noreplace" if hasattr(transport, "_rename_noreplace") else None
    real = getattr(transport, name_of) if name_of else os.link

    def give_name(src, dst, *a, **kw):
        result = real(src, dst, *a, **kw)
        final = Path(dst)
        if final.name == out.file_name and not peer:
            final.rename(taken / final.name)  # the partner takes it at once
            peer.append(_worker("flush", pg_url, config))
            # The peer either finishes (no lock) or waits for this flusher.
            with contextlib.suppress(subprocess.TimeoutExpired):
                peer[0].wait(timeout=3)
        return result

    if name_of:
        transport._rename_noreplace = give_name
    else:
        transport.os.link = give_name
    try:
        assert handlers.flush_pending(deps) == [out.id]
    finally:
        if name_of:
            transport._rename_noreplace = real
        else:
            transport.os.link = real
    stdout, stderr = peer[0].communicate(timeout=60)
    assert peer[0].returncode == 0, stderr
    assert stdout.strip() == ""  # the peer wrote nothing
    got = sorted(p.name for d in (outbound, taken) for p in d.iterdir()
                 if p.is_file() and not p.name.startswith("."))
    assert got == [out.file_name]
    with engine.connect() as conn:
        assert conn.execute(select(INTERCHANGE.c.status).where(
            INTERCHANGE.c.id == out.id)).scalar_one() == "written"
    engine.dispose()

"""Control numbers on PostgreSQL: four concurrent allocator processes never share a number
and each sees its own numbers increase; a kill -9 between allocation and the file's final
rename leaves neither a gap nor a reuse (``coexist edi flush`` writes the same bytes)."""

from __future__ import annotations

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

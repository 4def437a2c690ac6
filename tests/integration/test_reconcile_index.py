"""Reconciliation from the digest indexes (issue 12 item 4): the cold run builds them, a
warm run finds exactly what a full stream finds while reading only suspects and a sample
live, through the cloud's ordinary read API; capture's incremental update keeps the bucket
sums equal to a rebuild's; a write that bypasses capture is seen by --deep and by the sample."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import insert, text

from coexistence.ports import COEXIST_WRITER, Change
from coexistence.sample import iter_customers
from coexistence.translate.legacy import LEGACY_TRANSLATORS
from tests.integration.test_reconcile import legacy_engine, seeded, write_cloud, write_legacy
from tests.integration.test_reconcile_cli import env, run
from tests.support import cloud_sim
from workers.db import create_state_engine
from workers.reconcile import index
from workers.reconcile.store import RunStore
from workers.xref_sql import SqlXref

simulator, sim = cloud_sim.simulator, cloud_sim.sim
__all__ = ["env", "legacy_engine"]  # fixtures used here


def _findings(result) -> tuple[set[tuple], dict]:
    assert result.stdout.startswith("{"), result.output
    body = json.loads(result.stdout)
    return {(f["kind"], f["key"], f.get("field"), f.get("side"), f.get("cloud_key"))
            for f in body["findings"]}, body["runs"][0]


def test_cold_then_warm_runs_find_what_a_full_stream_finds_without_checksum_endpoints(env):
    legacy, cloud, links, _ = seeded(120)
    write_legacy(env["legacy"], legacy)
    write_cloud(env["cloud"], cloud)
    state = create_state_engine(env["state_url"])
    xref = SqlXref(state)
    for key, cloud_id in links:
        xref.link("customer", key, cloud_id=cloud_id)
    full, full_run = _findings(run("customer", "--format", "json", "--mode", "full"))
    assert not index.built(state, "customer")
    cold, cold_run = _findings(run("customer", "--format", "json"))
    assert cold_run["mode"] == "full+index" and index.built(state, "customer")
    assert cold == full
    warm, warm_run = _findings(run("customer", "--format", "json", "--sample", "5"))
    assert warm_run["mode"] == "index"
    assert warm == full
    for name in ("rows_legacy", "rows_cloud", "exclusive_legacy", "exclusive_cloud",
                 "mismatched", "unchanged", "duplicates", "orphans", "key_mismatches",
                 "drift_pct"):
        assert warm_run[name] == full_run[name], name
    # Only suspects and the sample were read from the cloud, one record at a time.
    assert warm_run["cloud_records_fetched"] < len(cloud) // 2
    assert RunStore(state).last("customer")["mode"] == "index"


def test_the_warm_path_uses_only_the_cloud_s_ordinary_read_api(env, monkeypatch):
    records = list(iter_customers(30, seed=4))
    write_legacy(env["legacy"], records)
    write_cloud(env["cloud"], records[:-1])
    assert run("customer", "--format", "json").exit_code == 1  # cold
    paths: list[str] = []
    import httpx

    real = httpx.Client.send

    def send(self, request, **kwargs):
        paths.append(request.url.path)
        return real(self, request, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", send)
    _, warm = _findings(run("customer", "--format", "json", "--sample", "3"))
    assert warm["mode"] == "index" and warm["exclusive_legacy"] == 1
    assert paths and not any(p.startswith(("/reconcile", "/export")) for p in paths), paths


def test_a_write_that_bypasses_capture_is_seen_by_the_sample_and_by_deep(env):
    records = list(iter_customers(40, seed=6))
    write_legacy(env["legacy"], records)
    write_cloud(env["cloud"], records)
    assert run("customer", "--format", "json").exit_code == 0  # cold: equal
    t = LEGACY_TRANSLATORS["customer"]
    with env["legacy"].begin() as conn:  # behind capture's back
        conn.execute(text('UPDATE "CUSTMAST" SET "CRLIMIT" = "CRLIMIT" + 100 '
                          'WHERE "CUSTNO" = :k'), {"k": t.legacy_key(records[5].key)})
    # Without a sample the index cannot know (what the docs say this mode cannot see)...
    blind, blind_run = _findings(run("customer", "--format", "json", "--sample", "0"))
    assert blind == set() and blind_run["mode"] == "index"
    # ...a sample that covers the record sees it, and so does --deep.
    seen, _ = _findings(run("customer", "--format", "json", "--sample", "1000"))
    assert ("mismatch", records[5].key, "credit_limit", None, None) in seen
    deep, deep_run = _findings(run("customer", "--format", "json", "--deep", "--sample", "0"))
    assert deep_run["mode"] == "full+index" and ("mismatch", records[5].key, "credit_limit",
                                                 None, None) in deep
    # A record inserted behind capture's back: the legacy count tells.
    extra = next(iter_customers(501, seed=7, start=500))
    with env["legacy"].begin() as conn:
        head, sites = t.from_canonical(extra)
        conn.execute(insert(t.TABLE.__table__), [head])
        conn.execute(insert(t.CHILD_TABLE.__table__), sites)
    body = json.loads(run("customer", "--format", "json", "--sample", "0").stdout)
    assert any("writes bypassed capture" in t for t in body["runs"][0]["tolerances"])


def _change(cursor, key, op="upsert", writer="JSMITH"):
    return Change(cursor=cursor, domain="customer", key=key, op=op, writer=writer,
                  at=datetime.now(UTC), version=cursor)


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request, tmp_path):
    from tests.support.state import upgraded_state

    url = (f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    engine = create_state_engine(upgraded_state(url))
    yield engine
    engine.dispose()


def _figures(engine):
    with engine.connect() as conn:
        return (index.buckets(conn, "customer", "legacy"),
                dict(conn.execute(text("SELECT key, digest FROM reconcile_index "
                                       "WHERE side = 'legacy'")).all()))


def test_capture_s_incremental_update_keeps_the_buckets_equal_to_a_rebuild(state):
    rng = random.Random(3)
    base = list(iter_customers(300, seed=8))
    rebuild = index.Rebuild(state, "customer", "legacy")
    for r in base:
        rebuild.add(r.key, *index.digest_of(r))
    rebuild.finish()
    now = {r.key: r for r in base}
    pool = list(iter_customers(1100, seed=9, start=1000))
    cursor = 0
    for _ in range(20):  # batches of changes, as capture routes them
        changes, records = [], {}
        for _ in range(15):
            cursor += 1
            pick = rng.random()
            if pick < 0.3 and now:
                key = rng.choice(sorted(now))
                del now[key]
                changes.append(_change(cursor, key, "delete"))
            elif pick < 0.6 and pool:
                r = pool.pop()
                now[r.key] = r
                changes.append(_change(cursor, r.key))
                records[("customer", r.key)] = r
            else:
                key = rng.choice(sorted(now))
                r = now[key].model_copy(update={"credit_limit": Decimal(rng.randint(0, 9999))})
                now[key] = r
                changes.append(_change(cursor, key))
                records[("customer", key)] = r
        with state.begin() as conn:
            index.update(conn, "legacy", changes, records)
    incremental = _figures(state)
    fresh = index.Rebuild(state, "customer", "legacy")
    for r in now.values():
        fresh.add(r.key, *index.digest_of(r))
    fresh.finish()
    assert incremental == _figures(state)
    # coexist's own write (an echo capture does not read back): the digest is unknown.
    with state.begin() as conn:
        index.update(conn, "legacy", [_change(cursor + 1, base[0].key, writer=COEXIST_WRITER)],
                     {})
    key = next(iter(now))
    with state.begin() as conn:
        index.update(conn, "legacy", [_change(cursor + 2, key, writer=COEXIST_WRITER)], {})
    buckets, digests = _figures(state)
    assert digests[key] is None and buckets[index.bucket_of(key)][2] == 1


def test_the_router_s_capture_keeps_the_index_current_so_a_warm_run_sees_a_change(env):
    from coexistence.flags import FlagSource
    from workers.legacy_erp.adapter import LegacyErp
    from workers.router.capture import CaptureLoop

    records = list(iter_customers(30, seed=12))
    write_legacy(env["legacy"], records)
    write_cloud(env["cloud"], records)
    assert run("customer", "--format", "json").exit_code == 0  # cold: equal, index built
    t = LEGACY_TRANSLATORS["customer"]
    with env["legacy"].begin() as conn:  # a user's change: the change log has it
        conn.execute(text('UPDATE "CUSTMAST" SET "CRLIMIT" = "CRLIMIT" + 100, '
                          '"LCHGUSER" = \'JSMITH\' WHERE "CUSTNO" = :k'),
                     {"k": t.legacy_key(records[3].key)})
    # Before capture has routed it, a run without a sample cannot know...
    assert _findings(run("customer", "--format", "json", "--sample", "0"))[0] == set()
    state = create_state_engine(env["state_url"])
    legacy = LegacyErp(env["legacy"])
    CaptureLoop("legacy", legacy.feed, {"legacy": legacy, "cloud": env["cloud"]},
                FlagSource(), state).drain()
    # ...after it, the legacy index holds the new digest and the warm run finds it.
    found, body = _findings(run("customer", "--format", "json", "--sample", "0"))
    assert found == {("mismatch", records[3].key, "credit_limit", None, None)}
    assert body["mode"] == "index" and body["cloud_records_fetched"] == 1


def test_warm_equals_full_on_either_state_database(state, sim, tmp_path):
    from tests.integration.test_reconcile import as_tuple
    from workers.cloud_erp import CloudErp
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
    from workers.reconcile.by_index import reconcile_by_index
    from workers.reconcile.cloud import CloudReader
    from workers.reconcile.legacy import LegacyReader
    from workers.reconcile.runner import reconcile_domain

    engine = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(engine)
    legacy, cloud, links, expected = seeded(80)
    write_legacy(engine, legacy)
    erp = CloudErp(sim.url, timeout_s=5)
    try:
        write_cloud(erp, cloud)
        xref = SqlXref(state)
        for key, cloud_id in links:
            xref.link("customer", key, cloud_id=cloud_id)
        readers = LegacyReader(LegacyErp(engine)), CloudReader(erp)
        cold: list = []
        reconcile_domain("customer", *readers, xref=xref.entries("customer"), mode="full",
                         on_finding=cold.append, rebuild_index=state)
        warm: list = []
        report, stats = reconcile_by_index("customer", *readers, state, on_finding=warm.append,
                                           sample=0)
    finally:
        erp.close()
        engine.dispose()
    assert {as_tuple(f) for f in cold} == expected == {as_tuple(f) for f in warm}
    assert stats.sampled == 0 and 0 < stats.suspects < 20
    assert report.counts.rows_legacy == len(legacy) and report.counts.rows_cloud == len(cloud)


class _NoBatch(httpx.BaseTransport):
    """A cloud that refuses ``$batch`` (404), in front of the real simulator."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.paths: list[str] = []

    def handle_request(self, request):
        self.paths.append(request.url.path)
        if request.url.path == "/$batch":
            return httpx.Response(404, json={"error": {"code": "NotFound"}})
        return self.inner.handle_request(request)


def test_a_cloud_without_batch_is_read_one_get_per_record(state, sim, tmp_path):
    from workers.cloud_erp import CloudErp
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
    from workers.reconcile.by_index import reconcile_by_index
    from workers.reconcile.cloud import CloudReader
    from workers.reconcile.legacy import LegacyReader
    from workers.reconcile.runner import reconcile_domain

    engine = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(engine)
    records = list(iter_customers(20, seed=13))
    write_legacy(engine, records)
    transport = _NoBatch()
    erp = CloudErp(sim.url, timeout_s=5, transport=transport)
    try:
        write_cloud(CloudErp(sim.url), [records[0].model_copy(update={"region": "ELSEWHERE"}),
                                        *records[1:-1]])
        readers = LegacyReader(LegacyErp(engine)), CloudReader(erp)
        reconcile_domain("customer", *readers, mode="full", rebuild_index=state)
        transport.paths.clear()
        found: list = []
        report, stats = reconcile_by_index("customer", *readers, state, on_finding=found.append,
                                           sample=0)
    finally:
        erp.close()
        engine.dispose()
    assert sorted((str(f.kind), f.key) for f in found) == [
        ("mismatch", records[0].key), ("missing_in_cloud", records[-1].key)]
    assert transport.paths.count("/$batch") == 1  # asked once, then one GET per record
    assert sum(p.startswith("/customers(") for p in transport.paths) == 2


def _index_ddl(engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                                    "AND tbl_name = 'reconcile_index' AND sql IS NOT NULL "
                                    "ORDER BY name").all()


def _traced_rebuild(engine, rebuilds) -> list[str]:
    """``finish_all`` with the statements SQLite ran, in order."""
    seen: list[str] = []

    def trace(dbapi_conn, _record):
        dbapi_conn.set_trace_callback(seen.append)

    engine.dispose()  # new connections get the trace
    from sqlalchemy import event

    event.listen(engine, "connect", trace)
    try:
        index.finish_all(rebuilds)
    finally:
        event.remove(engine, "connect", trace)
        engine.dispose()
    return seen


def test_a_rebuild_of_both_sides_on_sqlite_inserts_with_the_secondary_indexes_dropped(tmp_path):
    """A cold run's rebuild writes both sides in one transaction with the table's secondary
    indexes dropped (CREATE INDEX sorts; inserting into them scatters writes) and creates
    them again from their own DDL; a small rebuild beside a large index keeps them."""
    from tests.support.state import upgraded_state

    state = create_state_engine(upgraded_state(f"sqlite:///{tmp_path / 'state.db'}"))
    before = _index_ddl(state)
    assert len(before) >= 3
    records = list(iter_customers(300, seed=4))
    rebuilds = []
    for side in index.SIDES:
        rb = index.Rebuild(state, "customer", side)
        for r in records:
            rb.add(r.key, *index.digest_of(r))
        rebuilds.append(rb)
    seen = _traced_rebuild(state, rebuilds)
    first_insert = next(i for i, s in enumerate(seen)
                        if s.startswith('INSERT INTO "reconcile_index"'))
    drops = [i for i, s in enumerate(seen) if s.startswith("DROP INDEX")]
    creates = [i for i, s in enumerate(seen) if s.startswith("CREATE INDEX")]
    assert len(drops) == len(before) == len(creates)
    assert max(drops) < first_insert < min(creates)
    assert sum(s == "COMMIT" for s in seen) == 1  # both sides in one transaction
    assert _index_ddl(state) == before
    with state.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        for side in index.SIDES:
            assert sum(c for c, _, _ in index.buckets(conn, "customer", side).values()) == 300
        assert index.duplicate_groups(conn, "customer", "legacy") == []
    # Ten records rebuilt beside the other side's 300: the indexes stay.
    small = index.Rebuild(state, "customer", "legacy")
    for r in records[:10]:
        small.add(r.key, *index.digest_of(r))
    seen = _traced_rebuild(state, [small])
    assert not any(s.startswith(("DROP INDEX", "CREATE INDEX")) for s in seen)
    assert _index_ddl(state) == before


def test_a_warm_run_verifies_its_suspects_a_chunk_at_a_time(state, sim, tmp_path, monkeypatch):
    """The live reads of both sides go chunk by chunk (legacy, cloud, legacy, ...), so a
    run holds one chunk's records, not every suspect's (1 % drift of 1M: ~20,000), and
    finds what a full stream finds."""
    from tests.integration.test_reconcile import as_tuple
    from workers.cloud_erp import CloudErp
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
    from workers.reconcile import by_index
    from workers.reconcile.cloud import CloudReader
    from workers.reconcile.legacy import LegacyReader
    from workers.reconcile.runner import reconcile_domain

    monkeypatch.setattr(by_index, "VERIFY_CHUNK", 7)
    engine = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(engine)
    legacy, cloud, links, expected = seeded(80)
    write_legacy(engine, legacy)
    erp = CloudErp(sim.url, timeout_s=5)
    reads: list[tuple[str, int]] = []
    try:
        write_cloud(erp, cloud)
        xref = SqlXref(state)
        for key, cloud_id in links:
            xref.link("customer", key, cloud_id=cloud_id)
        legacy_reader, cloud_reader = LegacyReader(LegacyErp(engine)), CloudReader(erp)
        reconcile_domain("customer", legacy_reader, cloud_reader, mode="full",
                         xref=xref.entries("customer"), rebuild_index=state)
        legacy_items_of, items_of = legacy_reader.items_of, cloud_reader.items_of
        monkeypatch.setattr(legacy_reader, "items_of", lambda domain, keys: (
            reads.append(("legacy", len(keys))), legacy_items_of(domain, keys))[1])
        monkeypatch.setattr(cloud_reader, "items_of", lambda domain, keys: (
            reads.append(("cloud", len(keys))), items_of(domain, keys))[1])
        warm: list = []
        report, stats = by_index.reconcile_by_index(
            "customer", legacy_reader, cloud_reader, state, on_finding=warm.append, sample=10)
    finally:
        erp.close()
        engine.dispose()
    assert {as_tuple(f) for f in warm} == expected
    checked = stats.suspects + stats.sampled
    assert checked > 3 * 7 and all(n <= 7 for _, n in reads)
    assert [side for side, _ in reads] == ["legacy", "cloud"] * -(-checked // 7)
    assert sum(n for _, n in reads) == 2 * checked


def test_duplicate_groups_come_from_a_group_by_not_a_window_over_the_side(state):
    """One GROUP BY pass for the repeated natural-key hashes, then their keys (a window
    count over each side cost ~16 s CPU at 1M records a side on SQLite)."""
    from sqlalchemy import event

    records = list(iter_customers(200, seed=21))
    rebuild = index.Rebuild(state, "customer", "cloud")
    for i, r in enumerate(records):
        digest, nk = index.digest_of(r)
        rebuild.add(r.key, digest, 7 if i in (3, 50, 199) else 8 if i in (10, 11) else nk)
    rebuild.finish()
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(state, "before_cursor_execute", seen)
    try:
        with state.connect() as conn:
            groups = index.duplicate_groups(conn, "customer", "cloud")
    finally:
        event.remove(state, "before_cursor_execute", seen)
    assert groups == sorted([sorted(records[i].key for i in (3, 50, 199)),
                             sorted([records[10].key, records[11].key])])
    assert statements and not any(" OVER " in s.upper() for s in statements)


def test_a_warm_run_reads_legacy_suspects_as_rows_digested_like_the_cold_reader(
        legacy_engine, monkeypatch):
    """The live verification's legacy items (``LegacyReader.items_of``) carry the digests
    and natural keys the cold run's reader (``items``) gives the same rows, and their
    records (translated only when loaded) are what ``LegacyErp.get`` reads, normalised;
    a key the legacy ERP cannot hold is an item carrying the error, an absent key none."""
    from coexistence.reconcile.tolerances import normalise
    from workers.legacy_erp.adapter import LegacyErp
    from workers.reconcile.legacy import LegacyReader

    records = list(iter_customers(60, seed=8))
    # A name typed by hand in mixed case (within the case tolerance once normalised).
    write_legacy(legacy_engine, records)
    with legacy_engine.begin() as conn:
        conn.execute(text("UPDATE \"CUSTMAST\" SET \"CUSTNAME\" = 'Hand Typed Name' "
                          "WHERE \"CUSTNO\" = :k"), {"k": records[6].key.zfill(10)})
    reader = LegacyReader(LegacyErp(legacy_engine))
    cold = {i.key: (i.digest, i.nk) for i in reader.items("customer")}
    translated: list[str] = []
    real = reader.erp._domain("customer").t.to_canonical
    keys = [r.key for r in records[::3]] + ["999999999", "A1"]
    monkeypatch.setattr(reader.erp._domain("customer").t, "to_canonical",
                        lambda h, c=(): (translated.append(h["CUSTNO"]), real(h, c))[1])
    items = reader.items_of("customer", keys)
    assert not translated  # digests without translating
    assert set(items) == {r.key for r in records[::3]} | {"A1"}
    assert items["A1"].error and items["A1"].digest == 0
    for key, item in items.items():
        if key == "A1":
            continue
        assert (item.digest, item.nk) == cold[key]
        assert item.record == normalise(reader.erp.get("customer", key))


def test_a_rebuild_inserts_in_primary_key_order(tmp_path):
    """Both sides of a cold run's rebuild go in in the table's key order (domain, side,
    key): the cloud side first, each sorted by key, so SQLite appends to the key's B-tree."""
    from tests.support.state import upgraded_state

    state = create_state_engine(upgraded_state(f"sqlite:///{tmp_path / 'state.db'}"))
    records = sorted(iter_customers(200, seed=6), key=lambda r: r.key)
    rebuilds = []
    for side in index.SIDES:  # legacy first, as a cold run makes them
        rb = index.Rebuild(state, "customer", side)
        for r in records:
            rb.add(r.key, *index.digest_of(r))
        rebuilds.append(rb)
    index.finish_all(rebuilds)
    with state.connect() as conn:
        by_rowid = conn.exec_driver_sql(
            'SELECT "domain", "side", "key" FROM "reconcile_index" ORDER BY rowid').all()
    assert len(by_rowid) == 400 and [tuple(r) for r in by_rowid] == sorted(map(tuple, by_rowid))

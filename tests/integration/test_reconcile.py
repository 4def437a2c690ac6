"""Reconciliation finds exactly the seeded discrepancies: SQLite and PostgreSQL legacy
databases against the real simulator, in full-stream and checksum (bisection) modes."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from coexistence.reconcile.findings import Finding, Kind
from coexistence.sample import iter_customers
from coexistence.translate.legacy import LEGACY_TRANSLATORS
from tests.support import cloud_sim
from workers.cloud_erp import CloudErp
from workers.db import create_state_engine
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.migrate import upgrade as upgrade_schema
from workers.reconcile.cloud import CloudReader
from workers.reconcile.legacy import LegacyReader
from workers.reconcile.runner import Tuning, reconcile_domain
from workers.xref_sql import SqlXref

simulator, sim = cloud_sim.simulator, cloud_sim.sim

N_CUSTOMERS = 200


def write_legacy(engine, records) -> None:
    t = LEGACY_TRANSLATORS["customer"]
    heads, sites = [], []
    for r in records:
        h, c = t.from_canonical(r, changed_by="JSMITH")
        heads.append(h)
        sites += c
    with engine.begin() as conn:
        conn.execute(insert(t.TABLE.__table__), heads)
        if sites:
            conn.execute(insert(t.CHILD_TABLE.__table__), sites)


def write_cloud(erp: CloudErp, records) -> None:
    records = list(records)
    for start in range(0, len(records), 200):
        results = erp.upsert_many([(r, 1, f"seed-{r.key}")
                                   for r in records[start:start + 200]])
        assert all(type(x).__name__ == "Applied" for x in results), results


def seeded(n: int = N_CUSTOMERS):
    """Equal data on both sides plus one discrepancy of every kind; returns
    (legacy records, cloud records, xref links, the expected findings as tuples)."""
    base = list(iter_customers(n, seed=11))
    legacy, cloud = list(base), list(base)
    expected = set()

    # Missing in cloud (it has an xref: still missing, never paired by natural key).
    gone_cloud = base[3]
    cloud.remove(gone_cloud)
    expected.add(("missing_in_cloud", gone_cloud.key, None))
    # Missing in legacy.
    gone_legacy = base[7]
    legacy.remove(gone_legacy)
    expected.add(("missing_in_legacy", gone_legacy.key, None))
    # Field mismatches: an ERP-owned and a CRM-owned field.
    i = cloud.index(base[20])
    cloud[i] = base[20].model_copy(update={"credit_limit": base[20].credit_limit + 100,
                                           "contact_phone": "555-0100"})
    expected.add(("mismatch", base[20].key, "credit_limit"))
    expected.add(("mismatch", base[20].key, "contact_phone"))
    # A site's city differs.
    i = cloud.index(base[31])
    site = base[31].sites[0]
    cloud[i] = base[31].model_copy(update={"sites": (
        site.model_copy(update={"city": "ELSEWHERE"}), *base[31].sites[1:])})
    expected.add(("mismatch", base[31].key, f"sites[{site.site_id}].city"))
    # Within tolerance: lower case and longer than the legacy column: no finding.
    i = cloud.index(base[40])
    cloud[i] = base[40].model_copy(update={"name": base[40].name.lower() + " and sons ltd"
                                           + " x" * 20})
    legacy[legacy.index(base[40])] = base[40].model_copy(update={
        "name": (base[40].name.lower() + " and sons ltd" + " x" * 20)})
    # Duplicates: one customer entered twice under two numbers, on both sides.
    twin = base[50].model_copy(update={"key": "90050"})
    legacy.append(twin)
    cloud.append(twin)
    pair = tuple(sorted([base[50].key, twin.key]))
    expected.add(("duplicate", pair[0], "legacy"))
    expected.add(("duplicate", pair[0], "cloud"))
    # Key mismatch: one customer under different numbers, no xref.
    legacy.append(base[60].model_copy(update={"key": "91060"}))
    cloud.append(base[60].model_copy(update={"key": "92060",
                                             "credit_hold": not base[60].credit_hold}))
    # ...but base[60] itself is on both sides too, so it would be a duplicate: drop it.
    legacy.remove(base[60])
    cloud.remove(base[60])
    expected.add(("key_mismatch", "91060", "92060"))
    links = [(gone_cloud.key, "c-" + gone_cloud.key), ("99999", "c-99999")]
    expected.add(("orphan_xref", "99999", None))
    return legacy, cloud, links, expected


def as_tuple(f: Finding):
    if f.kind == Kind.DUPLICATE:
        return (str(f.kind), f.key, f.side)
    if f.kind == Kind.KEY_MISMATCH:
        return (str(f.kind), f.key, f.cloud_key)
    return (str(f.kind), f.key, f.field)


@pytest.fixture
def state(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def legacy_engine(request, tmp_path):
    if request.param == "sqlite":
        engine = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    else:
        engine = create_legacy_engine(request.getfixturevalue("pg_url"))
    create_legacy_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def cloud_erp(sim):
    erp = CloudErp(sim.url, timeout_s=5)
    yield erp
    erp.close()


MODES = {
    "full": ("full", None),
    # Small segments so that bisection, fetches of ranges and equal pieces all happen.
    "checksum": ("checksum", Tuning(segment_records=16, bisect_parts=4, bisect_min_records=2,
                                    fallback_share=1.0, window_segments=3)),
    "fallback": ("checksum", Tuning(segment_records=8, fallback_share=0.0,
                                    fallback_min_segments=2, window_segments=1)),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_reconciliation_finds_exactly_the_seeded_discrepancies(legacy_engine, cloud_erp, state,
                                                               mode):
    legacy, cloud, links, expected = seeded()
    write_legacy(legacy_engine, legacy)
    write_cloud(cloud_erp, cloud)
    xref = SqlXref(state)
    for key, cloud_id in links:
        xref.link("customer", key, cloud_id=cloud_id)
    found: list[Finding] = []
    run_mode, tuning = MODES[mode]
    report = reconcile_domain("customer", LegacyReader(LegacyErp(legacy_engine)),
                              CloudReader(cloud_erp), xref=xref.entries("customer"), mode=run_mode,
                              on_finding=found.append, tuning=tuning)

    assert {as_tuple(f) for f in found} == expected
    assert len(found) == len(expected)  # nothing reported twice
    c = report.counts
    assert (c.rows_legacy, c.rows_cloud) == (len(legacy), len(cloud))
    assert (c.exclusive_legacy, c.exclusive_cloud, c.mismatched, c.duplicates, c.orphans) == (
        1, 1, 3, 2, 1)
    assert c.unchanged == len(legacy) - 1 - 3  # all but the missing one and the mismatched
    assert report.mode == run_mode
    if mode == "checksum":
        assert report.cloud_records_fetched < len(cloud) // 2
        assert report.segments_differing > 0
    if mode == "fallback":
        assert report.fell_back
    mismatch = {f.field: f for f in found if f.kind == Kind.MISMATCH}
    assert mismatch["credit_limit"].owner == "erp"
    assert mismatch["contact_phone"].owner == "crm"
    assert mismatch["contact_phone"].cloud == "555-0100"


def test_a_range_the_cloud_lacks_is_compared_as_it_streams_and_nothing_is_missed(sim, cloud_erp,
                                                                               tmp_path):
    engine = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(engine)
    records = list(iter_customers(120, seed=4))
    write_legacy(engine, records)
    write_cloud(cloud_erp, records[:10])  # the cloud has the first ten only
    found: list[Finding] = []
    report = reconcile_domain(
        "customer", LegacyReader(LegacyErp(engine)), CloudReader(cloud_erp), mode="checksum",
        on_finding=found.append,
        tuning=Tuning(segment_records=4, overflow_slack=3, fallback_share=1.0))
    missing = sorted(f.key for f in found if f.kind == Kind.MISSING_IN_CLOUD)
    assert missing == sorted(r.key for r in records[10:])
    assert report.counts.unchanged == 10 and report.counts.exclusive_legacy == 110
    assert report.segments == 3 and report.segments_differing == 1  # the last, overflowing
    engine.dispose()

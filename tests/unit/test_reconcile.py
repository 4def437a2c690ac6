"""Reconciliation logic without I/O: merge, findings, drift, duplicates, orphans,
natural-key pairing, bisection over fake checksum callables, repair planning."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coexistence.canonical.models import PaymentTerms
from coexistence.flags import FULL, FlagSource, FlagState, Mode
from coexistence.reconcile.digest import natural_key, natural_key_hash, record_digest
from coexistence.reconcile.engine import (
    DuplicateTracker,
    Item,
    Reconciler,
    UnsortedStream,
    merge,
)
from coexistence.reconcile.findings import Counts, Finding, Kind
from coexistence.reconcile.segments import Segment, bisect_window, checksum, partition, same
from coexistence.reconcile.tolerances import normalise, tolerances_for
from coexistence.sample import iter_customers
from coexistence.xref import XrefEntry
from workers.reconcile.repair import plan_repairs


def item(record, *, legacy: bool = False) -> Item:
    r = record if legacy else normalise(record)
    return Item(r.key, record_digest(r, normalised=True), natural_key_hash(natural_key(r)),
                record=r)


def items(records, **kw) -> list[Item]:
    return sorted((item(r, **kw) for r in records), key=lambda i: i.key)


def run(legacy, cloud, xref=()) -> tuple[Counts, list[Finding]]:
    found: list[Finding] = []
    rec = Reconciler("customer", xref=xref, on_finding=found.append)
    left, right = items(legacy, legacy=True), items(cloud)
    for i in left:
        rec.observe("legacy", i)
    for i in right:
        rec.observe("cloud", i)
    for pair in merge(left, right):
        rec.pair(*pair)
    return rec.finish(), found


BASE = [normalise(c) for c in iter_customers(30, seed=3)]


def test_equal_sides_have_no_findings_and_no_drift():
    counts, found = run(BASE, BASE)
    assert found == []
    assert counts.unchanged == 30 and counts.drift_pct == 0.0


def test_the_legacy_normalisation_is_a_named_tolerance_not_drift():
    loud = BASE[0].model_copy(update={"name": BASE[0].name.lower() + " and brothers limited x"})
    counts, found = run([normalise(loud), *BASE[1:]], [loud, *BASE[1:]])
    assert found == [] and counts.unchanged == 30
    assert "legacy normalisation: text upper-cased" in tolerances_for("customer")
    assert "legacy normalisation: text truncated to the column width" in tolerances_for("customer")


def test_each_kind_of_discrepancy_is_found_exactly_once():
    legacy, cloud = list(BASE), list(BASE)
    cloud.remove(BASE[1])
    legacy.remove(BASE[2])
    cloud[cloud.index(BASE[3])] = BASE[3].model_copy(update={"terms": PaymentTerms.NET90,
                                                             "contact_name": "SOMEONE ELSE"})
    twin = BASE[4].model_copy(update={"key": "80004"})
    legacy.append(twin)
    counts, found = run(legacy, cloud, xref=[XrefEntry("customer", "00000", None, "gone")])
    got = sorted((str(f.kind), f.key, f.field or f.side or "") for f in found)
    want = sorted([
        ("missing_in_cloud", BASE[1].key, ""),
        ("missing_in_legacy", BASE[2].key, ""),
        ("mismatch", BASE[3].key, "contact_name"),
        ("mismatch", BASE[3].key, "terms"),
        ("duplicate", min(BASE[4].key, "80004"), "legacy"),
        ("missing_in_cloud", "80004", ""),
        ("orphan_xref", "00000", ""),
    ])
    assert got == want
    owners = {f.field: f.owner for f in found if f.kind == Kind.MISMATCH}
    assert owners == {"terms": "erp", "contact_name": "crm"}
    assert (counts.exclusive_legacy, counts.exclusive_cloud, counts.mismatched,
            counts.duplicates, counts.orphans) == (2, 1, 1, 1, 1)
    # 6 records differ out of the larger side's 30.
    assert counts.drift_pct == pytest.approx(100 * 6 / 30)


def test_one_record_under_two_numbers_without_xref_is_a_key_mismatch_not_two_missing():
    legacy = [*BASE[1:], BASE[0].model_copy(update={"key": "70000"})]
    cloud = [*BASE[1:], BASE[0].model_copy(update={"key": "71000", "credit_hold": True,
                                                   "region": "ELSEWHERE"})]
    counts, found = run(legacy, cloud)
    assert [(f.kind, f.key, f.cloud_key) for f in found] == [(Kind.KEY_MISMATCH, "70000", "71000")]
    assert "credit_hold" in found[0].detail and "region" in found[0].detail
    assert (counts.key_mismatches, counts.exclusive_legacy, counts.exclusive_cloud) == (1, 0, 0)


def test_with_an_xref_the_two_numbers_stay_missing_on_each_side():
    legacy = [*BASE[1:], BASE[0].model_copy(update={"key": "70000"})]
    cloud = [*BASE[1:], BASE[0].model_copy(update={"key": "71000"})]
    _, found = run(legacy, cloud, xref=[XrefEntry("customer", "70000", "0000070000", None)])
    assert sorted((f.kind, f.key) for f in found) == [
        (Kind.MISSING_IN_CLOUD, "70000"), (Kind.MISSING_IN_LEGACY, "71000")]


def test_a_site_difference_names_the_site_and_the_field():
    site = BASE[5].sites[-1]
    changed = BASE[5].model_copy(update={"sites": (*BASE[5].sites[:-1],
                                                   site.model_copy(update={"postal_code": "1"}))})
    legacy, cloud = list(BASE), list(BASE)
    cloud[5] = changed
    _, found = run(legacy, cloud)
    assert [(f.field, f.cloud) for f in found] == [(f"sites[{site.site_id}].postal_code", "1")]


def test_merge_refuses_an_unsorted_stream():
    a = [Item("2", 1), Item("1", 1)]
    with pytest.raises(UnsortedStream, match="legacy stream not sorted"):
        list(merge(a, []))


def test_duplicate_tracker_groups_keys_by_natural_key():
    t = DuplicateTracker()
    for nk, key in [(5, "a"), (7, "b"), (5, "c"), (-3, "d"), (7, "e"), (5, "f")]:
        t.add(nk, key)
    assert t.groups() == [["a", "c", "f"], ["b", "e"]]


# --------------------------------------------------------------------------- bisection


def fake_remote(remote_items: list[Item], calls: list):
    def split_many(ranges, parts):
        calls.append(ranges)
        return [split(lo, hi, parts) for lo, hi in ranges]

    def split(lo, hi, parts):
        inside = [i for i in remote_items if i.key >= lo and (hi is None or i.key < hi)]
        step = max(1, -(-len(inside) // parts))
        out = []
        for s in range(0, max(len(inside), 1), step):
            chunk = inside[s:s + step]
            bound = lo if s == 0 else chunk[0].key
            out.append((bound, *checksum(chunk)))
        return [Segment(b, out[n + 1][0] if n + 1 < len(out) else hi, c, t)
                for n, (b, c, t) in enumerate(out)]
    return split_many


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=400), st.integers(min_value=0, max_value=2**31),
       st.integers(min_value=0, max_value=12))
def test_bisection_plus_range_compare_finds_exactly_the_differences(n, seed, n_diff):
    rnd = random.Random(seed)
    keys = sorted({f"{rnd.randrange(10**6):06d}" for _ in range(n)})
    local = [Item(k, rnd.getrandbits(63)) for k in keys]
    remote = [Item(i.key, i.digest) for i in local]
    for _ in range(n_diff):
        roll = rnd.random()
        if remote and roll < 0.4:
            j = rnd.randrange(len(remote))
            # A changed record gets an unrelated digest, as a real hash gives.
            remote[j] = Item(remote[j].key, rnd.getrandbits(63))
        elif remote and roll < 0.7:
            remote.pop(rnd.randrange(len(remote)))
        else:
            k = f"{rnd.randrange(10**6):06d}x"
            if all(i.key != k for i in remote):
                remote.append(Item(k, 1))
                remote.sort(key=lambda i: i.key)
    changed = {k for k, _ in {(i.key, i.digest) for i in local}
               ^ {(i.key, i.digest) for i in remote}}
    calls: list = []
    split_many = fake_remote(remote, calls)
    # The remote side's top-level segments, as the simulator chooses them.
    top = split_many([("", None)], max(1, len(remote) // 20))[0]
    calls.clear()
    window = list(zip(top, partition(local, top), strict=True))
    seen, differing = [], set()
    for sub, sub_items, differs in bisect_window(window, split_many, parts=4, min_records=3):
        seen.extend(i.key for i in sub_items)
        if differs:
            for a, b in merge(sub_items, [i for i in remote if sub.holds(i.key)]):
                if a is None or b is None or a.digest != b.digest:
                    differing.add((a or b).key)
        else:
            assert same(sub, sub_items)
    assert differing == changed
    assert seen == keys  # every local record lands in exactly one range, in order
    if not changed:
        assert calls == []


def test_bisection_asks_one_request_per_level_whatever_the_number_of_segments():
    local = [Item(f"{k:05d}", k * 7919) for k in range(1024)]
    remote = [Item(i.key, i.digest) for i in local]
    for k in (100, 500, 900):
        remote[k] = Item(remote[k].key, 1)
    calls: list = []
    split_many = fake_remote(remote, calls)
    top = split_many([("", None)], 8)[0]  # 8 segments of 128
    calls.clear()
    out = bisect_window(list(zip(top, partition(local, top), strict=True)), split_many,
                        parts=8, min_records=16)
    fetched = [s for s, _, differs in out if differs]
    assert [s.count for s in fetched] == [16, 16, 16]
    assert len(calls) == 1 and len(calls[0]) == 3  # one request splits all three
    assert [s.lo for s, _, _ in out] == sorted(s.lo for s, _, _ in out)


# --------------------------------------------------------------------------- repair plans


class Reader:
    def __init__(self, records):
        self.records = {r.key: r for r in records}

    def get(self, domain, key):
        return self.records.get(key)


def flags(mode: Mode) -> FlagSource:
    return FlagSource({"customer": FlagState("customer", mode, mode, FULL, 3)})


FINDINGS = [Finding(Kind.MISSING_IN_CLOUD, "customer", BASE[0].key),
            Finding(Kind.MISMATCH, "customer", BASE[1].key, field="terms"),
            Finding(Kind.MISMATCH, "customer", BASE[1].key, field="region"),
            Finding(Kind.MISSING_IN_LEGACY, "customer", BASE[2].key),
            Finding(Kind.DUPLICATE, "customer", BASE[3].key, side="legacy")]
READERS = {"legacy": Reader([BASE[0], BASE[1]]), "cloud": Reader([BASE[1], BASE[2]])}


@pytest.mark.parametrize("mode", [Mode.LEGACY, Mode.SHADOW])
def test_in_legacy_modes_the_cloud_is_repaired_from_legacy(mode):
    plans, skipped = plan_repairs(FINDINGS, flags(mode), READERS)
    assert [(p.key, p.sor, p.target, p.action) for p, _ in plans] == [
        (BASE[0].key, "legacy", "cloud", "upsert"),
        (BASE[1].key, "legacy", "cloud", "upsert"),
        (BASE[2].key, "legacy", "cloud", "delete"),
    ]
    assert [f.kind for f in skipped] == [Kind.DUPLICATE]


@pytest.mark.parametrize("mode", [Mode.CLOUD, Mode.CLOUD_ONLY])
def test_in_cloud_modes_the_legacy_erp_is_repaired_and_cloud_only_says_backfill(mode):
    plans, _ = plan_repairs(FINDINGS, flags(mode), READERS)
    assert [(p.key, p.target, p.action) for p, _ in plans] == [
        (BASE[0].key, "legacy", "delete"),
        (BASE[1].key, "legacy", "upsert"),
        (BASE[2].key, "legacy", "upsert"),
    ]
    assert plans[2][1] == BASE[2]
    assert ("backfill" in plans[0][0].reason) is (mode == Mode.CLOUD_ONLY)


# --------------------------------------------------------------------------- runner


class FakeLegacy:
    def __init__(self, records):
        self.records = records

    def items(self, domain):
        return iter(items(self.records, legacy=True))


class FakeCloudWithoutChecksums:
    """A cloud ERP that only exports (no /reconcile endpoints)."""

    records_fetched = requests = 0

    def __init__(self, records):
        self.records = records

    def segments(self, domain, size):
        return None

    def stream(self, domain):
        for i in items(self.records):
            self.records_fetched += 1
            yield i


def test_auto_mode_streams_in_full_from_a_cloud_without_checksums_and_checksum_mode_refuses():
    from workers.reconcile.runner import ChecksumsUnavailable, reconcile_domain

    cloud = [*BASE[1:], BASE[0].model_copy(update={"region": "X"})]
    found: list[Finding] = []
    report = reconcile_domain("customer", FakeLegacy(BASE), FakeCloudWithoutChecksums(cloud),
                              mode="auto", on_finding=found.append)
    assert report.mode == "full" and report.cloud_records_fetched == 30
    assert [(f.kind, f.key, f.field) for f in found] == [(Kind.MISMATCH, BASE[0].key, "region")]
    with pytest.raises(ChecksumsUnavailable, match="use --mode full or auto"):
        reconcile_domain("customer", FakeLegacy(BASE), FakeCloudWithoutChecksums(cloud),
                         mode="checksum")

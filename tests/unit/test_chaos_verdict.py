"""The chaos run's verdict on the final reconcile (``scripts/chaos/run.py``): the seed's own
look-alike pairs (two legacy customers sharing name, bill-to postal code and tax id before
coexist ran; 5 pairs at 20,000 customers) are not duplicates coexist made, and the drift they
add is taken out; anything else still fails the run."""

from __future__ import annotations

import importlib.util
import json
import sys

from tests.support.processes import ROOT

_spec = importlib.util.spec_from_file_location("chaos_run", ROOT / "scripts/chaos/run.py")
chaos = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("chaos_run", chaos)
_spec.loader.exec_module(chaos)

SEED_GROUPS = [["12767", "24274"], ["13254", "26133"], ["14528", "15212"]]


def _dup(side, keys):
    return {"kind": "duplicate", "domain": "customer", "key": keys[0], "side": side,
            "keys": keys, "detail": f"2 {side} records share one natural key"}


def _final(findings, *, rows=17998, mismatched=0):
    dups = sum(len(f["keys"]) - 1 for f in findings if f["kind"] == "duplicate")
    return json.dumps({"runs": [{"domain": "customer", "rows_legacy": rows, "rows_cloud": rows,
                                 "exclusive_legacy": 0, "exclusive_cloud": 0,
                                 "mismatched": mismatched, "duplicates": dups, "orphans": 0,
                                 "untranslatable": 0,
                                 "drift_pct": round(100.0 * (dups + mismatched) / rows, 6)}],
                       "findings": findings})


def test_the_seeds_own_pairs_on_both_sides_are_no_drift_and_no_duplicate():
    # The last full run's failure: 4 seed pairs left (one lost a member to a delete), each on
    # both sides = 8 duplicates, 8 / 17,998 = 0.044 % drift.
    findings = [_dup(side, g) for side in ("legacy", "cloud") for g in SEED_GROUPS[:2]]
    out = _final(findings)
    assert chaos._drift(out) == (round(100.0 * 4 / 17998, 6), 4)
    seeded = chaos._seeded(out, SEED_GROUPS)
    assert seeded["in_final"] == 4
    assert chaos._beyond_seed(out, seeded) == (0.0, 0)


def test_a_duplicate_coexist_made_and_a_mismatch_still_count():
    made = _dup("cloud", ["12767", "500001"])  # a seed key twice under a new number
    out = _final([_dup("legacy", SEED_GROUPS[0]), made], mismatched=1)
    seeded = chaos._seeded(out, SEED_GROUPS)
    assert seeded["in_final"] == 1
    assert chaos._beyond_seed(out, seeded) == (round(100.0 * 2 / 17998, 6), 1)


def test_the_seed_groups_are_customers_sharing_a_natural_key():
    from tests.support.records import customer

    seed = [customer(k, name=n, tax_id="T1") for k, n in (("1", "ACME"), ("2", "ACME"),
                                                          ("3", "ZED"))]
    assert chaos.seed_duplicate_groups(seed) == [["1", "2"]]

"""Flag evaluation: modes, routes, rollouts, sticky hashing (pure, no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coexistence.flags import (
    FULL,
    PERCENT_SCALE,
    ROUTES,
    FlagError,
    FlagSource,
    FlagState,
    Mode,
    Rollout,
    System,
    bucket,
    parse_segments,
    percent_to_buckets,
)

keys = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=20)
percents = st.integers(min_value=0, max_value=PERCENT_SCALE)


def partial(mode: Mode, base: Mode, rollout: Rollout, domain: str = "customer") -> FlagState:
    return FlagState(domain, mode, base, rollout, 3)


@pytest.mark.parametrize(
    ("mode", "sor", "writes"),
    [
        (Mode.LEGACY, System.LEGACY, (System.LEGACY,)),
        (Mode.SHADOW, System.LEGACY, (System.LEGACY, System.CLOUD)),
        (Mode.CLOUD, System.CLOUD, (System.CLOUD, System.LEGACY)),
        (Mode.CLOUD_ONLY, System.CLOUD, (System.CLOUD,)),
    ],
)
def test_each_mode_routes_as_the_design_table_says(mode, sor, writes):
    state = FlagState("customer", mode, mode, FULL, 1)
    assert state.sor_for("10042") == sor
    assert state.writes_for("10042") == writes
    assert state.route_for("10042") is ROUTES[mode]


def test_an_untouched_domain_is_legacy_at_version_zero():
    state = FlagSource().state("invoice")
    assert (state.mode, state.version, state.rollout.is_full) == (Mode.LEGACY, 0, True)


@given(keys)
def test_every_key_falls_in_a_bucket_of_the_scale(key):
    assert 0 <= bucket("customer", key) < PERCENT_SCALE


def test_the_sticky_bucket_is_pinned_across_processes_and_releases():
    # Golden values: Python's hash() is salted per process, blake2b is not.  If these
    # change, every partial rollout in production would reshuffle its records.
    assert bucket("customer", "10042") == 3141
    assert bucket("product", "WID-1000") == 3799


@given(keys, percents, percents)
def test_raising_the_percent_never_moves_a_key_back(key, a, b):
    low, high = sorted((a, b))
    if Rollout(low).selects("customer", key):
        assert Rollout(high).selects("customer", key)


def test_a_percent_rollout_selects_about_that_share_of_keys():
    rollout = Rollout(percent_to_buckets(25))
    chosen = sum(rollout.selects("product", f"SKU-{i}") for i in range(20_000))
    assert 4_500 < chosen < 5_500


def test_the_same_key_lands_in_different_buckets_in_different_domains():
    spread = {bucket(d, "1") for d in ("customer", "product", "price", "inventory", "order")}
    assert len(spread) > 1


def test_a_segment_rollout_selects_only_records_of_that_segment():
    state = partial(Mode.SHADOW, Mode.LEGACY, Rollout(segments=parse_segments(
        ["region=WEST", "region=EAST", "warehouse=W01"])))
    assert state.mode_for("1", {"region": "WEST", "warehouse": "W01"}) == Mode.SHADOW
    assert state.mode_for("1", {"region": "EAST", "warehouse": "W01"}) == Mode.SHADOW
    assert state.mode_for("1", {"region": "NORTH", "warehouse": "W01"}) == Mode.LEGACY
    assert state.mode_for("1", {"region": "WEST", "warehouse": "W02"}) == Mode.LEGACY
    # A record without the attribute stays in the base mode.
    assert state.mode_for("1", {"region": "WEST"}) == Mode.LEGACY
    assert state.mode_for("1") == Mode.LEGACY


@given(keys, st.integers(min_value=0, max_value=PERCENT_SCALE - 1))
def test_records_outside_the_rollout_keep_the_base_mode(key, buckets):
    state = partial(Mode.CLOUD, Mode.SHADOW, Rollout(buckets))
    expected = Mode.CLOUD if bucket("customer", key) < buckets else Mode.SHADOW
    assert state.mode_for(key, {}) == expected
    assert state.sor_for(key) == ROUTES[expected].sor


def test_a_zero_percent_rollout_selects_nobody_and_a_full_one_everybody():
    assert not any(Rollout(0).selects("order", str(i)) for i in range(1000))
    assert all(FULL.selects("order", str(i)) for i in range(1000))


@given(percents, percents, st.sets(st.sampled_from(["WEST", "EAST", "NORTH"]), min_size=1),
       st.sets(st.sampled_from(["WEST", "EAST", "NORTH"]), min_size=1), keys,
       st.sampled_from(["WEST", "EAST", "NORTH", "SOUTH"]))
def test_covers_means_every_record_selected_by_the_other_is_selected(
    pa, pb, sa, sb, key, region
):
    a = Rollout(pa, {"region": frozenset(sa)})
    b = Rollout(pb, {"region": frozenset(sb)})
    if a.covers(b) and b.selects("price", key, {"region": region}):
        assert a.selects("price", key, {"region": region})


def test_a_full_rollout_must_not_carry_a_different_base_mode():
    with pytest.raises(FlagError, match="full rollout has no base mode"):
        FlagState("customer", Mode.CLOUD, Mode.SHADOW, FULL, 1)


def test_a_rollout_must_move_records_forward_from_its_base():
    with pytest.raises(FlagError, match="must come before"):
        FlagState("customer", Mode.SHADOW, Mode.CLOUD, Rollout(5000), 1)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["region"], "NAME=VALUE"),
        (["=WEST"], "NAME=VALUE"),
        (["colour=red"], "'colour' is not one of"),
    ],
)
def test_a_bad_segment_is_refused_with_its_text(items, message):
    with pytest.raises(FlagError, match=message):
        parse_segments(items)


@pytest.mark.parametrize("percent", [-1, 100.5, 12.345])
def test_a_bad_percent_is_refused(percent):
    with pytest.raises(FlagError, match="percent"):
        percent_to_buckets(percent)


def test_an_unknown_domain_or_mode_is_refused_by_name():
    with pytest.raises(FlagError, match="'vendor'"):
        FlagState("vendor", Mode.LEGACY, Mode.LEGACY, FULL, 0)
    with pytest.raises(FlagError, match="'hybrid'"):
        FlagState.from_dict({"domain": "customer", "mode": "hybrid", "version": 1})


@given(percents, st.sampled_from([Mode.SHADOW, Mode.CLOUD, Mode.CLOUD_ONLY]))
def test_a_flag_state_survives_its_json_round_trip(buckets, mode):
    state = FlagState("order", mode, Mode.LEGACY,
                      Rollout(buckets, {"warehouse": frozenset({"W01", "W02"})}), 7)
    assert FlagState.from_json(state.to_json()) == state


def test_malformed_stored_json_is_reported_not_crashed_on():
    with pytest.raises(FlagError, match="malformed flag state"):
        FlagState.from_json("{not json")
    with pytest.raises(FlagError, match="malformed flag state"):
        FlagState.from_json('{"domain": "customer"}')

"""Transition rules and guards, on fake facts (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coexistence.flags import FULL, FlagError, FlagState, Mode, Rollout, initial_flags
from coexistence.preflight import (
    GuardPolicy,
    Pending,
    Reconciliation,
    parse_freeze_windows,
    plan,
    propose,
    rollback_target,
)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@dataclass
class FakeFacts:
    """Every domain healthy unless a test says otherwise."""

    drift: dict[str, float | None] = field(default_factory=dict)
    reconciled_at: datetime = NOW - timedelta(hours=1)
    exceptions: dict[str, int | None] = field(default_factory=dict)
    backlogs: dict[str, int | None] = field(default_factory=dict)
    #: When the router last routed a change per domain (absent: never).
    routed_at: dict[str, datetime] = field(default_factory=dict)
    #: Status of the last run per domain (absent: ok).
    run_status: dict[str, str] = field(default_factory=dict)

    def last_reconciliation(self, domain):
        drift = self.drift.get(domain, 0.0)
        status = self.run_status.get(domain, "ok")
        if drift is None and status == "ok":
            return None
        return Reconciliation(drift, self.reconciled_at, run_id=f"run-{domain}",
                              started_at=self.reconciled_at - timedelta(seconds=30),
                              status=status)

    def last_routed_at(self, domain):
        return self.routed_at.get(domain)

    def open_exceptions(self, domain):
        return self.exceptions.get(domain, 0)

    def pending(self, domain, *, below_version=None, up_to_id=None):
        n = self.backlogs.get(domain, 0)
        return None if n is None else Pending(in_broker=n, by_version={1: n} if n else {},
                                              by_queue={"coexist.write.cloud": n} if n else {},
                                              newest_id=n)


def state(domain: str, mode: Mode, version: int = 1, **kw) -> FlagState:
    return FlagState(domain, mode, mode, FULL, version, **kw)


def flags(**modes: Mode) -> dict[str, FlagState]:
    out = initial_flags()
    for domain, mode in modes.items():
        out[domain] = state(domain, mode)
    return out


def check(domain, target, current_flags=None, facts=None, policy=None, rollout=FULL):
    current_flags = current_flags or initial_flags()
    current = current_flags[domain]
    return plan(current, propose(current, target, rollout), current_flags,
                facts or FakeFacts(), policy or GuardPolicy(), NOW)


def failed(p) -> set[str]:
    return {c.name for c in p.failed}


def test_a_healthy_domain_moves_one_step_forward():
    p = check("customer", Mode.SHADOW)
    assert p.forward and not p.backward and p.allowed()
    assert p.proposed.version == 1


@pytest.mark.parametrize(
    ("facts", "guard", "text"),
    [
        (FakeFacts(drift={"customer": None}), "drift", "no reconciliation run"),
        (FakeFacts(drift={"customer": 2.5}), "drift", "drift 2.5% > threshold 0.1%"),
        (FakeFacts(exceptions={"customer": 3}), "exceptions", "3 open exceptions"),
        (FakeFacts(exceptions={"customer": None}), "exceptions", "cannot tell"),
        (FakeFacts(backlogs={"customer": 12}), "backlog",
         "12 customer message(s) routed but not yet applied (12 in the broker, 0 unsent)"),
    ],
)
def test_a_forward_move_is_refused_while_a_guard_fails(facts, guard, text):
    p = check("customer", Mode.SHADOW, facts=facts)
    assert failed(p) == {guard}
    assert text in next(c.detail for c in p.failed)
    assert not p.allowed()
    assert p.allowed(force=True)


def test_a_forward_move_waits_for_every_upstream_domain():
    p = check("order", Mode.SHADOW, flags(customer=Mode.SHADOW, product=Mode.SHADOW,
                                          price=Mode.SHADOW))
    assert failed(p) == {"upstream"}
    assert "inventory (legacy)" in p.failed[0].detail


def test_an_upstream_domain_mid_rollout_counts_as_behind():
    current = flags(product=Mode.SHADOW)
    current["customer"] = FlagState("customer", Mode.SHADOW, Mode.LEGACY, Rollout(5000), 1)
    assert failed(check("price", Mode.SHADOW, current)) == {"upstream"}
    current["customer"] = state("customer", Mode.SHADOW)
    assert check("price", Mode.SHADOW, current).allowed()


def test_no_domain_moves_forward_during_a_freeze_window():
    windows = parse_freeze_windows("2026-11-28T00:00Z/2026-12-02T00:00Z,"
                                   "2026-11-20T00:00Z/2026-11-21T00:00Z")
    p = check("customer", Mode.SHADOW, policy=GuardPolicy(freeze_windows=windows))
    assert failed(p) == {"freeze"}
    assert "2026-11-20" in p.failed[0].detail
    later = GuardPolicy(freeze_windows=windows[:1])
    assert check("customer", Mode.SHADOW, policy=later).allowed()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-11-28T00:00Z", "START/END"),
        ("yesterday/tomorrow", "Invalid isoformat"),
        ("2026-11-28T00:00/2026-11-29T00:00", "time zone"),
        ("2026-11-29T00:00Z/2026-11-28T00:00Z", "ends before it starts"),
    ],
)
def test_a_bad_freeze_window_is_refused_naming_the_variable_and_value(text, message):
    with pytest.raises(FlagError, match=message) as err:
        parse_freeze_windows(text)
    assert "COEXIST_FREEZE" in str(err.value)


def test_skipping_a_mode_needs_force():
    p = check("customer", Mode.CLOUD)
    assert failed(p) == {"one step"}
    assert p.allowed(force=True)


def test_moving_back_is_allowed_whatever_the_guards_say():
    facts = FakeFacts(drift={"customer": None}, exceptions={"customer": 9},
                      backlogs={"customer": 9})
    current = flags(customer=Mode.CLOUD)
    target = rollback_target(current["customer"])
    p = plan(current["customer"], target, current, facts, GuardPolicy(), NOW)
    assert target.mode == Mode.SHADOW and p.backward and not p.forward
    assert p.allowed()


def test_a_rollback_warns_about_downstream_domains_left_ahead():
    current = flags(customer=Mode.CLOUD, product=Mode.CLOUD, price=Mode.CLOUD)
    p = plan(current["customer"], rollback_target(current["customer"]), current,
             FakeFacts(), GuardPolicy(), NOW)
    assert p.allowed()
    assert any("price" in w for w in p.warnings)


def test_rolling_back_out_of_cloud_only_needs_a_backfill_first():
    switched = NOW - timedelta(minutes=30)
    current = initial_flags()
    current["customer"] = state("customer", Mode.CLOUD_ONLY, changed_at=switched)
    stale = FakeFacts(reconciled_at=switched - timedelta(minutes=1))
    p = plan(current["customer"], rollback_target(current["customer"]), current, stale,
             GuardPolicy(), NOW)
    assert failed(p) == {"backfill"}
    assert "coexist reconcile customer --repair" in p.failed[0].detail
    backfilled = FakeFacts(reconciled_at=switched + timedelta(minutes=5))
    p = plan(current["customer"], rollback_target(current["customer"]), current, backfilled,
             GuardPolicy(), NOW)
    assert p.allowed()


def test_a_reconciliation_older_than_the_last_routed_change_and_the_max_age_is_refused():
    # Reconciled an hour ago (started 30 s before that); a change routed 10 minutes ago.
    facts = FakeFacts(routed_at={"customer": NOW - timedelta(minutes=10)})
    p = check("customer", Mode.SHADOW, facts=facts)
    assert failed(p) == {"drift"}
    detail = p.failed[0].detail
    assert "the last reconciliation (run run-customer finished 2026-11-20T11:00:00+00:00)" \
        in detail
    assert ("is stale: it started before the last routed customer change at "
            "2026-11-20T11:50:00+00:00 and is 1:00:00 old, more than the 0:15:00 allowed "
            "(COEXIST_MAX_RECONCILE_AGE_S)") in detail
    assert "coexist reconcile customer" in detail
    # Allowing an older run lets the same one pass, naming why it counts.
    p = check("customer", Mode.SHADOW, facts=facts,
              policy=GuardPolicy(max_reconcile_age_s=7200))
    assert p.allowed(), p.failed
    assert "1:00:00 old, within the 2:00:00 allowed" in p.checks[0].detail


def test_a_reconciliation_that_started_after_the_last_routed_change_counts_however_old():
    facts = FakeFacts(routed_at={"customer": NOW - timedelta(hours=2)})
    p = check("customer", Mode.SHADOW, facts=facts, policy=GuardPolicy(max_reconcile_age_s=0))
    assert p.allowed(), p.failed
    assert ("run run-customer finished 2026-11-20T11:00:00+00:00, started after the last "
            "routed customer change at 2026-11-20T10:00:00+00:00) drift 0%") in \
        p.checks[0].detail


def test_a_young_reconciliation_counts_even_with_a_change_routed_while_it_ran():
    facts = FakeFacts(reconciled_at=NOW - timedelta(minutes=2),
                      routed_at={"customer": NOW - timedelta(minutes=2, seconds=10)})
    p = check("customer", Mode.SHADOW, facts=facts)
    assert p.allowed(), p.failed
    assert "0:02:00 old, within the 0:15:00 allowed" in p.checks[0].detail


@pytest.mark.parametrize("status", ["interrupted", "failed", "timeout"])
def test_a_last_run_that_measured_nothing_is_refused_even_with_an_older_good_one(status):
    facts = FakeFacts(drift={"customer": None}, run_status={"customer": status})
    p = check("customer", Mode.SHADOW, facts=facts)
    assert failed(p) == {"drift"}
    assert f"ended {status} and measured nothing; run one again" in p.failed[0].detail


def test_a_backfill_must_have_been_verified_after_the_last_routed_change():
    switched = NOW - timedelta(minutes=30)
    current = initial_flags()
    current["customer"] = state("customer", Mode.CLOUD_ONLY, changed_at=switched)
    # Reconciled after the switch, but a person changed a customer in the cloud after that.
    facts = FakeFacts(reconciled_at=switched + timedelta(minutes=5),
                      routed_at={"customer": switched + timedelta(minutes=20)})
    p = plan(current["customer"], rollback_target(current["customer"]), current, facts,
             GuardPolicy(max_reconcile_age_s=86400), NOW)
    assert failed(p) == {"backfill"}
    assert "started before the last routed customer change" in p.failed[0].detail


def test_a_backfill_whose_repairs_are_still_in_flight_says_wait_not_backfill_again():
    """Right after ``reconcile --repair --yes`` its repairs are still being applied: the
    guard says so and to wait, instead of asking for the backfill that was just run."""
    switched = NOW - timedelta(minutes=30)
    current = initial_flags()
    current["customer"] = state("customer", Mode.CLOUD_ONLY, changed_at=switched)
    facts = FakeFacts(reconciled_at=switched + timedelta(minutes=5), drift={"customer": 4.0},
                      backlogs={"customer": 12})
    p = plan(current["customer"], rollback_target(current["customer"]), current, facts,
             GuardPolicy(max_reconcile_age_s=86400), NOW)
    assert failed(p) == {"backfill"}
    detail = p.failed[0].detail
    assert "12 (12 in the broker, 0 unsent) routed customer writes" in detail
    assert "not applied yet; wait until `coexist status`" in detail
    assert "backfill it first" not in detail


def test_a_partial_rollout_goes_forward_from_the_current_mode():
    current = initial_flags()
    current["customer"] = state("customer", Mode.SHADOW)
    p = check("customer", Mode.CLOUD, current, rollout=Rollout(1000))
    assert (p.proposed.mode, p.proposed.base_mode) == (Mode.CLOUD, Mode.SHADOW)
    assert p.forward and p.allowed()


def test_widening_a_rollout_is_forward_and_narrowing_it_is_back():
    current = initial_flags()
    current["customer"] = FlagState("customer", Mode.SHADOW, Mode.LEGACY, Rollout(1000), 1)
    wider = check("customer", Mode.SHADOW, current, rollout=Rollout(5000))
    assert wider.forward and not wider.backward
    assert wider.proposed.base_mode == Mode.LEGACY
    narrower = check("customer", Mode.SHADOW, current, rollout=Rollout(500))
    assert narrower.backward and not narrower.forward
    complete = check("customer", Mode.SHADOW, current)
    assert complete.forward and complete.proposed.rollout.is_full
    assert complete.proposed.base_mode == Mode.SHADOW


def test_a_rollout_by_a_different_segment_is_both_forward_and_back():
    current = initial_flags()
    west = Rollout(segments={"region": frozenset({"WEST"})})
    east = Rollout(segments={"region": frozenset({"EAST"})})
    current["customer"] = FlagState("customer", Mode.SHADOW, Mode.LEGACY, west, 1)
    p = check("customer", Mode.SHADOW, current, facts=FakeFacts(exceptions={"customer": 1}),
              rollout=east)
    assert p.forward and p.backward
    assert failed(p) == {"exceptions"}


def test_a_domain_mid_rollout_cannot_start_a_third_mode():
    current = FlagState("customer", Mode.SHADOW, Mode.LEGACY, Rollout(1000), 1)
    with pytest.raises(FlagError, match="mid-rollout"):
        propose(current, Mode.CLOUD, Rollout(1000))
    with pytest.raises(FlagError, match="mid-rollout"):
        propose(current, Mode.CLOUD)


def test_rollback_of_a_partial_rollout_returns_every_record_to_the_base_mode():
    current = FlagState("customer", Mode.CLOUD, Mode.SHADOW, Rollout(1000), 4)
    back = rollback_target(current)
    assert (back.mode, back.rollout.is_full, back.version) == (Mode.SHADOW, True, 5)


def test_there_is_nothing_to_roll_back_from_legacy():
    with pytest.raises(FlagError, match="nothing to roll back"):
        rollback_target(FlagState.initial("customer"))


def test_setting_the_mode_a_domain_already_has_is_refused_even_when_forced():
    current = flags(customer=Mode.SHADOW)
    p = check("customer", Mode.SHADOW, current)
    assert failed(p) == {"change"}
    assert not p.allowed(force=True)


def test_a_rollout_cannot_point_backwards_or_select_nobody():
    with pytest.raises(FlagError, match="not ahead"):
        propose(state("customer", Mode.CLOUD), Mode.SHADOW, Rollout(1000))
    with pytest.raises(FlagError, match="0%"):
        propose(FlagState.initial("customer"), Mode.SHADOW, Rollout(0))


rollouts = st.builds(
    Rollout,
    st.integers(min_value=1, max_value=10_000),
    st.dictionaries(st.sampled_from(["region"]),
                    st.frozensets(st.sampled_from(["WEST", "EAST", "NORTH"]), min_size=1),
                    max_size=1),
)
SAMPLE = [(f"C{i}", {"region": ("WEST", "EAST", "NORTH", "SOUTH")[i % 4]}) for i in range(300)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(Mode) + [None]), rollouts), max_size=8))
def test_forward_and_back_say_exactly_which_way_records_move(steps):
    current = FlagState.initial("customer")
    for mode, rollout in steps:
        try:
            proposed = rollback_target(current) if mode is None else propose(
                current, mode, rollout)
        except FlagError:
            continue
        p = plan(current, proposed, initial_flags(), FakeFacts(), GuardPolicy(), NOW)
        moves = [(current.mode_for(k, a).step, proposed.mode_for(k, a).step) for k, a in SAMPLE]
        if not p.forward:
            assert all(new <= old for old, new in moves)
        if not p.backward:
            assert all(new >= old for old, new in moves)
        assert proposed.version == current.version + 1
        current = proposed

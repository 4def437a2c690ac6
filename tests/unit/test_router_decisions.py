"""Router decisions as pure functions: SoR, shadows, echoes, stray writes, pinning."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coexistence.canonical import decode
from coexistence.ports import COEXIST_WRITER, Change
from coexistence.router import (
    CLOUD,
    LEGACY,
    STRAY_POLICY,
    Action,
    StrayPolicy,
    decide_change,
    decide_command,
    is_closed,
    routed_version,
    split_version,
)

NOW = datetime(2026, 11, 27, tzinfo=UTC)


@dataclass
class Flag:
    mode: str
    version: int = 1

    def mode_for(self, key, attrs):
        return self.mode


def change(domain="customer", key="10042", writer="JSMITH", cursor=7):
    return Change(cursor=cursor, domain=domain, key=key, op="upsert", writer=writer, at=NOW,
                  version=cursor)


ORDER = decode("order", {
    "key": "SO-1", "customer_key": "10042", "status": "open", "channel": "erp",
    "currency": "USD", "ordered_at": "2026-03-01T09:30:00Z",
    "lines": [{"line_no": 1, "sku": "WID-1", "quantity": 3, "unit_price": "9.99"}],
})


@pytest.mark.parametrize(
    ("mode", "source", "action", "targets"),
    [
        ("legacy", LEGACY, Action.ROUTE, ()),
        ("shadow", LEGACY, Action.ROUTE, (CLOUD,)),
        ("cloud", CLOUD, Action.ROUTE, (LEGACY,)),
        ("cloud_only", CLOUD, Action.ROUTE, ()),
        # A person typing into the shadow: overwritten from the SoR (master data policy).
        ("shadow", CLOUD, Action.STRAY, (CLOUD,)),
        ("cloud", LEGACY, Action.STRAY, (LEGACY,)),
        # A system the mode does not maintain is never written, only reported.
        ("legacy", CLOUD, Action.STRAY, ()),
        ("cloud_only", LEGACY, Action.STRAY, ()),
    ],
)
def test_a_persons_change_is_routed_from_the_sor_and_stray_elsewhere(mode, source, action, targets):
    decision = decide_change(change(), source, Flag(mode), None)
    assert decision.action is action
    assert decision.targets == targets
    assert decision.fan_out is (action is Action.ROUTE)


@pytest.mark.parametrize("mode", ["legacy", "shadow", "cloud", "cloud_only"])
@pytest.mark.parametrize("source", [LEGACY, CLOUD])
def test_coexists_own_writes_are_echoes_and_never_routed_again(mode, source):
    decision = decide_change(change(writer=COEXIST_WRITER), source, Flag(mode), None)
    assert decision.action is Action.ECHO
    assert decision.targets == ()
    assert not decision.fan_out


def test_a_domain_whose_policy_is_report_keeps_the_stray_value_for_a_person(monkeypatch):
    monkeypatch.setitem(STRAY_POLICY, "order", StrayPolicy.REPORT)
    decision = decide_change(change(domain="order", key="SO-1"), CLOUD, Flag("shadow"), ORDER)
    assert decision.action is Action.STRAY
    assert decision.stray_policy is StrayPolicy.REPORT
    assert decision.targets == ()


def test_a_document_stays_with_the_sor_it_was_pinned_to_whatever_the_flag_says():
    decision = decide_change(change(domain="order", key="SO-1"), LEGACY, Flag("cloud", 5), ORDER,
                             pinned_sor=LEGACY)
    assert decision.action is Action.ROUTE
    assert decision.sor == LEGACY
    assert decision.pinned
    assert decision.targets == (CLOUD,)


def test_master_data_follows_the_flag_even_with_a_pin():
    decision = decide_change(change(), LEGACY, Flag("cloud"), None, pinned_sor=LEGACY)
    assert decision.action is Action.STRAY
    assert decision.sor == CLOUD


def test_a_channel_command_goes_to_the_sor_first_then_the_shadow():
    assert decide_command("order", ORDER, Flag("shadow")).targets == (LEGACY, CLOUD)
    assert decide_command("order", ORDER, Flag("cloud")).targets == (CLOUD, LEGACY)
    assert decide_command("order", ORDER, Flag("cloud_only")).targets == (CLOUD,)


def test_a_closed_order_is_no_longer_pinned():
    assert not is_closed(ORDER)
    assert is_closed(ORDER.model_copy(update={"status": "closed"}))


@given(st.integers(0, 10_000), st.integers(0, 2**40 - 1), st.integers(0, 2**40 - 1))
def test_any_write_routed_after_a_switch_outranks_any_write_routed_before(flag, a, b):
    assert routed_version(flag + 1, a) > routed_version(flag, b)
    assert split_version(routed_version(flag, a)) == (flag, a)


def test_a_source_version_too_large_to_pack_is_refused():
    with pytest.raises(ValueError):
        routed_version(1, 2**40)


def test_a_document_pinned_to_legacy_still_reaches_the_cloud_in_cloud_only():
    decision = decide_change(change(domain="order", key="SO-1"), LEGACY, Flag("cloud_only", 9),
                             ORDER, pinned_sor=LEGACY)
    assert decision.action is Action.ROUTE
    assert (decision.sor, decision.targets) == (LEGACY, (CLOUD,))

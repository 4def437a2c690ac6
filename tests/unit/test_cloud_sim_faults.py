"""Fault settings of the cloud simulator: parsing, validation, drawing."""

from __future__ import annotations

import pytest

from workers.cloud_sim.faults import Faults, FaultSpecError, parse_faults


def test_faults_parse_from_key_value_text_and_from_json_alike():
    text = parse_faults("error_rate=0.1, latency_ms=20, next=drop+timeout:any, seed=3")
    data = parse_faults('{"error_rate": 0.1, "latency_ms": 20, "next": ["drop", "timeout:any"],'
                        ' "seed": 3}')
    assert text.as_dict() == data.as_dict()
    assert text.next == ["drop", "timeout:any"] and text.seed == 3


@pytest.mark.parametrize("spec, named", [
    ("drop_rate=2", "drop_rate=2.0"),
    ("latency_ms=-5", "latency_ms=-5.0"),
    ("shoe_size=9", "unknown setting 'shoe_size'"),
    ("next=explode", "next='explode'"),
    ("scope=sometimes", "scope='sometimes'"),
    ("burst_429=1.5", "burst_429='1.5'"),
    ("error_rate", "'error_rate' is not key=value"),
    ("{not json", "not valid JSON"),
])
def test_bad_fault_settings_are_refused_naming_the_setting_and_value(spec, named):
    with pytest.raises(FaultSpecError) as caught:
        parse_faults(spec)
    assert named in str(caught.value)


def test_one_shot_faults_hit_the_next_matching_requests_only():
    faults = Faults(next=["drop", "429:read", "timeout:any"])
    assert faults.draw(is_write=False) == "429"
    assert faults.draw(is_write=True) == "drop"
    assert faults.draw(is_write=True) == "timeout"
    assert faults.draw(is_write=True) is None


def test_a_429_burst_counts_down_then_stops():
    faults = Faults(burst_429=2)
    assert [faults.draw(is_write=False) for _ in range(3)] == ["429", "429", None]


def test_rates_are_seeded_and_respect_their_scope():
    draws = [Faults(drop_rate=0.5, seed=11).draw(is_write=True) for _ in range(2)]
    assert draws[0] == draws[1]
    faults = Faults(error_rate=1.0, scope="write")
    assert faults.draw(is_write=False) is None
    assert faults.draw(is_write=True) == "error"
    mixed = Faults(error_rate=0.25, drop_rate=0.25, seed=5)
    kinds = [mixed.draw(is_write=True) for _ in range(2000)]
    assert 0.4 < sum(k is not None for k in kinds) / 2000 < 0.6

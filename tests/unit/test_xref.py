"""The link rules every xref adapter shares (``plan_link``) and the conflict's message."""

from __future__ import annotations

import pytest

from bus.errors import is_business
from coexistence.xref import XrefConflict, XrefEntry, plan_link

ENTRY = XrefEntry("customer", "10042", legacy_key="0000010042", cloud_id=None)


def plan(current, holders, **wanted):
    full = {"legacy_key": None, "cloud_id": None, **wanted}
    return plan_link(current, holders, "customer", "10042", full)


def test_a_new_key_fills_every_column_it_is_given():
    assert plan(None, {}, legacy_key="L", cloud_id="C") == {"legacy_key": "L", "cloud_id": "C"}


def test_repeating_a_mapping_fills_nothing():
    assert plan(ENTRY, {"legacy_key": "10042"}, legacy_key="0000010042") == {}


def test_an_empty_column_is_filled_and_a_filled_one_left_alone():
    assert plan(ENTRY, {"legacy_key": "10042"}, legacy_key="0000010042", cloud_id="C") == {
        "cloud_id": "C"
    }


def test_changing_a_filled_column_is_refused_naming_old_and_new_values():
    with pytest.raises(XrefConflict) as caught:
        plan(ENTRY, {}, legacy_key="0000099999")
    assert str(caught.value) == (
        "xref conflict: cannot link customer 10042: "
        "it has legacy_key '0000010042', not '0000099999'"
    )


def test_taking_an_id_held_by_another_key_is_refused_naming_the_holder():
    with pytest.raises(XrefConflict) as caught:
        plan(ENTRY, {"cloud_id": "10043"}, cloud_id="C")
    assert str(caught.value) == (
        "xref conflict: cannot link customer 10042: cloud_id 'C' already belongs to customer 10043"
    )


def test_a_conflict_is_a_business_error_that_is_never_retried():
    assert is_business(XrefConflict("order", "1", "cloud_id", "a", "b"))

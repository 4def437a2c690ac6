"""The one "apply only when newer" rule (coexistence.writes.applies)."""

from __future__ import annotations

import pytest
from sqlalchemy import column

from coexistence.writes import applies


@pytest.mark.parametrize(("incoming", "current", "repair", "expected"), [
    (5, 4, False, True),
    (4, 4, False, False),
    (3, 4, False, False),
    (5, 4, True, True),
    (4, 4, True, True),
    (3, 4, True, False),
    (1, 0, False, True),
])
def test_a_write_applies_only_when_newer_and_a_repair_also_when_equal(
        incoming, current, repair, expected):
    assert applies(incoming, current, repair) is expected


def test_the_same_rule_reads_as_sql_over_columns():
    assert str(applies(column("a"), column("b"), False)) == "a > b"
    assert str(applies(column("a"), column("b"), True)) == "a >= b"

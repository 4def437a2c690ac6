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


def test_every_erp_adapter_decides_with_this_one_rule():
    # Issue 11, build item 6: four copies of the decision became this one.
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for module in ("workers/cloud_erp.py", "workers/legacy_erp/adapter.py",
                   "workers/erp_memory.py"):
        tree = ast.parse((root / module).read_text())
        imported = any(isinstance(n, ast.ImportFrom) and n.module == "coexistence.writes"
                       and any(a.name == "applies" for a in n.names) for n in ast.walk(tree))
        called = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                     and n.func.id == "applies" for n in ast.walk(tree))
        assert imported and called, f"{module} does not decide with coexistence.writes.applies"

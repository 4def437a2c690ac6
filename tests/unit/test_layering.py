"""Imports point one way: workers -> coexistence, workers -> bus; bus knows no ERP; the
domain does no I/O.  Checked on the source, so a stray import fails the suite."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: package -> top-level modules it must never import
FORBIDDEN = {
    "bus": {"coexistence", "workers"},
    "coexistence": {"workers", "pika", "redis", "httpx", "dramatiq", "psycopg", "uvicorn",
                    "starlette", "requests", "socket", "subprocess"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_never_imports_what_sits_above_it_or_does_io(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imports_of(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_domain_never_opens_an_engine_or_a_session():
    calls = []
    for path in (ROOT / "coexistence").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
                name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
                if name in {"create_engine", "Session", "connect", "open"}:
                    calls.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert calls == []

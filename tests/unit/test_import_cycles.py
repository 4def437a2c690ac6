"""No import cycles in bus, coexistence and workers: a module never needs, directly or through
others, a module that needs it.  Checked on the source (every import statement, those inside
functions included: a cycle hidden in a function is still a cycle), so a new one fails here.

Imports under ``if TYPE_CHECKING:`` do not count: they never run.  A package's ``__init__``
is only an edge where it is imported by name (``from workers.flags import open_state``), not
because a submodule lives in it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bus", "coexistence", "workers")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, tuple[str, bool]]:
    """Module name -> (source text, is a package's ``__init__``)."""
    return {module_name(p): (p.read_text(), p.name == "__init__.py")
            for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imports(name: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    tree = ast.parse(source, filename=name)
    skipped = _type_checking_nodes(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                out.add(sub if sub in known else source)
    return {m for m in out if m in known and m != name}


def cycles(mods: dict[str, tuple[str, bool]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    known = set(mods)
    graph = {name: sorted(imports(name, text, pkg, known)) for name, (text, pkg) in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_bus_coexistence_and_workers_have_no_import_cycles():
    assert cycles(sources()) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_or_relative_import():
    """The check can fail: modules that import each other, inside a function or relatively;
    an import under TYPE_CHECKING is no edge."""
    mods = {
        "w": ("", True),
        "w.a": ("import w.b\n", False),
        "w.b": ("def f():\n    from w import a\n", False),
        "w.c": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import w.d\n", False),
        "w.d": ("import w.c\n", False),
        "w.p": ("from .q import x\n", True),
        "w.p.q": ("from w import p\n", False),
    }
    assert cycles(mods) == [["w.a", "w.b"], ["w.p", "w.p.q"]]

"""Reference systems (the cloud ERP simulator, the legacy ERP's sample seeding) are programs
the demo and the tests run, never part of a production path: no adapter, actor, capture loop
or composition root imports them; only the CLI commands that start or seed them do.
Checked on the source (docs/architecture.md, "Reference systems")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Modules (and packages) that are reference systems, not production adapters.
REFERENCE = ("workers.cloud_sim", "workers.crm_sim", "workers.legacy_erp.seed")
#: Where a reference system may be imported from: itself, the CLI that runs it, and the
#: in-memory fake CRM (tests only), which shares the simulator's duplicate rule and schema.
MAY_IMPORT = ("workers.cli.demo", "workers.cli.legacy", "workers.cli.crm_sim",
              "workers.cli.cloud_sim", "workers.crm_memory", *REFERENCE)


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_no_production_module_imports_a_reference_system():
    offenders = []
    for pkg in ("bus", "coexistence", "workers"):
        for path in (ROOT / pkg).rglob("*.py"):
            name = _name(path)
            if _within(name, MAY_IMPORT):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                targets = []
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                offenders += [f"{name} imports {t}" for t in targets if _within(t, REFERENCE)]
    assert offenders == []

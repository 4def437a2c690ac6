"""Honest dependencies (issue 11, build item 7): every runtime dependency is used by the
product, the two whose private APIs we use are bounded, and the versions a new user and CI
install are the locked ones.

Read from the files themselves (pyproject.toml, requirements.lock, scripts/bootstrap.sh,
scripts/test.sh, the product's imports), so a dependency added and never used, a bound
dropped, or a bootstrap that resolves afresh fails here."""

from __future__ import annotations

import ast
import re
import tomllib
from importlib.metadata import packages_distributions, version
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PRODUCT = ("bus", "coexistence", "workers", "migrations")
#: Drivers SQLAlchemy loads by the dialect name in a URL, never imported by name.
#: Libraries another one loads by a name the product gives it (uvicorn's ``http=...``).
DRIVERS = {"psycopg": "postgresql+psycopg", "httptools": '"httptools"'}


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower().replace("_", "-")


RUNTIME = {_name(r): Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
DEV = {_name(r): Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]}


def _modules_imported(packages: tuple[str, ...]) -> set[str]:
    """Top-level modules imported anywhere in ``packages`` (function-level imports too)."""
    names: set[str] = set()
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names


def _distributions_of(modules: set[str]) -> set[str]:
    owners = packages_distributions()
    return {d.lower().replace("_", "-") for m in modules for d in owners.get(m, ())}


def _product_text() -> str:
    return "\n".join(p.read_text() for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py"))


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if match:
            pins[match[1].lower().replace("_", "-")] = match[2]
    return pins


def test_every_runtime_dependency_is_used_by_the_product():
    used = _distributions_of(_modules_imported(PRODUCT))
    text = _product_text()
    unused = [name for name in RUNTIME
              if name not in used and not (name in DRIVERS and DRIVERS[name] in text)]
    assert unused == [], f"runtime dependencies no product module uses: {unused}"


def test_the_check_of_use_sees_an_unused_dependency():
    # The same reading finds nothing of a distribution nobody imports.
    assert "fakeredis" not in _distributions_of(_modules_imported(PRODUCT))
    assert "dramatiq" in _distributions_of({"dramatiq"})


def test_dramatiq_and_pika_have_upper_bounds():
    # bus/brokers/rabbitmq.py and bus/publish.py use their private APIs.
    for name in ("dramatiq", "pika"):
        bounds = [spec for spec in RUNTIME[name].specifier if spec.operator in ("<", "<=")]
        assert bounds, f"{name} has no upper bound: {RUNTIME[name]}"


def test_the_lock_pins_every_dependency_within_its_bounds():
    pins = _locked()
    for name, requirement in {**RUNTIME, **DEV}.items():
        assert name in pins, f"{name} is not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name]} outside {requirement}"


def test_the_installed_runtime_dependencies_are_the_locked_versions():
    pins = _locked()
    wrong = {name: (version(name), pins[name]) for name in RUNTIME
             if version(name) != pins[name]}
    assert wrong == {}, f"installed != locked (run scripts/bootstrap.sh): {wrong}"


def test_bootstrap_installs_the_lock_and_resolves_nothing_else():
    script = (ROOT / "scripts" / "bootstrap.sh").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert re.search(r'^LOCK="\$ROOT/requirements\.lock"$', code, flags=re.M), code
    assert re.search(r'pip install (-q )?-r "\$LOCK"', code), code
    installs = re.findall(r"pip install[^\n]*", code)
    assert all('-r "$LOCK"' in line or "--no-deps" in line for line in installs), installs


def test_fakeredis_is_either_used_by_the_tests_or_not_a_dependency():
    declared = "fakeredis" in RUNTIME or "fakeredis" in DEV or "fakeredis" in _locked()
    used = "fakeredis" in _modules_imported(("tests",))
    assert declared == used, f"fakeredis declared={declared} used by tests={used}"
    assert "fakeredis" not in _modules_imported(PRODUCT)


def test_a_type_checker_runs_over_bus_and_coexistence_in_the_suite():
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    assert re.search(r"^mypy\b", test_sh, flags=re.M), "scripts/test.sh does not run mypy"
    assert {"bus", "coexistence"} <= set(PYPROJECT["tool"]["mypy"]["files"])
    assert "mypy" in DEV

"""docs/architecture.md "Which layer retries what" states the figures the code has: every
``NAME`` = VALUE [unit] in that section is the constant of that name, every setting it names
exists, and the defaults it states are the settings' defaults."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from workers.config import Settings, env_names_of

DOC = Path(__file__).parents[2] / "docs" / "architecture.md"
MODULES = ("workers.cloud_erp", "workers.router.handlers", "workers.router.lease",
           "workers.xref_sql", "bus.retry",
           "bus.budget", "bus.outbox", "bus.brokers.rabbitmq", "bus.brokers.sqlite",
           "bus.dlq_drain")
_FIGURE = re.compile(r"`([A-Z][A-Z0-9_]+)` = ([0-9][0-9.,]*) ?(ms|s|min|h)?\b")
_TO_S = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0}


def section() -> str:
    text = DOC.read_text()
    return text.split("## Which layer retries what", 1)[1].split("\n## ", 1)[0]


def _constant(name: str) -> list[tuple[str, object]]:
    found = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        if name in vars(module):
            found.append((module_name, vars(module)[name]))
    return found


def test_every_figure_in_the_section_is_the_codes():
    figures = _FIGURE.findall(section())
    assert len(figures) >= 18, figures  # the table is there and the pattern reads it
    for name, raw, unit in figures:
        stated = float(raw.replace(",", ""))
        found = _constant(name)
        assert found, f"{name} is not a constant of {', '.join(MODULES)}"
        for module_name, value in found:
            if name.endswith("_MS"):
                actual_s = value / 1000
            elif name.endswith("_S"):
                actual_s = value
            else:
                assert unit == "", f"{name} is a count, the page gives it in {unit}"
                assert value == stated, f"{module_name}.{name} is {value}, the page says {raw}"
                continue
            assert unit, f"{name} needs a unit on the page"
            assert abs(actual_s - stated * _TO_S[unit]) < 1e-9, \
                f"{module_name}.{name} is {value}, the page says {raw} {unit}"


def test_every_setting_it_names_exists_and_defaults_to_the_code():
    text = section()
    known = set(env_names_of(Settings).values())
    named = set(re.findall(r"`(COEXIST_[A-Z_]+)`", text))
    assert {"COEXIST_RETRY_BUDGET", "COEXIST_RETRY_DELIVERY_S", "COEXIST_RETRY_MAX_RETRIES",
            "COEXIST_CLOUD_RETRY_ATTEMPTS"} <= named
    # ``COEXIST_RETRY_*`` in the text: the family, not a setting
    assert named - {"COEXIST_RETRY_"} <= known, named - known


def test_the_other_figures_of_the_table():
    from workers.bootstrap import run_router
    from workers.portal.delivery import SCHEDULE_S

    text = section()
    assert "8 attempts over about 27.5 h" in text and len(SCHEDULE_S) == 8
    assert abs(sum(SCHEDULE_S) / 3600 - 27.5) < 0.1
    assert "polls every 0.2 s" in text
    assert inspect.signature(run_router).parameters["poll_s"].default == 0.2
    assert "30 s" in text and Settings().bus_lease_s == 30

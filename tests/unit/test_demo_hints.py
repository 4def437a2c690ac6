"""The demo's closing hints: whole commands one a line (a terminal may wrap them, the demo
never does), a record the demo really touched, and why a reconciliation afterwards reports
drift."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from workers.cli.demo import closing_hints


def scenario(**kw):
    base = dict(strays=[("cloud", "customer", "10007"), ("legacy", "order", "1001")],
                edits=[("legacy", "customer", "10001")],
                edited_after_cloud_only={("customer", "10002"), ("product", "ELE-1")})
    return SimpleNamespace(**{**base, **kw})


def test_every_suggested_command_is_one_whole_line():
    lines = closing_hints(Path("/tmp/demo home"), scenario())
    commands = [line.strip() for line in lines if line.startswith("  ")]
    assert commands[0] == "export COEXIST_HOME='/tmp/demo home'"
    assert "coexist cloud-sim --db '/tmp/demo home/cloud.db' --port 8099 &" in commands
    assert ("COEXIST_CLOUD_URL=http://127.0.0.1:8099 coexist reconcile --output findings.jsonl"
            in commands)
    for command in commands:
        assert command.startswith(("export ", "coexist ", "COEXIST_CLOUD_URL=")), command
    assert "source .venv/bin/activate" in "\n".join(lines)
    assert not any("python -m" in line for line in lines)


def test_the_trace_hint_names_a_record_the_demo_touched():
    lines = closing_hints(Path("/d"), scenario())
    assert "  coexist trace customer:10007    # a stray write, reported and repaired" in lines
    lines = closing_hints(Path("/d"), scenario(strays=[]))
    assert any(line.startswith("  coexist trace customer:10001") for line in lines)


def test_the_drift_after_cloud_only_is_explained_with_its_size():
    text = "\n".join(closing_hints(Path("/d"), scenario()))
    assert "Expect drift there, and exit 1" in text
    assert "people then edited 2 record(s) in the cloud (customer, product)" in text
    quiet = "\n".join(closing_hints(Path("/d"), scenario(edited_after_cloud_only=set())))
    assert "Expect drift" not in quiet

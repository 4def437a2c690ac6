"""``coexist edi status`` and ``coexist edi documents`` list the 810s held for their order's
856 (``edi_held``): held within the hold (no failure), past it (exit 1: no poll sent it)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from click.testing import CliRunner
from sqlalchemy import update

from tests.support.edi_world import ordered_and_invoiced
from workers.cli import cli
from workers.edi import handlers
from workers.edi.store import DOCUMENT, HELD


def test_edi_status_and_documents_list_held_810s(tmp_path):
    now = datetime.now(UTC)
    world = ordered_and_invoiced(tmp_path, now, ack_window_minutes=60,
                                 hold_810_for_856_minutes=60)
    engine, deps, key, envs, env = world.engine, world.deps, world.key, world.envs, world.env
    assert [o.status for o in handlers.handle_events(envs, deps)] == ["sent", "held"]
    with engine.begin() as conn:  # the partner acknowledged the 855: no ack problem left
        conn.execute(update(DOCUMENT).values(ack_status="A"))

    run = CliRunner().invoke
    status = run(cli, ["edi", "status", "--format", "json"], env=env)
    assert status.exit_code == 0, status.output  # held within its hold: not a failure
    [row] = json.loads(status.output)
    assert (row["problem"], row["partner"], row["type"], row["business"], row["order"],
            row["waits_for"]) == ("held", "ACME", "810", "invoice:55001", f"order:{key}", "856")
    assert 0 <= row["age_s"] < 600
    table = run(cli, ["edi", "status"], env=env)
    assert "documents held for the one of their order they follow" in table.output
    assert "invoice:55001" in table.output and "856" in table.output

    docs = run(cli, ["edi", "documents", f"order:{key}"], env=env)
    assert docs.exit_code == 0, docs.output
    assert "held" in docs.output and "invoice:55001" in docs.output
    assert "not numbered" in docs.output and "855" in docs.output
    only_held = run(cli, ["edi", "documents", "invoice:55001"], env=env)
    assert only_held.exit_code == 0 and "invoice:55001" in only_held.output
    by_corr = run(cli, ["edi", "documents", envs[1].correlation_id], env=env)
    assert by_corr.exit_code == 0 and "invoice:55001" in by_corr.output
    assert run(cli, ["edi", "documents", "invoice:nope"], env=env).exit_code == 1

    # Past its hold and no poll sent it: status fails and says so.
    with engine.begin() as conn:
        conn.execute(update(HELD).values(release_after=datetime(2020, 1, 1, tzinfo=UTC)))
    engine.dispose()
    late = run(cli, ["edi", "status", "--format", "json"], env=env)
    assert late.exit_code == 1
    assert [r["problem"] for r in json.loads(late.output)] == ["held_past_hold"]
    assert "past its hold" in run(cli, ["edi", "status"], env=env).output

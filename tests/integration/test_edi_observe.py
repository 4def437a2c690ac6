"""``coexist trace order:KEY`` shows an order's EDI documents (850, its 997, 855, 810) with
control numbers and acknowledgment state; ``coexist status`` shows each trading partner's
overdue and rejected acknowledgments and its inbound/ and failed/ folders."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

from click.testing import CliRunner
from sqlalchemy import update

from tests.support.edi_world import ordered_and_invoiced
from workers.cli import cli
from workers.edi import handlers
from workers.edi.store import DOCUMENT

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def test_trace_and_status_show_the_orders_edi_documents_and_the_partners_folders(tmp_path):
    world = ordered_and_invoiced(tmp_path, NOW, ack_window_minutes=60,
                                 hold_810_for_856_minutes=0)
    engine, deps, key, envs, env = world.engine, world.deps, world.key, world.envs, world.env
    folder, inbound = world.folder, world.inbound
    assert [o.status for o in handlers.handle_events(envs, deps)] == ["sent", "sent"]
    with engine.begin() as conn:  # the partner's 997 rejected the 810
        conn.execute(update(DOCUMENT).where(DOCUMENT.c.doc_type == "810")
                     .values(ack_status="R", ack_note="AK5 R 5"))
    # One file waiting for a poll for ten minutes, one in failed/.
    waiting = inbound / "late.edi"
    waiting.write_text("ISA")
    os.utime(waiting, (NOW.timestamp(), datetime.now(UTC).timestamp() - 600))
    (folder / "failed" / "bad.edi").write_text("x")
    engine.dispose()

    traced = CliRunner().invoke(cli, ["trace", f"order:{key}", "--format", "json"], env=env)
    assert traced.exit_code == 0, traced.output
    edi = [e for e in json.loads(traced.output)["events"] if e["source"] == "edi"]
    assert [(e["detail"]["direction"], e["detail"]["type"]) for e in edi] == [
        ("in", "850"), ("out", "997"), ("out", "855"), ("out", "810")]
    assert edi[0]["detail"]["isa13"] == 7 and edi[0]["detail"]["ack"] == "A"
    assert [e["detail"]["isa13"] for e in edi[1:]] == [1, 2, 3]
    assert "waiting for its 997" in edi[2]["what"] and "997: rejected" in edi[3]["what"]
    table = CliRunner().invoke(cli, ["trace", f"order:{key}"], env=env)
    assert "EDI 850 from ACME (ISA13 7 GS06 7 ST02 0001" in table.output

    status = CliRunner().invoke(cli, ["status", "--format", "json"], env=env)
    report = json.loads(status.output.splitlines()[0])
    [acme] = report["edi"]
    assert (acme["overdue"], acme["rejected"], acme["inbound_waiting"], acme["failed_files"]) \
        == (1, 1, 1, 1)
    assert status.exit_code == 1
    reasons = [r for r in report["attention"] if r.startswith("EDI partner ACME")]
    assert len(reasons) == 3 and any("waiting in inbound/" in r for r in reasons)
    shown = CliRunner().invoke(cli, ["status"], env=env)
    assert "EDI partner ACME: 1 unacknowledged past 60 min, 1 rejected" in shown.output

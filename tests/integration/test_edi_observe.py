"""``coexist trace order:KEY`` shows an order's EDI documents (850, its 997, 855, 810) with
control numbers and acknowledgment state; ``coexist status`` shows each trading partner's
overdue and rejected acknowledgments and its inbound/ and failed/ folders."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

from click.testing import CliRunner
from sqlalchemy import update

from bus.envelope import new_envelope
from bus.exception_store import ExceptionStore
from coexistence.canonical.models import Invoice, Order
from coexistence.edi import documents
from coexistence.edi.profiles import EdiSettings
from tests.support.edi import partner_toml
from workers.cli import cli
from workers.db import create_state_engine
from workers.edi import handlers
from workers.edi.store import DOCUMENT
from workers.migrate import upgrade as upgrade_schema

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
UNITS = {"WID-01000": "EA", "GIZ-00020": "EA"}


def test_trace_and_status_show_the_orders_edi_documents_and_the_partners_folders(tmp_path):
    folder = tmp_path / "acme"
    config = tmp_path / "coexist.toml"
    config.write_text(partner_toml(folder, ack_window_minutes=60, hold_810_for_856_minutes=0))
    settings = EdiSettings.from_toml(config.read_text())
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    orders: dict[str, Order] = {}
    deps = handlers.EdiDeps(engine, settings, ExceptionStore(engine), unit_of=UNITS.get,
                            get_order=orders.get, clock=lambda: NOW)
    profile = settings.partners[0]
    po = Order.model_validate({
        "key": "0", "customer_key": "10000", "status": "open", "channel": "edi",
        "customer_po": "PO-9", "currency": "USD", "ordered_at": NOW,
        "lines": [{"line_no": 1, "sku": "WID-01000", "quantity": 4, "unit_price": "2.50"}]})
    inbound = deps.folder(profile).ensure().inbound
    (inbound / "po9.edi").write_text(documents.partner_850(profile, po, control=7, at=NOW,
                                                           unit_of=UNITS.get))
    [answered] = handlers.handle_inbound(deps)
    [key] = answered.orders
    order = po.model_copy(update={"key": key})
    orders[key] = order
    invoice = Invoice.model_validate({
        "key": "55001", "order_key": key, "customer_key": "10000", "status": "open",
        "currency": "USD", "issued_on": "2026-06-03", "due_on": "2026-07-03",
        "tax_amount": "0", "lines": [{"line_no": 1, "sku": "WID-01000", "description": "w",
                                      "quantity": 4, "unit_price": "2.50"}]})
    envs = [new_envelope(domain=r.domain, kind="event", key=r.key,
                         payload={"record": r.model_dump(mode="json")}, source_system="legacy",
                         source_version=1) for r in (order, invoice)]
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

    env = {"COEXIST_HOME": str(tmp_path), "COEXIST_CONFIG": str(config),
           "COEXIST_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
           "COEXIST_LEGACY_URL": f"sqlite:///{tmp_path / 'nolegacy.db'}",
           "COEXIST_CLOUD_URL": "", "COEXIST_BROKER_URL": "", "COEXIST_REDIS_URL": ""}
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

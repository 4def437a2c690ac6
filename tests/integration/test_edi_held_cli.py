"""``coexist edi status`` and ``coexist edi documents`` list the 810s held for their order's
856 (``edi_held``): held within the hold (no failure), past it (exit 1: no poll sent it)."""

from __future__ import annotations

import json
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
from workers.edi.store import DOCUMENT, HELD
from workers.migrate import upgrade as upgrade_schema

UNITS = {"WID-01000": "EA"}


def test_edi_status_and_documents_list_held_810s(tmp_path):
    now = datetime.now(UTC)
    folder = tmp_path / "acme"
    config = tmp_path / "coexist.toml"
    config.write_text(partner_toml(folder, ack_window_minutes=60, hold_810_for_856_minutes=60))
    settings = EdiSettings.from_toml(config.read_text())
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    orders: dict[str, Order] = {}
    deps = handlers.EdiDeps(engine, settings, ExceptionStore(engine), unit_of=UNITS.get,
                            get_order=orders.get, clock=lambda: now)
    profile = settings.partners[0]
    po = Order.model_validate({
        "key": "0", "customer_key": "10000", "status": "open", "channel": "edi",
        "customer_po": "PO-9", "currency": "USD", "ordered_at": now,
        "lines": [{"line_no": 1, "sku": "WID-01000", "quantity": 4, "unit_price": "2.50"}]})
    inbound = deps.folder(profile).ensure().inbound
    (inbound / "po9.edi").write_text(documents.partner_850(profile, po, control=7, at=now,
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
    assert [o.status for o in handlers.handle_events(envs, deps)] == ["sent", "held"]
    with engine.begin() as conn:  # the partner acknowledged the 855: no ack problem left
        conn.execute(update(DOCUMENT).values(ack_status="A"))

    env = {"COEXIST_HOME": str(tmp_path), "COEXIST_CONFIG": str(config),
           "COEXIST_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
           "COEXIST_LEGACY_URL": f"sqlite:///{tmp_path / 'nolegacy.db'}",
           "COEXIST_CLOUD_URL": "", "COEXIST_BROKER_URL": "", "COEXIST_REDIS_URL": ""}
    run = CliRunner().invoke
    status = run(cli, ["edi", "status", "--format", "json"], env=env)
    assert status.exit_code == 0, status.output  # held within its hold: not a failure
    [row] = json.loads(status.output)
    assert (row["problem"], row["partner"], row["type"], row["business"], row["order"]) == (
        "held", "ACME", "810", "invoice:55001", f"order:{key}")
    table = run(cli, ["edi", "status"], env=env)
    assert "810s held for their order's 856" in table.output and "invoice:55001" in table.output

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

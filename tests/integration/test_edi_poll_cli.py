"""``coexist edi poll``: one pass for cron, reading units from the system of record (the
legacy ERP, the flag's SoR) without a cloud URL; exit 1 when a file went to failed/."""

from __future__ import annotations

from datetime import UTC, datetime

from click.testing import CliRunner

from coexistence.canonical.models import Order
from coexistence.edi import documents
from coexistence.edi.profiles import EdiSettings
from coexistence.sample import SampleSpec
from tests.support.edi import partner_toml
from workers.cli import cli
from workers.db import create_state_engine
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.legacy_erp.seed import seed_legacy
from workers.migrate import upgrade as upgrade_schema

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def test_one_poll_answers_the_waiting_850s_from_the_sors_catalogue(tmp_path):
    legacy = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(legacy)
    seed_legacy(legacy, SampleSpec(customers=2, products=4), domains=["customer", "product"])
    erp = LegacyErp(legacy)
    customer = next(iter(erp.stream("customer"))).key
    units = {p.key: str(p.unit) for p in erp.stream("product")}
    legacy.dispose()
    state = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(state)
    state.dispose()
    config = tmp_path / "coexist.toml"
    config.write_text(partner_toml(tmp_path / "acme", [customer]))
    profile = EdiSettings.from_toml(config.read_text()).partners[0]
    sku = sorted(units)[0]
    order = Order.model_validate({
        "key": "0", "customer_key": customer, "status": "open", "channel": "edi",
        "customer_po": "PO-1", "currency": "USD", "ordered_at": NOW,
        "lines": [{"line_no": 1, "sku": sku, "quantity": 3, "unit_price": "2.50"}]})
    inbound = tmp_path / "acme" / "inbound"
    inbound.mkdir(parents=True)
    (inbound / "po1.edi").write_text(documents.partner_850(profile, order, control=1, at=NOW,
                                                           unit_of=units.get))
    env = {"COEXIST_HOME": str(tmp_path), "COEXIST_CONFIG": str(config), "COEXIST_CLOUD_URL": "",
           "COEXIST_STATE_URL": "", "COEXIST_LEGACY_URL": "", "COEXIST_BROKER_URL": "",
           "COEXIST_REDIS_URL": ""}
    first = CliRunner().invoke(cli, ["edi", "poll"], env=env)
    assert first.exit_code == 0, first.output
    assert "1 inbound file(s) answered (0 to failed/, 1 order command(s))" in first.output
    assert [p.name for p in (tmp_path / "acme" / "outbound").glob("*.x12")] == [
        "ACME-000000001-997.x12"]
    (inbound / "junk.edi").write_text("not x12 at all")
    second = CliRunner().invoke(cli, ["edi", "poll"], env=env)
    assert second.exit_code == 1 and "1 to failed/" in second.output
    assert (tmp_path / "acme" / "failed" / "junk.edi").exists()

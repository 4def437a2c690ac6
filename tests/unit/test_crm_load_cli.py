"""``coexist crm load`` and ``coexist crm resume`` on fakes: every record from its SoR into
the CRM once, repeatable without regressing what the channel showed since."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from click.testing import CliRunner

from coexistence.crm.ports import VERSION_FIELD
from coexistence.router import CLOUD, LEGACY, routed_version
from coexistence.sample import SampleSpec
from tests.support.crm import ListReports, event
from workers.bootstrap import App
from workers.cli import cli
from workers.config import CrmSection, Settings
from workers.crm import state
from workers.crm.handlers import sync_outbound
from workers.crm_memory import InMemoryCrm
from workers.erp_memory import InMemoryErp

SPEC = SampleSpec(customers=12, seed=9)


def test_load_shows_every_record_from_its_sor_and_never_regresses_a_newer_one(tmp_path):
    legacy, cloud, crm = InMemoryErp(LEGACY), InMemoryErp(CLOUD), InMemoryCrm()
    customers = list(SPEC.iter("customer"))
    orders = [SPEC.record("order", i) for i in range(5)]
    for r in customers + orders:
        legacy.person_upsert(r, "JSMITH")
    # The channel showed customer 0 from a routed change already (version 1/5).
    newer = customers[0].model_copy(update={"credit_limit": customers[0].credit_limit + 1})
    sync_outbound([event(newer, 5)], crm=crm, reports=ListReports())
    settings = Settings(home=tmp_path, crm=CrmSection(url="http://crm.invalid", client_id="c"),
                        crm_client_secret="x")
    app = App(settings, state=_file_state(tmp_path), erps={LEGACY: legacy, CLOUD: cloud},
              crm=crm)
    try:
        result = CliRunner().invoke(cli, ["crm", "load"], obj=app)
        assert result.exit_code == 0, result.output
        assert "customer: stale 1, synced 11" in result.output
        shown = crm.records["Account"]
        assert set(shown) == {c.key for c in customers}
        assert shown[newer.key]["Credit_Limit__c"] == float(newer.credit_limit)
        assert shown[newer.key][VERSION_FIELD] == routed_version(1, 5)
        assert set(crm.records["Order"]) >= {o.key for o in orders}
        again = CliRunner().invoke(cli, ["crm", "load", "--domain", "customer"], obj=app)
        assert again.exit_code == 0 and "customer: stale 1, synced 11" in again.output
        assert "order" not in again.output
        assert crm.records["Account"][newer.key][VERSION_FIELD] == routed_version(1, 5)
        state.pause(app.state, datetime.now(UTC) + timedelta(hours=1), "budget")
        resumed = CliRunner().invoke(cli, ["crm", "resume"], obj=app)
        assert resumed.exit_code == 0 and "resumed (it was paused until" in resumed.output
        assert state.paused_until(app.state) is None
    finally:
        app.close()


def _file_state(tmp_path):
    """A file database: the command's threads (the flag watcher among them) each get their
    own connection; an in-memory StaticPool shares one, and two of them interleaved
    transactions on it ("cannot start a transaction within a transaction", intermittently)."""
    from workers.db import create_state_engine
    from workers.migrate import upgrade as upgrade_schema

    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    return engine

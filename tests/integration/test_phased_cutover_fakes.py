"""The phased cutover scenario through the real composition root and embedded broker, on fake
ERPs: every step leaves both ERPs equal where the mode says they share records."""

from __future__ import annotations

from coexistence.canonical import DOMAINS
from coexistence.router import CLOUD, LEGACY
from coexistence.sample import SampleSpec
from workers.bootstrap import bootstrap
from workers.config import Settings
from workers.driver import Driver
from workers.erp_memory import InMemoryErp
from workers.scenario import PhasedCutover


def test_a_phased_cutover_on_fakes_keeps_both_erps_equal_and_loops_nothing(tmp_path):
    settings = Settings(home=tmp_path, state_url=f"sqlite:///{tmp_path / 'state.db'}",
                        legacy_url="sqlite://", broker_url=None, queue_type="classic",
                        redis_url=None, redis_prefix="coexist:", cloud_url=None)
    legacy, cloud = InMemoryErp("legacy"), InMemoryErp("cloud")
    spec = SampleSpec(customers=8, products=6)
    for domain in DOMAINS:
        for record in spec.iter(domain):
            legacy.person_upsert(record, "SEED")
    app = bootstrap(settings, erps={LEGACY: legacy, CLOUD: cloud}, create_state=True)
    driver = Driver(app)
    try:
        reports = PhasedCutover(driver, cloud_people=cloud.person_upsert,
                                report=lambda r: None).run()
    finally:
        driver.stop()
    for report in reports:
        for domain, agreement in report.agreements.items():
            assert agreement.agrees, (report.title, domain, agreement)
    assert set(reports[-1].modes.values()) == {"cloud_only"}
    assert {d for d in DOMAINS} == set(reports[0].agreements)

"""Two processes' CRM pollers on one state database: only the lease holder reads the feed, and
a poller that lost the lease mid-turn commits nothing (its fence rolls the turn back), so a
person's new CRM account becomes exactly one command whoever polls."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from bus.outbox import OutboxRecord
from coexistence.router import CLOUD, LEGACY
from workers.bootstrap import App
from workers.config import CrmSection, Settings, SubscriptionSection
from workers.crm.consumer import CrmPoller, runs_crm
from workers.crm_memory import InMemoryCrm
from workers.db import create_state_engine
from workers.erp_memory import InMemoryErp
from workers.migrate import upgrade
from workers.router.lease import LeaseLost


def _commands(engine) -> list[str]:
    t = OutboxRecord.__table__
    with Session(engine) as s:
        return list(s.execute(select(t.c.partition_key).where(
            t.c.queue_name == "coexist.command")).scalars())


def test_only_the_holder_polls_and_a_poller_that_lost_the_lease_commits_nothing(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(engine)
    crm = InMemoryCrm()
    erps = {LEGACY: InMemoryErp(LEGACY), CLOUD: InMemoryErp(CLOUD)}
    settings = Settings(home=tmp_path, crm=CrmSection(url="http://crm.invalid", client_id="c"),
                        crm_client_secret="x",
                        subscriptions={"crm": SubscriptionSection(domains=("customer",))})
    apps = [App(settings, state=engine, erps=erps, crm=crm) for _ in range(2)]
    try:
        assert all(runs_crm(app) for app in apps)
        a, b = (CrmPoller(app, interval_s=0.1) for app in apps)
        crm.person_create("Account", {"Name": "Walk-in Hardware", "BillingPostalCode": "80202"})
        assert a.run_once() is not None  # a holds the lease now
        assert b.run_once() is None      # b stands by
        assert len(_commands(engine)) == 1
        crm.person_create("Account", {"Name": "Other Company", "BillingPostalCode": "10001"})
        # a stalls; its lease runs out and b takes over before a commits its turn.
        with engine.begin() as conn:
            conn.execute(text("UPDATE capture_lease SET expires_at_ms = 0 "
                              "WHERE name = 'crm.inbound'"))
        assert b.lease.try_acquire()
        with pytest.raises(LeaseLost):
            a.run_once()
        assert len(_commands(engine)) == 1  # a's turn rolled back
        stats = b.run_once()
        assert stats is not None and stats.created == 1
        assert len(_commands(engine)) == 2
        assert a.run_once() is None  # a knows it lost the lease
    finally:
        for app in apps:
            app.close()
        engine.dispose()

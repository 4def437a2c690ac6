"""Channel handlers through the real composition root get batches and, when they ask for
it, their subscription's inbox: the embedded broker, the real relay, worker and middleware;
ERPs are in-memory fakes."""

from __future__ import annotations

from sqlalchemy import text, update

from bus import inbox
from bus.exception_store import ExceptionStore
from bus.inbox import DUPLICATES
from bus.outbox import OutboxRecord
from coexistence.flags import FlagState, Mode, Rollout
from coexistence.router import CLOUD, LEGACY
from tests.integration.test_router_runtime import CUSTOMER
from workers.bootstrap import bootstrap
from workers.config import Settings
from workers.driver import Driver
from workers.erp_memory import InMemoryErp
from workers.router.queues import Subscription

CUSTOMERS = 120


def test_a_channel_gets_batches_and_its_inbox_absorbs_a_second_delivery(tmp_path):
    # The embedded default; the batch path on RabbitMQ is proven by test_batch_crash.py and
    # the channel wiring on RabbitMQ by test_router_runtime.py.
    broker_url = None
    settings = Settings(
        home=tmp_path, state_url=f"sqlite:///{tmp_path / 'state.db'}",
        legacy_url=f"sqlite:///{tmp_path / 'legacy.db'}", broker_url=broker_url,
        queue_type="classic", redis_url=None, redis_prefix="coexist:", cloud_url=None,
    )
    sizes: list[int] = []

    @inbox.uses_inbox
    def handle(envelopes) -> None:
        sizes.append(len(envelopes))
        inbox.current().execute(text("INSERT INTO probe_effect VALUES (:m)"),
                                [{"m": e.message_id} for e in envelopes])

    app = bootstrap(settings, erps={LEGACY: InMemoryErp("legacy"), CLOUD: InMemoryErp("cloud")},
                    subscriptions=[Subscription("probe", frozenset({"customer"}))],
                    channel_handlers={"probe": handle}, create_state=True)
    app.broker.flush_all()
    with app.state.begin() as conn:
        conn.execute(text("CREATE TABLE probe_effect (message_id TEXT NOT NULL)"))
    actor = app.actors["channel_probe"]
    assert actor.options["inbox"] == "probe" and callable(actor.options["batch"])
    driver = Driver(app)
    try:
        old = app.flags.state("customer")
        app.flags.apply([FlagState("customer", Mode.SHADOW, Mode.SHADOW, Rollout(),
                                   old.version + 1)])
        for i in range(CUSTOMERS):
            app.erps[LEGACY].person_upsert(CUSTOMER.model_copy(update={"key": str(30000 + i)}),
                                           "JSMITH")
        driver.settle()
        duplicates = DUPLICATES.labels(consumer="probe")._value.get()
        # As if the relay crashed before marking its rows: everything is published again.
        with app.state.begin() as conn:
            conn.execute(update(OutboxRecord.__table__).values(sent_at=None))
        driver.settle()
        with app.state.connect() as conn:
            rows, distinct = conn.execute(text(
                "SELECT count(*), count(DISTINCT message_id) FROM probe_effect")).one()
        assert (rows, distinct) == (CUSTOMERS, CUSTOMERS)
        assert DUPLICATES.labels(consumer="probe")._value.get() - duplicates == CUSTOMERS
        assert max(sizes) > 1, "the channel handler was only ever called with one envelope"
        assert ExceptionStore(app.state).open_count() == 0
    finally:
        driver.stop()

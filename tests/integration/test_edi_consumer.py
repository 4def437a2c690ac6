"""The edi channel's consumer as the composition root wires it: registered for
``[subscriptions.edi]``, given batches, a technical error retried as a whole batch without
sending anything twice."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bus.errors import TechnicalError
from bus.exception_store import ExceptionStore
from coexistence.edi.profiles import EdiSettings
from tests.integration.test_edi_channel import (
    KNOWN,
    _accept_order,
    event,
    outbound,
    shipment_of,
)
from tests.support import edi as support
from workers.bootstrap import App, channel_handlers_for
from workers.config import Settings, SubscriptionSection
from workers.db import create_state_engine
from workers.edi import handlers
from workers.edi.consumer import channel_handler
from workers.migrate import upgrade as upgrade_schema

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def app(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    orders: dict = {}
    deps = handlers.EdiDeps(engine, EdiSettings(partners=(support.profile(str(tmp_path / "a")),)),
                            ExceptionStore(engine), unit_of=KNOWN.get, get_order=orders.get,
                            clock=lambda: NOW)
    deps.orders = orders  # type: ignore[attr-defined]
    sub = {"edi": SubscriptionSection(domains=("order", "shipment", "invoice"))}
    yield App(Settings(home=tmp_path, subscriptions=sub), edi=deps)
    engine.dispose()


def test_the_composition_root_runs_the_edi_channel_for_subscription_edi(app):
    assert set(channel_handlers_for(app)) == {"edi"}
    assert channel_handlers_for(App(Settings(home=app.settings.home))) == {}


def test_a_batch_with_a_technical_error_is_retried_whole_and_nothing_is_sent_twice(app):
    deps = app.edi
    order = _accept_order(deps)
    deps.orders.pop(order.key)  # the SoR does not have the order yet: the 856 cannot be built
    handle = channel_handler(app)
    batch = [event(order), event(shipment_of(order))]
    with pytest.raises(TechnicalError, match="not in the system of record yet"):
        handle(batch)
    folder = deps.folder(deps.settings.partner("ACME"))
    assert len(outbound(folder, "855")) == 1 and outbound(folder, "856") == []
    deps.orders[order.key] = order
    outcomes = handle(batch)  # the retry: the same batch
    assert [o.status for o in outcomes] == ["duplicate", "sent"]
    assert len(outbound(folder, "855")) == 1 and len(outbound(folder, "856")) == 1
    assert [o.status for o in handle(event(order))] == ["duplicate"]  # a lone envelope too

"""EDI worlds for the channel's tests.

* ``ordered_and_invoiced``: a partner's order and invoice on SQLite state, for the CLI
  tests: one 850 taken from the partner's ``inbound/``, then the order's and its invoice's
  events ready for ``handlers.handle_events`` (the caller asserts what they became).
* ``worker_world``: what a real ``coexist worker`` process needs for the channel:
  PostgreSQL state at head, the legacy reference ERP (SQLite, 4 customers and 20 products)
  as the SoR, a config naming the partner, and the process environment."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from bus.envelope import Envelope, new_envelope
from bus.exception_store import ExceptionStore
from coexistence.canonical.models import Invoice, Order
from coexistence.edi import documents
from coexistence.edi.profiles import EdiSettings
from coexistence.sample import SampleSpec
from tests.support.edi import partner_toml
from tests.support.processes import coexist_env
from workers.config import Settings
from workers.db import create_state_engine
from workers.edi import handlers
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.legacy_erp.seed import seed_legacy
from workers.migrate import upgrade as upgrade_schema

UNITS = {"WID-01000": "EA"}


@dataclass
class OrderedAndInvoiced:
    config: Path
    folder: Path
    inbound: Path
    engine: Engine
    deps: handlers.EdiDeps
    key: str
    envs: list[Envelope]  # the order's event, then its invoice's
    env: dict[str, str]  # the CLI's environment for this home


def ordered_and_invoiced(tmp_path: Path, now: datetime, **toml: Any) -> OrderedAndInvoiced:
    folder = tmp_path / "acme"
    config = tmp_path / "coexist.toml"
    config.write_text(partner_toml(folder, **toml))
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
    env = {"COEXIST_HOME": str(tmp_path), "COEXIST_CONFIG": str(config),
           "COEXIST_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
           "COEXIST_LEGACY_URL": f"sqlite:///{tmp_path / 'nolegacy.db'}",
           "COEXIST_CLOUD_URL": "", "COEXIST_BROKER_URL": "", "COEXIST_REDIS_URL": ""}
    return OrderedAndInvoiced(config, folder, inbound, engine, deps, key, envs, env)


#: The edi channel's subscription, as a deployment's config holds it.
SUBSCRIPTION_TOML = """
[subscriptions.edi]
domains = ["order", "shipment", "invoice"]
kinds = ["event"]

"""


@contextmanager
def worker_world(tmp_path: Path, cloud_url: str, pg_url: str, amqp: str,
                 partner: Callable[[str], tuple[Path, str]], *,
                 claim_timeout_s: str = "2") -> Iterator[dict[str, Any]]:
    """The parts for ``coexist worker`` processes on the edi channel; ``partner(customer)``
    gives the partner's folder and its ``[[edi.partners]]`` block for that customer (the
    first of the seeded ones).  Yields home, env, state (engine), erp, profile, customer,
    skus, units, settings and folder."""
    state = create_state_engine(pg_url)
    upgrade_schema(state)
    legacy = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    try:
        create_legacy_schema(legacy)
        seed_legacy(legacy, SampleSpec(customers=4, products=20),
                    domains=["customer", "product"])
        erp = LegacyErp(legacy)
        customer = next(iter(erp.stream("customer"))).key
        units = {p.key: str(p.unit) for p in erp.stream("product")}
        folder, block = partner(customer)
        config = tmp_path / "coexist.toml"
        config.write_text(SUBSCRIPTION_TOML + block)
        env = coexist_env(tmp_path, state_url=pg_url,
                          legacy_url=f"sqlite:///{tmp_path / 'legacy.db'}", cloud_url=cloud_url,
                          broker_url=amqp, config=str(config), edi_poll_s="0.2",
                          edi_claim_timeout_s=claim_timeout_s)
        yield {"home": tmp_path, "env": env, "state": state, "erp": erp,
               "profile": EdiSettings.from_toml(config.read_text()).partners[0],
               "customer": customer, "skus": sorted(units)[:4], "units": units,
               "settings": Settings(home=tmp_path, state_url=pg_url, broker_url=amqp),
               "folder": folder}
    finally:
        state.dispose()
        legacy.dispose()

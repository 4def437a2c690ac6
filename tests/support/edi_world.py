"""An EDI partner's order and invoice on SQLite state, for the CLI tests of the channel:
one 850 taken from the partner's ``inbound/``, then the order's and its invoice's events
ready for ``handlers.handle_events`` (the caller asserts what they became)."""

from __future__ import annotations

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
from tests.support.edi import partner_toml
from workers.db import create_state_engine
from workers.edi import handlers
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

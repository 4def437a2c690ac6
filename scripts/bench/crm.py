"""CRM channel throughput against the CRM simulator, with its baseline in the same run.

Prints one JSON line per figure:

* ``crm_accounts_batched``: accounts synced per second through the outbound handler
  (``workers.crm.handlers.sync_outbound``: router-shaped events -> mapping -> one sObject
  Collections request per 200 -> per-record results), updating accounts that exist, against
  the baseline: the same handler and adapter fed one envelope at a time, so every account
  is its own request.  Targets: ratio >= 5 and >= 1,000 accounts/s.
* ``crm_accounts_first_load``: the same, creating the accounts (the duplicate rule and id
  allocation run for each), batched only: what a first sync of the customer base costs.

* ``crm_accounts_end_to_end``: SoR change -> CRM record updated through the production
  path: people's edits of ``--e2e`` customers in the legacy reference ERP (SQLite), the
  router's capture, the outbox, the embedded broker, the ``crm`` subscription's consumer
  (``workers.crm.consumer``, 8 worker threads) and the CRM simulator, timed from the first
  edit committed to the last account showing it (read back through the CRM's API); its
  baseline is the one-by-one figure above.  Until the bus's batch consumer hands the
  consumer real batches, each delivery is one message, so this path sends one request per
  account too.

The first two figures are the handler and the simulator on one machine.  Rounds of
batched and one-by-one alternate so load from other processes hits both alike.  Usage:
``python scripts/bench/crm.py [--accounts 4000] [--single 600] [--rounds 3] [--e2e 1000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bus.envelope import new_envelope  # noqa: E402
from coexistence.crm.mapping import account_fields  # noqa: E402
from coexistence.sample import iter_customers  # noqa: E402
from workers.crm.client import CrmClient  # noqa: E402
from workers.crm.handlers import Outcome, sync_outbound  # noqa: E402
from workers.crm_sim import duplicates, start_crm_simulator  # noqa: E402
from workers.router import queues  # noqa: E402

BATCH = 200


class _Reports:
    """Refusals would fail the run below; nothing to keep."""

    def report(self, **_):
        pass


def _events(customers, version: int):
    """Router-shaped canonical events (what the CRM subscription receives)."""
    out = []
    for c in customers:
        record = c.model_copy(update={"credit_limit": Decimal(version * 100)})
        out.append(new_envelope(
            domain="customer", kind=queues.KIND_EVENT, key=c.key,
            payload={"record": record.model_dump(mode="json")}, source_system="legacy",
            source_version=version, schema_version=2, flag_version=1))
    return out


def _run(crm: CrmClient, envs, batch: int) -> float:
    reports = _Reports()
    started = time.perf_counter()
    for start in range(0, len(envs), batch):
        results = sync_outbound(envs[start:start + batch], crm=crm, reports=reports)
        bad = [r for r in results if r.outcome is not Outcome.SYNCED]
        if bad:
            raise RuntimeError(f"{len(bad)} not synced, e.g. {bad[0]}")
    return time.perf_counter() - started


def _end_to_end(customers, sim, secret: str, tmp: Path) -> dict:
    """The production path, in one process: capture, relay, broker, consumer, CRM."""
    from workers.bootstrap import bootstrap
    from workers.cloud_sim import start_simulator
    from workers.config import CrmSection, Settings, SubscriptionSection
    from workers.crm_sim.admin import CrmSimulatorAdmin
    from workers.driver import Driver
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema

    home = tmp / "e2e"
    home.mkdir()
    legacy_url = f"sqlite:///{home / 'legacy.db'}"
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    admin = CrmSimulatorAdmin(sim.url)
    # The rounds above wrote these accounts under flag version 1; a flag change since (v5,
    # still legacy) makes the SoR's new changes newer, as a real cutover step would.
    from coexistence.flags import FlagState, Mode, Rollout
    from workers.db import create_state_engine
    from workers.flags import SqlFlagStore
    from workers.migrate import upgrade

    state = create_state_engine(f"sqlite:///{home / 'state.db'}")
    upgrade(state)
    store = SqlFlagStore(state)
    for version in range(1, 6):
        store.commit(store.load()["customer"],
                     FlagState("customer", Mode.LEGACY, Mode.LEGACY, Rollout(), version),
                     actor="bench", reason="bench", action="set")
    state.dispose()
    with start_simulator(home / "cloud.db") as cloud:
        settings = Settings(
            home=home, state_url=f"sqlite:///{home / 'state.db'}", legacy_url=legacy_url,
            cloud_url=cloud.url,
            subscriptions={"crm": SubscriptionSection(domains=("customer",))},
            crm=CrmSection(url=sim.url, client_id="bench"), crm_client_secret=secret)
        app = bootstrap(settings, create_state=True)
        driver = Driver(app, threads=8)
        try:
            legacy = LegacyErp(engine)
            marker = Decimal(777_777)
            started = time.perf_counter()
            for c in customers:
                legacy.person_upsert(c.model_copy(update={"credit_limit": marker}), "JSMITH")
            written = time.perf_counter() - started
            driver.settle(timeout_s=600)
            seconds = time.perf_counter() - started
        finally:
            driver.stop()
    keys = {c.key for c in customers}
    rows = admin.query("SELECT Coexist_Id__c, Credit_Limit__c FROM Account")
    shown = {r["Coexist_Id__c"] for r in rows
             if r["Coexist_Id__c"] in keys and float(r["Credit_Limit__c"]) == float(marker)}
    admin.close()
    engine.dispose()
    if shown != keys:
        raise RuntimeError(f"{len(keys - shown)} account(s) not updated end to end")
    return {"accounts": len(keys), "seconds": round(seconds, 2),
            "sor_writes_s": round(written, 2), "records_per_s": round(len(keys) / seconds),
            "after_writes_per_s": round(len(keys) / (seconds - written))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=4000)
    parser.add_argument("--single", type=int, default=600,
                        help="accounts per one-by-one round (it is the slow side)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--e2e", type=int, default=1000,
                        help="accounts through the production path (0: skip)")
    args = parser.parse_args()
    # Distinct companies only: the sample has a few look-alikes the duplicate rule refuses.
    seen, customers = set(), []
    for c in iter_customers(args.accounts * 2, seed=4):
        match = duplicates.keys_of(account_fields(c))[:2]
        if match not in seen:
            seen.add(match)
            customers.append(c)
        if len(customers) == args.accounts:
            break
    secret = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory() as tmp, \
            start_crm_simulator(Path(tmp) / "crm.db", clients={"bench": secret}) as sim:
        crm = CrmClient(sim.url, client_id="bench", client_secret=secret)
        version = 1
        first = _run(crm, _events(customers, version), BATCH)
        print(json.dumps({"name": "crm_accounts_first_load", "accounts": len(customers),
                          "records_per_s": round(len(customers) / first),
                          "load_avg": os.getloadavg()[0]}), flush=True)
        batched, single = [], []
        for _ in range(args.rounds):
            version += 1
            seconds = _run(crm, _events(customers, version), BATCH)
            batched.append(len(customers) / seconds)
            version += 1
            subset = customers[:args.single]
            seconds = _run(crm, _events(subset, version), 1)
            single.append(len(subset) / seconds)
        best, base = max(batched), max(single)
        print(json.dumps({
            "name": "crm_accounts_batched", "accounts": len(customers), "batch": BATCH,
            "records_per_s": round(best), "baseline_per_s": round(base),
            "ratio": round(best / base, 1), "rounds": [round(b) for b in batched],
            "baseline_rounds": [round(s) for s in single], "load_avg": os.getloadavg()[0],
            "targets": {"records_per_s": 1000, "ratio": 5},
        }), flush=True)
        crm.close()
        if args.e2e:
            e2e = _end_to_end(customers[:args.e2e], sim, secret, Path(tmp))
            print(json.dumps({
                "name": "crm_accounts_end_to_end", **e2e, "baseline_per_s": round(base),
                "ratio": round(e2e["records_per_s"] / base, 1),
                "delivery": "one message per delivery (no batch consumer yet)",
                "load_avg": os.getloadavg()[0],
                "targets": {"records_per_s": 1000, "ratio": 5}}), flush=True)


if __name__ == "__main__":
    main()

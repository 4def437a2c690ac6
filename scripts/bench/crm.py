"""CRM channel throughput against the CRM simulator, with its baseline in the same run.

Prints one JSON line per figure:

* ``crm_accounts_batched``: accounts synced per second through the outbound handler
  (``workers.crm.handlers.sync_outbound``: router-shaped events -> mapping -> one sObject
  Collections request per 200 -> per-record results), updating accounts that exist, against
  the baseline: the same handler and adapter fed one envelope at a time, so every account
  is its own request.  Targets: ratio >= 5 and >= 1,000 accounts/s.
* ``crm_accounts_first_load``: the same, creating the accounts (the duplicate rule and id
  allocation run for each), batched only: what a first sync of the customer base costs.

The figure is the handler and the simulator on one machine; the end-to-end figure through
the bus (SoR change -> capture -> outbox -> broker -> CRM) comes when the CRM worker
consumes the router's fan-out.  Rounds of batched and one-by-one alternate so load from
other processes hits both alike.  Usage: ``python scripts/bench/crm.py [--accounts 4000]
[--single 600] [--rounds 3]``.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=4000)
    parser.add_argument("--single", type=int, default=600,
                        help="accounts per one-by-one round (it is the slow side)")
    parser.add_argument("--rounds", type=int, default=3)
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


if __name__ == "__main__":
    main()

"""What the write conditions cost a routed write, with the version-only write as baseline.

Prints one JSON line per target (name, writes_per_s, baseline_per_s, ratio, requests per
write on the cloud, loadavg):

* ``write_condition_legacy``: ``handlers.apply_write`` of a shadow write (customer) into
  the legacy ERP on SQLite with its full context (flags, pins, state database: the
  ``observed_revision`` row after each applied write), against the adapter's
  ``upsert`` alone with the record merged over ``get`` as before (main's path: the
  version check only).
* ``write_condition_cloud``: the same into the cloud simulator (a subprocess on
  loopback), counting HTTP requests per write on both sides.

``without_observation_per_s``: the conditioned write without its ``observed_revision``
row (no state database), which splits the cost between the read and the state
transaction.  Rounds alternate between the baseline and the conditioned path so that load from other
processes hits both alike; the best round of each counts.

Usage: ``python scripts/bench/write_conditions.py [--n 300] [--rounds 3] [--no-cloud]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bus.envelope import new_envelope  # noqa: E402
from coexistence.flags import FlagSource, FlagState, Mode, Rollout  # noqa: E402
from coexistence.ownership import merge_owned  # noqa: E402
from coexistence.router import routed_version  # noqa: E402
from coexistence.sample import iter_customers  # noqa: E402
from workers.db import create_state_engine  # noqa: E402
from workers.legacy_erp.adapter import LegacyErp  # noqa: E402
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema  # noqa: E402
from workers.migrate import upgrade as upgrade_schema  # noqa: E402
from workers.router import handlers, queues  # noqa: E402


def _envelopes(records, flag_version: int, source_version: int):
    return [new_envelope(domain="customer", kind=queues.KIND_UPSERT, key=r.key,
                         payload={"record": r.model_dump(mode="json"), "origin": "erp"},
                         source_system="cloud", source_version=source_version,
                         flag_version=flag_version) for r in records]


def _baseline(target, envs) -> float:
    started = time.perf_counter()
    for env in envs:
        record = handlers._record(env)
        held = target.get(env.domain, env.key)
        record, _ = merge_owned(held, record, "erp")
        target.upsert(record, source_version=routed_version(env.flag_version,
                                                            env.source_version),
                      idempotency_key=env.message_id)
    return time.perf_counter() - started


def _conditioned(target, envs, ctx) -> float:
    started = time.perf_counter()
    for env in envs:
        handlers.apply_write(env, target, lambda *a: None, ctx)
    return time.perf_counter() - started


def _run(name: str, target, records, ctx, rounds: int, count=None) -> dict:
    for r in records:  # the records exist, written by coexist: today's common case
        target.upsert(r, source_version=1, idempotency_key=uuid.uuid4().hex)
    best_base = best_cond = best_bare = float("inf")
    requests: dict[str, float] = {}
    version = 1
    for _ in range(rounds):
        version += 1
        before = count() if count else 0
        best_base = min(best_base, _baseline(target, _envelopes(records, 0, version)))
        requests["baseline"] = (count() - before) / len(records) if count else 0
        version += 1
        before = count() if count else 0
        best_cond = min(best_cond, _conditioned(target, _envelopes(records, 0, version), ctx))
        requests["conditioned"] = (count() - before) / len(records) if count else 0
        version += 1
        bare = handlers.WriteContext(ctx.flags, ctx.pinned_sor, None, None)
        best_bare = min(best_bare, _conditioned(target, _envelopes(records, 0, version), bare))
    out = {"name": name, "writes_per_s": round(len(records) / best_cond, 1),
           "baseline_per_s": round(len(records) / best_base, 1),
           "ratio": round(best_base / best_cond, 3),
           # The condition alone, without the observation row (its state transaction).
           "without_observation_per_s": round(len(records) / best_bare, 1),
           "loadavg": os.getloadavg()[0]}
    if count:
        out["requests_per_write"] = requests
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-cloud", action="store_true")
    args = parser.parse_args()
    records = list(iter_customers(args.n, seed=5))
    with tempfile.TemporaryDirectory() as tmp:
        state = create_state_engine(f"sqlite:///{tmp}/state.db")
        upgrade_schema(state)
        flags = FlagSource()
        flags.states["customer"] = FlagState("customer", Mode.CLOUD, Mode.CLOUD, Rollout(), 1)
        legacy_engine = create_legacy_engine(f"sqlite:///{tmp}/legacy.db")
        create_legacy_schema(legacy_engine)
        legacy = LegacyErp(legacy_engine)
        ctx = handlers.WriteContext(flags, lambda d, k: None, state, None)
        print(json.dumps(_run("write_condition_legacy", legacy, records, ctx, args.rounds)))
        if not args.no_cloud:
            from workers.cloud_erp import CloudErp
            from workers.cloud_sim import start_simulator

            sim = start_simulator(Path(tmp) / "cloud.db")
            try:
                calls = [0]
                with CloudErp(sim.url) as cloud:
                    cloud.http.event_hooks["request"].append(
                        lambda request: calls.__setitem__(0, calls[0] + 1))
                    flags.states["customer"] = FlagState("customer", Mode.SHADOW, Mode.SHADOW,
                                                         Rollout(), 1)
                    print(json.dumps(_run("write_condition_cloud", cloud, records, ctx,
                                          args.rounds, count=lambda: calls[0])))
            finally:
                sim.stop()
        legacy_engine.dispose()
        state.dispose()


if __name__ == "__main__":
    main()

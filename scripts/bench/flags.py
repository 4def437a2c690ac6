"""Flag evaluation speed: routing decisions per second vs a bare dict lookup.

Prints one JSON line per figure: name, records_per_s, baseline_per_s, ratio
(records_per_s / baseline_per_s) and ns_per_eval.  The baseline is the least
any router could do: look the domain's mode up in a dict and the route up in
another, with no rollout at all.  Target: >= 100,000 evaluations/s on every
figure.

    .venv/bin/python scripts/bench/flags.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

# This folder holds bus.py (the bus benchmark), which would shadow the ``bus`` package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parents[1]))

from coexistence.flags import FULL, ROUTES, FlagSource, FlagState, Mode, Rollout, bucket  # noqa: E402

KEYS = [f"C{i:06d}" for i in range(10_000)]
ATTRS = [{"region": ("WEST", "EAST", "NORTH")[i % 3], "warehouse": f"W0{i % 4}"}
         for i in range(len(KEYS))]


def rate(fn: Callable[[str, dict], object], seconds: float,
         before_pass: Callable[[], object] = lambda: None) -> float:
    """Evaluations per second of ``fn`` over the key set, for about ``seconds``."""
    pairs = list(zip(KEYS, ATTRS, strict=True))
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        before_pass()
        for key, attrs in pairs:
            fn(key, attrs)
        done += len(pairs)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per figure")
    seconds = parser.parse_args().seconds

    modes = {"customer": Mode.SHADOW}

    def baseline(key: str, attrs: dict) -> object:
        return ROUTES[modes["customer"]]

    source = FlagSource({
        "customer": FlagState("customer", Mode.SHADOW, Mode.SHADOW, FULL, 3),
        "product": FlagState("product", Mode.CLOUD, Mode.SHADOW, Rollout(2500), 4),
        "price": FlagState("price", Mode.CLOUD, Mode.SHADOW, Rollout(
            5000, {"region": frozenset({"WEST", "EAST"})}), 5),
    })
    cases = {
        "flags.route_for.full_rollout": lambda k, a: source.route_for("customer", k, a),
        "flags.route_for.percent_rollout": lambda k, a: source.route_for("product", k, a),
        "flags.route_for.segment_and_percent": lambda k, a: source.route_for("price", k, a),
    }
    # Every key new to the process: no sticky bucket cached (worst case).
    cold = {"flags.route_for.percent_rollout.cold_keys": cases["flags.route_for.percent_rollout"]}
    base = rate(baseline, seconds)
    for name, fn in [*cases.items(), *cold.items()]:
        per_s = rate(fn, seconds, bucket.cache_clear if name in cold else lambda: None)
        print(json.dumps({
            "name": name,
            "records_per_s": round(per_s),
            "baseline_per_s": round(base),
            "ratio": round(per_s / base, 3),
            "ns_per_eval": round(1e9 / per_s),
            "target_per_s": 100_000,
        }), flush=True)


if __name__ == "__main__":
    main()

"""The chaos run's cloud fault window, piece by piece, against the simulator as its own
process and the cloud adapter as the ERP writers call it (``read_many`` + ``write_many``
of 200 records, inside a message's retry budget, several writer threads).

The chaos run saw coexist's routed writes stop entirely for the 4 s of a window of 10 %
503, 10 % 500-after-commit and a 20-request 429 burst.  Taken apart (issue 16):

* the 5xx rates alone cost a fraction of the writes and never stop them: a failed
  ``$batch`` request is retried within the call (Retry-After 1 s for a 503, idempotency
  keys for a 500 after commit), no batch fails as a whole;
* the 429 burst is what stops them: the simulator answers the next 20 requests 429,
  whoever sends them, so no request succeeds until 20 were refused; writers that honour
  ``Retry-After: 1`` send about one request per thread per second, so the burst lasts
  about 20 / threads seconds (4-5 s with 4 threads), longer than the chaos run's window,
  which ends it.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

from bus import budget as retry_budget
from coexistence.ports import COEXIST_WRITER, WriteOp
from tests.support import cloud_sim
from tests.support.records import customer
from workers.cloud_erp import CloudErp

pytestmark = pytest.mark.integration

simulator, sim = cloud_sim.simulator, cloud_sim.sim

KEYS = [str(100000 + i) for i in range(800)]
BATCH = 200
THREADS = 4
#: The chaos run's window figures (``scripts/chaos/run.py``, ``cloud_faults``).
FIVE_XX = dict(error_rate=0.1, error_after_rate=0.1, retry_after_s=1, scope="any", seed=7)
BURST = dict(burst_429=20, retry_after_s=1, scope="any")


class Writers:
    """``THREADS`` writer threads, each writing batches of ``BATCH`` new versions in a
    loop (read, then a conditioned write, as ``handlers.apply_writes`` does), every batch
    inside a fresh message budget (the batch consumer's)."""

    def __init__(self, url: str):
        self.erp = CloudErp(url)
        self.version = 1
        self.lock = threading.Lock()
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                        for n in range(THREADS)]

    def seed(self) -> None:
        for start in range(0, len(KEYS), BATCH):
            self.erp.write_many([WriteOp("customer", k, customer(k), 1, f"seed-{k}", None)
                                 for k in KEYS[start:start + BATCH]])

    def _run(self, n: int) -> None:
        chunk = KEYS[n * BATCH:(n + 1) * BATCH]
        while not self.stop.is_set():
            with self.lock:
                self.version += 1
                version = self.version
            budget = retry_budget.Budget(limit=retry_budget.RETRY_BUDGET,
                                         deadline=time.monotonic() + 30)
            try:
                with retry_budget.scope(budget):
                    held = self.erp.read_many("customer", chunk)
                    self.erp.write_many([
                        WriteOp("customer", k, customer(k, credit_limit=Decimal(version)),
                                version, f"m-{k}-{version}", held[k][1]) for k in chunk])
            except Exception as exc:  # noqa: BLE001 - the finding
                self.failed.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        self.erp.close()


def _written(admin, after: int) -> tuple[int, int]:
    """coexist's writes in the feed after cursor ``after``, and the last cursor (read as
    another client: ``/admin/as`` is exempt from the faults)."""
    count, cursor = 0, after
    while page := _feed(admin, cursor):
        count += sum(1 for c in page if c["clientId"] == COEXIST_WRITER)
        cursor = page[-1]["cursor"]
    return count, cursor


def _feed(admin, after: int) -> list[dict]:
    response = admin.http.get("/admin/as/observer/changes",
                              params={"after": after, "limit": 1000})
    response.raise_for_status()
    return response.json()["value"]


def _window(admin, seconds: float, settle_s: float = 0.0, **faults) -> int:
    """coexist's writes during ``seconds`` with ``faults`` set (none: calm), counted from
    ``settle_s`` after they were set (requests already in flight then land first)."""
    if faults:
        admin.faults(**faults)
    time.sleep(settle_s)
    _, cursor = _written(admin, 0)
    time.sleep(seconds)
    admin.faults()
    return _written(admin, cursor)[0]


def test_5xx_rates_cost_a_fraction_of_the_writes_the_429_burst_stops_them(sim):
    writers = Writers(sim.url)
    writers.seed()
    with writers:
        time.sleep(0.5)  # every thread past its first batch
        calm = _window(sim, 2.0)
        five_xx = _window(sim, 2.0, **FIVE_XX)
        burst = _window(sim, 1.5, settle_s=0.5, **BURST)
        after = _window(sim, 2.0)
    assert writers.failed == [], writers.failed[:3]
    assert calm > 0 and after > 0, (calm, after)
    # 20 % of the requests failing, each retried in the call after a backoff: a fraction
    # lost, no stop (measured 0.6-0.9x of the calm rate on a loaded host, 0.22x once in a
    # fresh-clone CI run: a 2 s window holds only ~10-50 batches of 200, so the ratio is
    # coarse; what must hold is that writes go on, in a clear fraction).
    assert five_xx >= 0.1 * calm, (calm, five_xx)
    # The burst refuses every request until 20 were answered: 4 threads waiting out
    # Retry-After 1 s between tries need ~5 s for that; from 0.5 s to 2 s into it (the
    # requests sent before it landed first) nothing was written.
    assert burst == 0, (calm, burst)

"""CRM channel throughput against the CRM simulator, with its baseline in the same run.

Prints one JSON line per figure:

* ``crm_accounts_batched``: accounts synced per second through the outbound handler
  (``workers.crm.handlers.sync_outbound``: router-shaped events -> mapping -> one sObject
  Collections request per 200 -> per-record results), updating accounts that exist, against
  the baseline: the same handler and adapter fed one envelope at a time, so every account
  is its own request.  Targets: ratio >= 5 and >= 1,000 accounts/s.
* ``crm_accounts_first_load``: the same, creating the accounts (the duplicate rule and id
  allocation run for each), batched only: what a first sync of the customer base costs.

* ``crm_one_by_one_baselines``: whether the baseline is a fair one: the same subset
  one request each through the handler (the baseline above), through the CRM's
  single-record upsert endpoint, and through the handler from 8 threads.

* ``crm_inbound_echoes``: the inbound poller reading a feed of coexist's own writes (the
  rounds above), ``FEED_READ`` events a read against the former 200: CPU per event of the
  poller (with the garbage collector's share, the bench's own objects frozen out of it)
  and of the simulator, then again in the other order.

* ``crm_accounts_end_to_end``: SoR change -> CRM record updated through the production
  processes, as supervisord runs them: ``coexist router`` + ``coexist worker --threads 8``
  on RabbitMQ + PostgreSQL (``--stack rabbit``, the default) or ``coexist run`` on the
  embedded broker and SQLite (``--stack embedded``), the legacy reference ERP on SQLite,
  the CRM simulator above.  After a warm-up (the customers typed into the legacy ERP one
  by one, all shown in the CRM: ``first_sync``), each of ``--e2e-rounds`` rounds edits
  every customer's credit limit in the legacy ERP (a batch job, 200 customers per
  transaction) and is timed from before the first edit to the commit time of the last
  account's update in the CRM (its change feed); the best round is reported, every
  round listed.  CPU per account of each process comes from /proc; ``--profile DIR``
  writes ``py-spy record --gil`` profiles (raw) of each process (and the CRM simulator)
  over the rounds.  Its baseline is the one-by-one figure above; ``--e2e-baseline`` adds
  ``crm_accounts_end_to_end_one_by_one``: the same processes with the CRM channel
  consumed one message per request (``scripts/bench/crm_unbatched.py``), the same path
  without the channel's batching.

The first two figures are the handler and the simulator on one machine.  Rounds of
batched and one-by-one alternate so load from other processes hits both alike.  Usage:
``python scripts/bench/crm.py [--accounts 4000] [--single 600] [--rounds 3] [--e2e 1000]
[--e2e-rounds 3] [--stack rabbit|embedded ...] [--profile DIR]``; environment
``COEXIST_BENCH_PG_URL`` (admin URL), ``COEXIST_BENCH_AMQP_URL``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bus.envelope import new_envelope  # noqa: E402
from coexistence.canonical import decode  # noqa: E402
from coexistence.crm.mapping import account_fields  # noqa: E402
from coexistence.sample import iter_customers  # noqa: E402
from workers.crm.client import CrmClient  # noqa: E402
from workers.crm.handlers import Outcome, sync_outbound  # noqa: E402
from workers.crm.reports import CRM_QUEUE  # noqa: E402
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


def _sobject_upserts(crm: CrmClient, envs) -> float:
    """The same records, one Salesforce single-record upsert each
    (``PATCH sobjects/Account/Coexist_Id__c/{key}``, the external id in the URL, not the
    body): what a client that never batches would send."""
    from coexistence.crm.mapping import to_sobject
    from coexistence.crm.ports import EXTERNAL_ID
    from coexistence.router import routed_version

    started = time.perf_counter()
    for env in envs:
        record = decode("customer", env.payload["record"])
        body = to_sobject(record, version=routed_version(env.flag_version, env.source_version),
                          correlation_id=env.correlation_id, sor=env.source_system)
        body.pop(EXTERNAL_ID)
        crm._call("PATCH", f"sobjects/Account/{EXTERNAL_ID}/{env.key}", json=body)
    return time.perf_counter() - started


def _threaded(crm: CrmClient, envs, threads: int) -> float:
    """The handler one envelope per request, from ``threads`` threads (the worker's
    ``--threads 8``): one by one, but as many requests in flight as the worker has."""
    from concurrent.futures import ThreadPoolExecutor

    reports = _Reports()
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for results in pool.map(lambda e: sync_outbound([e], crm=crm, reports=reports), envs):
            if results[0].outcome is not Outcome.SYNCED:
                raise RuntimeError(f"not synced: {results[0]}")
    return time.perf_counter() - started


def _baselines(crm: CrmClient, customers, version: int) -> tuple[dict, int]:
    """Is the one-by-one baseline a fair one?  The same subset through: the bench's
    baseline (the handler, an sObject Collection of one record per request), the CRM's
    single-record upsert endpoint, and the handler from 8 threads."""
    out = {}
    for name, run in (("collection_of_1", lambda e: _run(crm, e, 1)),
                      ("sobject_upsert", lambda e: _sobject_upserts(crm, e)),
                      ("collection_of_1_8_threads", lambda e: _threaded(crm, e, 8))):
        version += 1
        out[name] = round(len(customers) / run(_events(customers, version)))
    return out, version


PG_ADMIN_URL = os.environ.get("COEXIST_BENCH_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AMQP = os.environ.get("COEXIST_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: Customers one legacy transaction edits in the edit phase (a batch job's commit size).
EDIT_TX = 200
#: How often the bench reads the CRM back while it waits, in seconds.
POLL_S = 0.05
ROOT = Path(__file__).resolve().parents[2]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its reaped children so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Longest wait for the processes to show an edit in the CRM, in seconds.
E2E_TIMEOUT_S = 300.0


def _shown(admin, keys: set[str], credit: Decimal) -> int:
    rows = admin.query(f"SELECT Coexist_Id__c FROM Account WHERE Credit_Limit__c = {credit}")
    return len({r["Coexist_Id__c"] for r in rows} & keys)


class _Feed:
    """When each account showed a value, from the CRM's own change feed: the commit time
    of the update that wrote it (exact, and cheap to read: only new events each time,
    where a query of every account per read would load the CRM the bench measures)."""

    def __init__(self, crm: CrmClient, ids: set[str]):
        self.crm, self.ids = crm, ids
        self.after = 0
        while batch := crm.changes(self.after, 1000):
            self.after = batch[-1].replay_id

    def wait(self, credit: Decimal, procs, timeout_s: float = E2E_TIMEOUT_S
             ) -> list[float]:
        """The commit times (epoch s) of the updates showing ``credit``, one per account."""
        at: dict[str, float] = {}
        deadline = time.perf_counter() + timeout_s
        while len(at) < len(self.ids):
            batch = self.crm.changes(self.after, 1000)
            for e in batch:
                if e.record_id in self.ids and e.record_id not in at and \
                        e.fields.get("Credit_Limit__c") == float(credit):
                    at[e.record_id] = e.commit_ms / 1000
            if batch:
                self.after = batch[-1].replay_id
                continue
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"`coexist {name}` ended ({proc.returncode})")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{len(self.ids) - len(at)} account(s) not updated end "
                                   f"to end within {timeout_s:g} s")
            time.sleep(POLL_S)
        return sorted(at.values())


def _wait_shown(admin, keys, credit, procs, timeout_s: float = E2E_TIMEOUT_S) -> float:
    """perf_counter() when every account of ``keys`` shows ``credit`` in the CRM."""
    deadline = time.perf_counter() + timeout_s
    while _shown(admin, keys, credit) < len(keys):
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"`coexist {name}` ended ({proc.returncode})")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{len(keys) - _shown(admin, keys, credit)} account(s) not "
                               f"updated end to end within {timeout_s:g} s")
        time.sleep(0.2)
    return time.perf_counter()


def _quartiles(times: list[float], started: float) -> dict[str, float]:
    """Seconds after ``started`` by which the first, a quarter, half, three quarters were
    shown."""
    return {f"{int(q * 100)}%": round(times[int(q * (len(times) - 1))] - started, 2)
            for q in (0.0, 0.25, 0.5, 0.75)}


def _stages(state, clock: float, n: int, wait_s: float = 10.0) -> dict:
    """Where a round's time went before the CRM, per account, from coexist's own records:
    seconds after the edit by which the router had captured the change into the outbox
    (``captured``, the outbox row's ``created_at``), the relay had published it to the
    broker (``published``, ``sent_at``) and the CRM consumer had settled it after the
    CRM's results (``settled``, ``settled_at``): quartiles and the last, of the round's
    ``coexist.channel.crm`` messages (waits up to ``wait_s`` for them all to settle)."""
    from sqlalchemy import text

    since = datetime.fromtimestamp(clock, UTC)
    query = text("SELECT created_at, sent_at, settled_at FROM outbox WHERE queue_name = "
                 ":q AND created_at >= :since")
    deadline = time.perf_counter() + wait_s
    while True:
        with state.connect() as conn:
            rows = conn.execute(query, {"q": CRM_QUEUE, "since": since}).all()
        if (len(rows) >= n and all(r.settled_at for r in rows)) or \
                time.perf_counter() > deadline:
            break
        time.sleep(0.2)

    def spread(values: list) -> dict:
        times = sorted(v.timestamp() for v in values if v is not None)
        if not times:
            return {}
        out = _quartiles(times, clock)
        out["100%"] = round(times[-1] - clock, 2)
        return out

    return {"messages": len(rows), "captured": spread([r.created_at for r in rows]),
            "published": spread([r.sent_at for r in rows]),
            "settled": spread([r.settled_at for r in rows])}


def _edit_all(engine, keys: list[str], credit: Decimal, writer: str) -> None:
    """A legacy batch job (a credit review): ``EDIT_TX`` customers per transaction, each
    row's change captured by the legacy ERP's change-log triggers as any edit is."""
    from sqlalchemy import update

    from workers.legacy_erp.adapter import LegacyErp, _padded

    d = LegacyErp(engine).tables("customer")
    numbers = [d.t.key_columns(d.t.legacy_key(k))["CUSTNO"] for k in keys]
    t = d.header
    for start in range(0, len(numbers), EDIT_TX):
        with engine.begin() as conn:
            conn.execute(update(t).where(t.c.CUSTNO.in_(numbers[start:start + EDIT_TX]))
                         .values(CRLIMIT=int(credit * 100),
                                 LCHGUSER=_padded(t.c.LCHGUSER, writer)))


def _end_to_end(customers, sim, secret: str, tmp: Path, stack: str,
                profile: Path | None, edit_rounds: int, flag_version: int = 5,
                unbatched: bool = False) -> dict:
    """The production path as OS processes, as supervisord runs them: ``coexist router``
    and ``coexist worker`` on RabbitMQ + PostgreSQL (``stack="rabbit"``), or ``coexist
    run`` on the embedded broker and SQLite (``stack="embedded"``).  ``unbatched``: the
    worker (``run``) consumes the CRM channel one message per request
    (``scripts/bench/crm_unbatched.py``), the end-to-end one-by-one baseline."""
    import subprocess
    import uuid

    from sqlalchemy import create_engine, text

    from coexistence.flags import FlagState, Mode, Rollout
    from workers.cloud_sim import start_simulator
    from workers.crm_sim.admin import CrmSimulatorAdmin
    from workers.db import create_state_engine
    from workers.flags import SqlFlagStore
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
    from workers.migrate import upgrade

    home = tmp / f"e2e-{stack}{'-unbatched' if unbatched else ''}"
    home.mkdir()
    legacy_url = f"sqlite:///{home / 'legacy.db'}"
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    cleanup = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("COEXIST_")}
    env.update(COEXIST_HOME=str(home), COEXIST_LEGACY_URL=legacy_url,
               COEXIST_CRM_CLIENT_SECRET=secret, PYTHONPATH=str(ROOT))
    if stack == "rabbit":
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin_pg = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin_pg.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        cleanup.append(lambda: (admin_pg.connect().execute(
            text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')), admin_pg.dispose()))
        state_url = f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
        vhost = f"coexist_bench_{uuid.uuid4().hex[:8]}"
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True)
        cleanup.append(lambda: subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost],
                                              check=False))
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*",
                        ".*", ".*"], check=True)
        env.update(COEXIST_STATE_URL=state_url, COEXIST_BROKER_URL=AMQP + vhost)
    else:
        state_url = f"sqlite:///{home / 'state.db'}"
        env.update(COEXIST_STATE_URL=state_url, COEXIST_BROKER_URL="")
    # The rounds above wrote these accounts under flag version 1, an earlier stack's run
    # under its own; flag changes since (still legacy) make this run's changes newer, as a
    # real cutover step would (a fresh legacy ERP numbers its changes from 1 again).
    state = create_state_engine(state_url)
    upgrade(state)
    store = SqlFlagStore(state)
    for version in range(1, flag_version + 1):
        store.commit(store.load()["customer"],
                     FlagState("customer", Mode.LEGACY, Mode.LEGACY, Rollout(), version),
                     actor="bench", reason="bench", action="set")
    state.dispose()
    (home / "coexist.toml").write_text(
        '[subscriptions.crm]\ndomains = ["customer"]\n\n'
        f'[crm]\nurl = "{sim.url}"\nclient_id = "bench"\npoll_interval_s = 5\n')
    coexist = [str(Path(sys.executable).with_name("coexist"))]
    consumer = [sys.executable, str(ROOT / "scripts" / "bench" / "crm_unbatched.py")] \
        if unbatched else coexist
    commands = {"run": consumer + ["run"]} if stack == "embedded" else {
        "router": coexist + ["router"], "worker": consumer + ["worker", "--threads", "8"]}
    admin = CrmSimulatorAdmin(sim.url)
    reader = CrmClient(sim.url, client_id="bench", client_secret=secret)
    procs: dict[str, subprocess.Popen] = {}
    spies: list[subprocess.Popen] = []
    keys = [c.key for c in customers]
    try:
        with start_simulator(home / "cloud.db") as cloud:
            env["COEXIST_CLOUD_URL"] = cloud.url
            for name, args in commands.items():
                with open(home / f"{name}.log", "w") as out:
                    procs[name] = subprocess.Popen(
                        [*args, "--log-level", "WARNING"], env=env, cwd=ROOT,
                        stdout=out, stderr=subprocess.STDOUT)
            legacy = LegacyErp(engine)
            # Warm-up: the customers enter the SoR one by one (people typing), all of them
            # reach the CRM, so the edits below meet warm processes.
            warm = Decimal(111_111)
            started = time.perf_counter()
            for c in customers:
                legacy.person_upsert(c.model_copy(update={"credit_limit": warm}), "JSMITH")
            typed = time.perf_counter() - started
            done = _wait_shown(admin, set(keys), warm, procs)
            first = {"seconds": round(done - started, 2), "sor_writes_s": round(typed, 2),
                     "records_per_s": round(len(keys) / (done - started))}
            cpu0 = {n: _cpu_s(p.pid) for n, p in procs.items()}
            cpu0["crm_sim"] = _cpu_s(sim.process.pid)
            if profile is not None:
                profile.mkdir(parents=True, exist_ok=True)
                # (the CRM simulator too: its CPU is the channel's as much as the worker's)
                spies = [subprocess.Popen(
                    [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                     str(pid), "--gil", "-r", "200", "-f", "raw", "-o",
                     str(profile / f"{stack}-{n}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for n, pid in [*((n, p.pid) for n, p in procs.items()),
                                   ("crm_sim", sim.process.pid)]]
                time.sleep(1.0)  # py-spy attached
            ids = {r["Id"] for r in admin.query("SELECT Id, Coexist_Id__c FROM Account")
                   if r["Coexist_Id__c"] in set(keys)}
            feed = _Feed(reader, ids)
            stages_db = create_state_engine(state_url)
            cleanup.append(stages_db.dispose)
            rounds = []
            for n in range(edit_rounds):
                marker = Decimal(777_000 + n)
                used = reader.budget(refresh=True).used
                started, clock = time.perf_counter(), time.time()
                _edit_all(engine, keys, marker, "JSMITH")
                written = time.perf_counter() - started
                times = feed.wait(marker, procs)
                seconds = times[-1] - clock
                stages = _stages(stages_db, clock, len(keys))
                # (the bench's own reads of /limits count one request each)
                requests = reader.budget(refresh=True).used - used - 1
                rounds.append({"seconds": round(seconds, 2), "sor_writes_s": round(written, 2),
                               "crm_requests": requests,
                               "records_per_s": round(len(keys) / seconds),
                               "shown_at_s": {**_quartiles(times, clock),
                                              "100%": round(seconds, 2)},
                               "stages_s": stages})
            if _shown(admin, set(keys), marker) != len(keys):
                raise RuntimeError("the CRM's feed and its records disagree")
            cpu = {n: round((_cpu_s(p.pid) - cpu0[n]) * 1e3 / len(keys) / edit_rounds, 3)
                   for n, p in procs.items()}
            cpu["crm_sim"] = round((_cpu_s(sim.process.pid) - cpu0["crm_sim"]) * 1e3
                                   / len(keys) / edit_rounds, 3)
    except Exception:
        for log in home.glob("*.log"):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        for spy in spies:
            spy.send_signal(2)
        for spy in spies:
            spy.wait(60)
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        admin.close()
        reader.close()
        engine.dispose()
        for step in reversed(cleanup):
            step()
    best = max(rounds, key=lambda r: r["records_per_s"])
    return {"stack": stack, "processes": sorted(procs), "accounts": len(keys),
            "records_per_s": best["records_per_s"], "best": best,
            "rounds": [r["records_per_s"] for r in rounds], "round_detail": rounds,
            "cpu_ms_per_account": cpu, "first_sync": first}


class _GcTime:
    """CPU seconds the garbage collector spent, by generation (``gc.callbacks``)."""

    def __init__(self):
        self.seconds = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.seconds[info["generation"]] += time.process_time() - self._started
            self.runs[info["generation"]] += 1


def _echoes(crm: CrmClient, tmp: Path, limit: int) -> dict:
    """The inbound poller reading the feed from its start (the rounds above: every event
    is coexist's own write, an echo): CPU seconds per event, requests, transactions.

    The bench process's own objects (the customers, the events of the rounds) are frozen
    out of the collector first: a full collection (generation 2) scans every live object
    of the process, ~0.25 s here, and whichever read size happened to trigger the one
    full collection of its run was charged ~30 us per event for it (what made 1,000 a
    read look twice as dear as 200 in one run).  The collector's time is reported too."""
    import gc

    from workers.crm import handlers
    from workers.db import create_state_engine
    from workers.migrate import upgrade

    engine = create_state_engine(f"sqlite:///{tmp / f'echoes-{limit}.db'}")
    upgrade(engine)
    polls, read = 0, 0
    gc.collect()
    gc.freeze()
    meter = _GcTime()
    gc.callbacks.append(meter)
    sim_cpu = _cpu_s(crm_sim_pid) if crm_sim_pid else 0.0
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        while True:
            stats = handlers.poll_inbound(crm=crm, engine=engine,
                                          sor_record=lambda d, k: None, directory=lambda: (),
                                          reports=_Reports(), limit=limit)
            polls += 1
            read += stats.read
            if stats.read < limit:
                break
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        sim_cpu = (_cpu_s(crm_sim_pid) - sim_cpu) if crm_sim_pid else None
    finally:
        gc.callbacks.remove(meter)
        gc.unfreeze()
    engine.dispose()
    return {"events": read, "polls": polls, "cpu_us_per_event": round(cpu * 1e6 / read, 1),
            "wall_us_per_event": round(wall * 1e6 / read, 1),
            "gc_us_per_event": [round(s * 1e6 / read, 1) for s in meter.seconds],
            "gc_runs": meter.runs,
            "simulator_cpu_us_per_event": None if sim_cpu is None else
            round(sim_cpu * 1e6 / read, 1)}


#: The CRM simulator's process id (its CPU per event served), set by ``main``.
crm_sim_pid: int | None = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=4000)
    parser.add_argument("--single", type=int, default=600,
                        help="accounts per one-by-one round (it is the slow side)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--e2e", type=int, default=1000,
                        help="accounts through the production path (0: skip)")
    parser.add_argument("--e2e-rounds", type=int, default=3,
                        help="edit rounds of the end-to-end run (the best is reported)")
    parser.add_argument("--stack", choices=("rabbit", "embedded"), action="append",
                        help="the end-to-end run's stack (repeat for both; default rabbit)")
    parser.add_argument("--e2e-baseline", action="store_true",
                        help="also run the end-to-end path with the CRM channel consumed one "
                        "message per request (the same processes otherwise), as a baseline")
    parser.add_argument("--profile", type=Path, default=None,
                        help="folder for py-spy --gil profiles (raw) of each process of the "
                        "end-to-end edit phase")
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
        global crm_sim_pid
        crm_sim_pid = sim.process.pid
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
        variants, version = _baselines(crm, customers[:args.single], version)
        print(json.dumps({"name": "crm_one_by_one_baselines", "accounts": args.single,
                          "records_per_s": variants, "load_avg": os.getloadavg()[0]}),
              flush=True)
        print(json.dumps({
            "name": "crm_accounts_batched", "accounts": len(customers), "batch": BATCH,
            "records_per_s": round(best), "baseline_per_s": round(base),
            "ratio": round(best / base, 1), "rounds": [round(b) for b in batched],
            "baseline_rounds": [round(s) for s in single], "load_avg": os.getloadavg()[0],
            "targets": {"records_per_s": 1000, "ratio": 5},
        }), flush=True)
        from coexistence.crm.ports import MAX_BATCH
        from workers.crm.handlers import FEED_READ

        old, new = _echoes(crm, Path(tmp), MAX_BATCH), _echoes(crm, Path(tmp), FEED_READ)
        # and again in the other order (the simulator's caches, the load of the moment)
        (Path(tmp) / "again").mkdir()
        again = [_echoes(crm, Path(tmp) / "again", n) for n in (FEED_READ, MAX_BATCH)]
        print(json.dumps({
            "name": "crm_inbound_echoes", "read_size": FEED_READ, **new,
            "baseline": {"read_size": MAX_BATCH, **old},
            "cpu_ratio": round(old["cpu_us_per_event"] / new["cpu_us_per_event"], 2),
            "again": {"read_size": FEED_READ, **again[0],
                      "baseline": {"read_size": MAX_BATCH, **again[1]},
                      "cpu_ratio": round(again[1]["cpu_us_per_event"]
                                         / again[0]["cpu_us_per_event"], 2)},
            "load_avg": os.getloadavg()[0]}), flush=True)
        crm.close()
        runs = [(stack, False) for stack in (args.stack or ["rabbit"])] if args.e2e else []
        if args.e2e and args.e2e_baseline:
            runs += [(stack, True) for stack in (args.stack or ["rabbit"])]
        batched_e2e: dict[str, int] = {}
        for n, (stack, unbatched) in enumerate(runs):
            e2e = _end_to_end(customers[:args.e2e], sim, secret, Path(tmp), stack,
                              None if unbatched else args.profile, args.e2e_rounds,
                              flag_version=5 * (n + 1), unbatched=unbatched)
            line = {"name": "crm_accounts_end_to_end" + ("_one_by_one" if unbatched else ""),
                    **e2e, "baseline_per_s": round(base),
                    "ratio": round(e2e["records_per_s"] / base, 1),
                    "load_avg": os.getloadavg()[0]}
            if unbatched:
                # The same path without the channel's batching: what batching buys end to end.
                line["batched_per_s"] = batched_e2e.get(stack)
                if batched_e2e.get(stack):
                    line["batched_ratio"] = round(batched_e2e[stack] / e2e["records_per_s"], 1)
            else:
                batched_e2e[stack] = e2e["records_per_s"]
                line["targets"] = {"records_per_s": 1000, "ratio": 5}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

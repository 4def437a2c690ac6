"""Chaos run: the production processes under faults, judged against a ground truth of its own.

    .venv/bin/python scripts/chaos/run.py --scale tiny           # the suite's run
    .venv/bin/python scripts/chaos/run.py --scale small          # a few minutes
    .venv/bin/python scripts/chaos/run.py --scale full           # >= 100,000 changes

Real parts, each a separate OS process started from the CLI the way supervisord starts them:
the legacy ERP on PostgreSQL (a database of its own), coexist's state on PostgreSQL (another),
RabbitMQ with quorum queues (a vhost of its own), Redis flags (a key prefix of its own), the
cloud ERP simulator (``coexist cloud-sim``), ``coexist router`` x2 (active + standby) and
``coexist worker`` x2. This script plays supervisord (a killed process is started again) and
the people: clerks edit customers in whichever ERP is the system of record, and now and then
someone types into the other one (a stray write).

Faults during the load: kill -9 of workers and of the active router, ``rabbitmqctl
close_all_connections`` on the run's vhost, cloud 5xx before and after commit, 429 bursts.
The customer domain is moved forward (shadow -> cloud) and rolled back mid-run through the
guarded CLI (``coexist reconcile`` then ``coexist cutover set`` / ``rollback``); people pause
during each switch, as a cutover window does, so the script always knows which ERP was the
SoR when an edit was made.

Verification does not trust coexist's bookkeeping: every touched customer is read from both
ERPs (legacy SQL, the cloud simulator's own API) and compared with the script's log of what
people did. ``lost``: a record whose SoR does not hold the last edit made in its SoR;
``regressed``: a system holding an older SoR edit than another; ``diverged``: the two ERPs
differ; ``duplicates``: a record created twice (the final reconciliation's duplicate check by
natural key; the seed's own look-alike pairs, two customers of the legacy ERP sharing a name,
bill-to postal code and tax id before coexist ran, are reported apart and not counted).
A routed write here replaces a whole record, so applying it twice has no effect of its own;
applied out of order it is a regression, which ``regressed`` counts. Every exception
record must be explained by an injected fault (stray writes by the strays the script made;
technical failures by a fault window). Then ``coexist reconcile --repair`` and a final
reconcile must show drift 0. Prints one JSON report; exit 0 only if all of it holds.

Bounded: every wait has a deadline (``--max-s``); everything it created (databases, vhost,
Redis keys, processes, files unless ``--keep``) is removed at the end.
Environment: ``COEXIST_CHAOS_PG_URL`` (admin URL, default postgres@127.0.0.1/test),
``COEXIST_CHAOS_REDIS_URL``, RabbitMQ on 127.0.0.1:5672 guest/guest with ``rabbitmqctl``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crm_channel import ACTIONS as CRM_ACTIONS  # noqa: E402
from crm_channel import CRM_WAIT_S, CrmChannel, CrmPlan  # noqa: E402
from edi_channel import EdiChannel  # noqa: E402
from edi_channel import wait as wait_edi  # noqa: E402
from portal_channel import ACTIONS as PORTAL_ACTIONS  # noqa: E402
from portal_channel import PortalChannel  # noqa: E402
from portal_channel import wait as wait_portal  # noqa: E402

PG_ADMIN_URL = os.environ.get("COEXIST_CHAOS_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("COEXIST_CHAOS_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP = "amqp://guest:guest@127.0.0.1:5672/"

#: name -> (customers, people's edits, worker kills, router kills, connection closes,
#: cloud fault windows, the CRM's people and faults, 850s the EDI partner sends, portal
#: orders, inquiries, the order desk's status changes of them, and kills of the API and the
#: webhook delivery process)
SCALES = {
    "tiny": dict(customers=60, edits=200, people_batch=4, worker_kills=2, router_kills=1, closes=1,
                 cloud_windows=1, crm=CrmPlan(onboard=2, duplicate=2, contact=2, forbidden=2,
                                              locks=1, limits=1), edi=5,
                 portal=dict(orders=6, inquiries=3, statuses=6, kill_api=1, kill_deliverer=1)),
    "small": dict(customers=200, edits=600, people_batch=10, worker_kills=3, router_kills=1,
                  closes=1,
                  cloud_windows=1, crm=CrmPlan(onboard=4, duplicate=4, contact=4, forbidden=4,
                                               locks=2, limits=1), edi=10,
                  portal=dict(orders=12, inquiries=6, statuses=12, kill_api=1, kill_deliverer=1)),
    "medium": dict(customers=2_000, edits=10_000, worker_kills=10, router_kills=2, closes=2,
                   cloud_windows=3, crm=CrmPlan(onboard=20, duplicate=10, contact=20,
                                                forbidden=20, locks=4, limits=2), edi=60,
                   portal=dict(orders=60, inquiries=30, statuses=90, kill_api=2, kill_deliverer=2)),
    # The full run's estate, faults and channels with 30 % of its edits: what fits in ~35 min
    # on the shared 2-core machine (people edited at 20-25/s there at load 16-24).
    "large": dict(customers=20_000, edits=30_000, worker_kills=12, router_kills=3, closes=3,
                  cloud_windows=4, crm=CrmPlan(onboard=50, duplicate=20, contact=50,
                                               forbidden=50, locks=6, limits=3), edi=200,
                  portal=dict(orders=200, inquiries=100, statuses=300, kill_api=3,
                              kill_deliverer=3)),
    "full": dict(customers=20_000, edits=100_000, worker_kills=12, router_kills=3, closes=3,
                 cloud_windows=4, crm=CrmPlan(onboard=50, duplicate=20, contact=50,
                                              forbidden=50, locks=6, limits=3), edi=200,
                 portal=dict(orders=200, inquiries=100, statuses=300, kill_api=3,
                             kill_deliverer=3)),
}
#: The channels a run drives besides the two ERPs (``--channels``).
CHANNELS = ("crm", "deletes", "edi", "portal")
#: People's acts in the channels (kept in the plan whatever ``--faults`` says).
NOT_FAULTS = frozenset({*CRM_ACTIONS, "edi_850", *PORTAL_ACTIONS})
#: Share of people's edits typed into the ERP that is not the SoR (stray writes).
STRAY_SHARE = 0.03
#: Share of people's changes that delete the customer in the SoR (a clerk closing a
#: duplicate or a dead account); a deleted customer is not edited again.
DELETE_SHARE = 0.02
#: Business reports an operator reviews and archives before a move: each is what a person
#: in the run did (the verdict checks there is one per such act).
REVIEWED = {
    "StrayWrite": "stray writes the run made, each reported and repaired",
    "OwnershipViolationReported": "credit limits typed over in the CRM, refused, set back",
    "CrmDuplicateAccount": "duplicate accounts saved in the CRM, no customer created",
    "CrmRefused:DUPLICATES_DETECTED": "ERP customers the CRM's duplicate rule calls one "
                                      "company (the seed's look-alikes), to merge by hand",
    "EdiDuplicateInterchange": "interchanges the EDI partner sent twice, answered TA1 025",
    "WebhookEndpointGone": "the customer's endpoint taken down (410): disabled by coexist",
    "EndpointError": "webhooks for the endpoint the customer took down, after it was disabled",
    "WebhookEndpointDisabled": "webhooks waiting for the endpoint the customer took down when "
                               "coexist disabled it",
}
#: People's edits saved together in one ERP transaction (``People.edit_batch``; a scale's
#: ``people_batch`` or ``--people-batch`` overrides): one by one, the people of a full run
#: edited at ~21/s on the loaded shared machine, a round trip per statement.
PEOPLE_BATCH = 25
#: Seconds after a fault counted as "during the fault" in the throughput figures.
FAULT_WINDOW_S = 10
#: The cloud simulator's clients that are people (everything else is coexist writing).
PERSON_CLIENTS = frozenset({"clerk", "stray", "reader"})
#: Seconds after a fault within which a technical failure it caused is first recorded.
FAULT_EXPLAINS_S = 120.0
#: Fraction of a phase's edits at which the switch forward and the rollback happen.
SWITCH_AT, ROLLBACK_AT = 0.4, 0.7


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the estate


@dataclass
class Estate:
    """Everything the run created, so that it can all be removed."""

    run_id: str
    home: Path
    state_db: str = ""
    legacy_db: str = ""
    vhost: str = ""
    redis_prefix: str = ""
    sim_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    crm: CrmChannel | None = None
    edi: EdiChannel | None = None
    portal: PortalChannel | None = None

    @property
    def state_url(self) -> str:
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.state_db}"

    @property
    def legacy_url(self) -> str:
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.legacy_db}"

    @property
    def cloud_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=60, check=True).stdout


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def coexist_bin() -> list[str]:
    exe = Path(sys.executable).with_name("coexist")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "workers.cli"]


class Proc:
    """One coexist process, restarted by ``Supervisor`` when it dies (as supervisord does)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], home: Path):
        self.name, self.args, self.env, self.home = name, args, env, home
        self.popen: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        out = (self.home / f"{self.name}.log").open("ab")
        self.popen = subprocess.Popen(coexist_bin() + self.args, env=self.env, cwd=ROOT,
                                      stdout=out, stderr=subprocess.STDOUT,
                                      preexec_fn=_die_with_parent)
        out.close()
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout_s: float = 30) -> int | None:
        if not self.alive():
            return self.popen.returncode if self.popen else None
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)


class Supervisor(threading.Thread):
    """Starts a dead process again after a second, like supervisord's autorestart."""

    def __init__(self, procs: list[Proc]):
        super().__init__(daemon=True, name="supervisor")
        self.procs = procs
        self.halt = threading.Event()
        self.restarts = Counter()

    def run(self) -> None:
        while not self.halt.wait(1.0):
            for p in self.procs:
                if not p.alive():
                    p.start()
                    self.restarts[p.name] += 1


#: Seconds spent in each operator command, by its first two words (the report shows them).
CLI_SECONDS: Counter = Counter()


def _die_with_parent() -> None:
    """A child gets SIGTERM when this script dies, even by kill -9 (Linux prctl)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _terminate(signum, frame) -> None:
    # Once: the clean-up and the partial report that follow must not be cut short by a
    # second signal (a test's timeout, then its own clean-up).
    signal.signal(signum, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def stop_all(procs: list[Proc], timeout_s: float = 20.0) -> None:
    """SIGTERM every process at once, wait for them together up to ``timeout_s``, then
    kill -9 what is left: stopping them one by one (up to 30 s each) could outlast a
    test's patience after its SIGTERM, and the run then printed no report at all."""
    for proc in procs:
        if proc.alive():
            with contextlib.suppress(OSError):
                proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        if proc.popen is None:
            continue
        try:
            proc.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(10)


def cli(estate: Estate, *args: str, check: bool = True, timeout_s: float = 600
        ) -> subprocess.CompletedProcess:
    started = time.monotonic()
    done = subprocess.run(coexist_bin() + list(args), env=estate.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s)
    CLI_SECONDS[" ".join(args[:2])] += time.monotonic() - started
    if check and done.returncode != 0:
        raise RuntimeError(f"coexist {' '.join(args)} exited {done.returncode}:\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done


def provision(estate: Estate) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    estate.state_db = f"coexist_chaos_{estate.run_id}_state"
    estate.legacy_db = f"coexist_chaos_{estate.run_id}_legacy"
    with admin.connect() as conn:
        for db in (estate.state_db, estate.legacy_db):
            conn.execute(text(f'CREATE DATABASE "{db}"'))
    admin.dispose()
    estate.vhost = f"coexist_chaos_{estate.run_id}"
    rabbitmqctl("add_vhost", estate.vhost)
    rabbitmqctl("set_permissions", "-p", estate.vhost, "guest", ".*", ".*", ".*")
    estate.redis_prefix = f"coexist_chaos:{estate.run_id}:"
    estate.sim_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COEXIST_")}
    env.update({
        "COEXIST_HOME": str(estate.home), "COEXIST_STATE_URL": estate.state_url,
        "COEXIST_LEGACY_URL": estate.legacy_url, "COEXIST_CLOUD_URL": estate.cloud_url,
        "COEXIST_BROKER_URL": AMQP + quote(estate.vhost, safe=""),
        "COEXIST_QUEUE_TYPE": "quorum", "COEXIST_REDIS_URL": REDIS_URL,
        "COEXIST_REDIS_PREFIX": estate.redis_prefix, "COEXIST_ACTOR": "chaos-run",
        "COEXIST_BROKER_MANAGEMENT_URL": "off", "PYTHONPATH": str(ROOT),
    })
    if estate.crm is not None:
        (estate.home / "coexist.toml").write_text(estate.crm.toml())
        env.update(estate.crm.env())
    estate.env = env


def teardown(estate: Estate, keep: bool) -> None:
    with contextlib.suppress(Exception):
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for db in (estate.state_db, estate.legacy_db):
                if db:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()
    if estate.vhost:
        with contextlib.suppress(Exception):
            rabbitmqctl("delete_vhost", estate.vhost)
    if estate.redis_prefix:
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=f"{estate.redis_prefix}*", count=1000):
                client.delete(key)
            client.close()
    if not keep:
        shutil.rmtree(estate.home, ignore_errors=True)


# --------------------------------------------------------------------------- the people


@dataclass
class Edit:
    seq: int
    key: str
    system: str
    sor: str
    at: float
    #: "edit" (the credit limit set to ``seq``) or "delete" (the record removed in its SoR).
    kind: str = "edit"

    @property
    def stray(self) -> bool:
        return self.system != self.sor


class People:
    """Clerks editing customers' credit limits; each edit's value is its sequence number,
    so the last edit is known from the value alone."""

    def __init__(self, estate: Estate, keys: list[str], seed: int,
                 delete_share: float = DELETE_SHARE):
        from workers.cloud_sim.admin import SimulatorAdmin
        from workers.legacy_erp.adapter import LegacyErp
        from workers.legacy_erp.schema import create_legacy_engine

        self.engine = create_legacy_engine(estate.legacy_url, pool_size=4)
        self.legacy = LegacyErp(self.engine)
        self.cloud = SimulatorAdmin(estate.cloud_url)
        self.keys = keys
        self.rng = random.Random(seed)
        self.edits: list[Edit] = []
        self.sor = "legacy"
        self.lock = threading.Lock()
        self.seq = 0
        #: Customers people deleted in the SoR.
        self.deleted: set[str] = set()
        self.delete_share = delete_share

    def edit_one(self, keys: list[str] | None = None) -> Edit:
        """One person's edit of one of ``keys`` (a batch of one: :meth:`edit_batch`)."""
        return self.edit_batch(keys if keys is not None else self.keys, 1)[0]

    def edit_batch(self, keys: list[str], limit: int, upto: int | None = None) -> list[Edit]:
        """Up to ``limit`` people's edits of distinct records of ``keys`` (the thread's own
        list: threads get disjoint keys, so the edits of one record happen one after the
        other and the highest value is the last edit), made in one transaction per ERP
        (a clerk's screen of several customers saved at once): the records read in one
        round trip, written in a few, committed once. Sequence numbers stop at ``upto``.
        Now and then a change is a delete in the SoR: the key then leaves ``keys``, so
        nobody edits a deleted customer again. Each ``Edit`` is logged when its ERP has
        committed it (``at``: the commit), so the ground truth holds exactly what the ERPs
        were told."""
        picks: list[tuple[int, str, str, str]] = []  # (seq, key, system, kind)
        with self.lock:
            sor = self.sor
            n = min(limit, len(keys), (upto - self.seq) if upto is not None else limit)
            for key in self.rng.sample(keys, max(n, 0)):
                self.seq += 1
                roll = self.rng.random()
                stray = roll < STRAY_SHARE
                delete = (not stray and roll < STRAY_SHARE + self.delete_share
                          and len(keys) > 1)
                if delete:
                    keys.remove(key)
                    self.deleted.add(key)
                other = "cloud" if sor == "legacy" else "legacy"
                picks.append((self.seq, key, other if stray else sor,
                              "delete" if delete else "edit"))
        made: list[Edit] = []
        for system in ("legacy", "cloud"):
            mine = [p for p in picks if p[2] == system]
            if not mine:
                continue
            who = "CLERK" if system == sor else "STRAY"
            if system == "legacy":
                self._legacy_batch(mine, who)
            else:
                self._cloud_batch(mine, who.lower())
            at = time.time()
            made += [Edit(seq, key, system, sor, at, kind) for seq, key, _, kind in mine]
        made.sort(key=lambda e: e.seq)
        with self.lock:
            self.edits.extend(made)
        return made

    def _legacy_batch(self, picks: list[tuple[int, str, str, str]], who: str) -> None:
        """The legacy ERP's screen: each record as it shows now (one read for the batch),
        its credit limit typed over (header updated, its sites written again, as
        ``LegacyErp.person_upsert`` does) or the record deleted (stamped first, as
        ``person_delete`` does), all in one transaction and one commit. Each record's
        statements run together, so its change-log rows stay consecutive as one save's
        are (statements run for the whole batch at once, headers then all the sites, split
        each record's save into changes capture could not coalesce: a full run got 4,100
        stray reports for 3,086 strays)."""
        from workers.legacy_erp.adapter import _padded

        d = self.legacy.tables("customer")
        edits = [(seq, key) for seq, key, _, kind in picks if kind == "edit"]
        deletes = [key for _, key, _, kind in picks if kind == "delete"]
        current = self.legacy.get_many("customer", [k for _, k in edits])
        now = datetime.now(UTC)
        saves = []
        for seq, key in edits:
            record = current[key].model_copy(update={"credit_limit": Decimal(seq)})
            saves.append(d.t.from_canonical(record, changed_by=who, changed_at=now))
        with self.engine.begin() as conn:
            for header, children in saves:
                self.legacy._replace(conn, d, header, children)
            for key in deletes:
                values = d.t.key_columns(d.t.legacy_key(key))
                conn.execute(d.header.update().where(d.where(d.header, values))
                             .values(LCHGUSER=_padded(d.header.c.LCHGUSER, who)))
                self.legacy._remove(conn, d, values)

    def _cloud_batch(self, picks: list[tuple[int, str, str, str]], who: str) -> None:
        """The cloud ERP's screen, through the simulator's ``$batch`` as person ``who``
        (exempt from faults): the records read in one request, then each written back
        with its credit limit typed over (or deleted) in one more, as
        ``SimulatorAdmin.person_upsert`` / ``person_delete`` do one by one."""
        from coexistence.translate.cloud import (
            RESOURCES,
            canonical_from_json,
            from_canonical,
            to_json_dict,
        )

        base = RESOURCES["customer"]
        edits = [(seq, key) for seq, key, _, kind in picks if kind == "edit"]
        ops = []
        if edits:
            reads = self._cloud_ops(who, [{"id": key, "method": "GET",
                                           "url": f"/{base}(number='{key}')"}
                                          for _, key in edits])
            for seq, key in edits:
                answer = reads[key]
                if answer["status"] != 200:
                    raise RuntimeError(f"cloud read of customer {key}: {answer}")
                record = canonical_from_json("customer", answer["body"]).model_copy(
                    update={"credit_limit": Decimal(seq)})
                doc = to_json_dict(from_canonical(record), body=True)
                doc.pop("coexistSourceVersion", None)  # a person leaves coexist's stamp
                ops.append({"id": key, "method": "PATCH",
                            "url": f"/{base}({answer['body']['id']})", "body": doc})
        ops += [{"id": key, "method": "DELETE", "url": f"/{base}(number='{key}')"}
                for _, key, _, kind in picks if kind == "delete"]
        for key, answer in self._cloud_ops(who, ops).items():
            if answer["status"] not in (200, 204, 404):
                raise RuntimeError(f"cloud write of customer {key}: {answer}")

    def _cloud_ops(self, who: str, ops: list[dict]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for i in range(0, len(ops), 200):  # the simulator's $batch limit
            r = self.cloud.http.post(f"/admin/as/{who}/$batch",
                                     json={"requests": ops[i:i + 200]})
            r.raise_for_status()
            out.update({a["id"]: a for a in r.json()["responses"]})
        return out

    def cloud_get(self, key: str):
        """The cloud's record through the simulator's admin path (exempt from faults)."""
        from coexistence.translate.cloud import RESOURCES, canonical_from_json

        r = self.cloud.http.get(f"/admin/as/reader/{RESOURCES['customer']}(number='{key}')")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return canonical_from_json("customer", r.json())

    def cloud_get_many(self, keys: list[str]) -> dict:
        """The cloud's records of ``keys`` that exist, read through ``$batch`` (as
        :meth:`cloud_get`: the admin path, exempt from faults)."""
        from coexistence.translate.cloud import RESOURCES, canonical_from_json

        base = RESOURCES["customer"]
        answers = self._cloud_ops("reader", [{"id": k, "method": "GET",
                                              "url": f"/{base}(number='{k}')"} for k in keys])
        out = {}
        for key, answer in answers.items():
            if answer["status"] == 200:
                out[key] = canonical_from_json("customer", answer["body"])
            elif answer["status"] != 404:
                raise RuntimeError(f"cloud read of customer {key}: {answer}")
        return out

    def sor_customers(self) -> dict:
        """Every customer in the SoR now, by key (the run ends with the legacy ERP as SoR)."""
        if self.sor != "legacy":
            raise RuntimeError("the verdict reads the SoR after the rollback (legacy)")
        return {r.key: r for r in self.legacy.stream("customer")}

    def close(self) -> None:
        self.cloud.close()
        self.engine.dispose()


# --------------------------------------------------------------------------- the run


class Run:
    def __init__(self, args, estate: Estate):
        self.args = args
        self.scale = SCALES[args.scale]
        self.estate = estate
        self.deadline = time.monotonic() + args.max_s
        self.faults: Counter = Counter()
        self.notes: list[str] = []
        self.routers: list[Proc] = []
        self.workers: list[Proc] = []
        self.sim: Proc | None = None
        self.crm_sim: Proc | None = None
        #: ``coexist api serve`` and ``coexist portal deliver`` (the portal channel).
        self.portal_procs: list[Proc] = []
        self.skus: list[str] = []
        #: (wall time, kind) of every fault injected, for explaining exception records.
        self.fault_times: list[tuple[float, str]] = []
        #: People's changes by kind, outside the clerks' ERP edits (CRM actions).
        self.changes: Counter = Counter()
        self.clerk_keys: list[str] = []
        #: (wall start, wall end, SoR) of each phase of people's load.
        self.phase_spans: list[tuple[float, float, str]] = []
        self.phase_rates: dict[str, float] = {}
        #: Seconds coexist took to settle after each phase, before its switch.
        self.drains: dict[str, float] = {}
        self.switches: list[dict] = []
        self.cloud_fault_windows: list[tuple[float, float]] = []
        self.replayed: Counter = Counter()
        self._status_app = None
        #: Where the run is (the partial report of a stopped run names it).
        self.stage = "provision"

    # -- setup
    def setup(self) -> list[str]:
        from coexistence.sample import SampleSpec
        from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
        from workers.legacy_erp.seed import seed_legacy

        e = self.estate
        engine = create_legacy_engine(e.legacy_url)
        create_legacy_schema(engine)
        # The EDI partner orders products: their units come from the SoR's catalogue.
        seed_legacy(engine, SampleSpec(customers=self.scale["customers"], products=20),
                    domains=("customer", "product") if e.edi is not None or e.portal is not None
                    else ("customer",))
        with engine.connect() as conn:
            keys = [str(int(k)) for (k,) in conn.execute(text('SELECT "CUSTNO" FROM "CUSTMAST"'))]
        engine.dispose()
        cli(e, "db", "upgrade")
        self.sim = Proc("cloud-sim", ["cloud-sim", "--db", str(e.home / "cloud.db"),
                                      "--port", str(e.sim_port)], e.env, e.home)
        self.sim.start()
        self._wait(lambda: self._http_ok(e.cloud_url + "/changes?limit=1"), 30, "cloud sim")
        if e.crm is not None:
            self.crm_sim = Proc("crm-sim", e.crm.sim_args(), {**e.env, **e.crm.sim_env()},
                                e.home)
            self.crm_sim.start()
            self._wait(lambda: self._http_ok(e.crm.url + "/admin/faults"), 30, "CRM sim")
            e.crm.connect()
        log(f"seeded {len(keys)} customers")
        return keys

    def backfill_and_shadow(self) -> None:
        """As an operator does: repair the cloud from the legacy ERP (through the outbox, so
        the router and workers must run), reconcile until clean, then move into shadow."""
        log("backfilling the cloud from the legacy ERP")
        cli(self.estate, "reconcile", "customer", "--repair", "--yes", check=False)
        self.settle()
        if self.estate.crm is not None:
            log("first load of the CRM")
            cli(self.estate, "crm", "load", timeout_s=300)
            self.settle()
        self._move("shadow", "chaos: customer backfilled, into shadow")
        if self.args.second_domain:
            d = self.args.second_domain
            log(f"backfilling the cloud's {d} domain from the legacy ERP")
            cli(self.estate, "reconcile", d, "--repair", "--yes", check=False)
            self.settle()
            self._move("shadow", f"chaos: {d} backfilled, into shadow", domain=d)

    def start_processes(self) -> Supervisor:
        e = self.estate
        for n in (1, 2):
            self.routers.append(Proc(f"router{n}", ["router", "--capture-lease-s", "3"],
                                     e.env, e.home))
            self.workers.append(Proc(f"worker{n}", ["worker", "--threads", "4"], e.env, e.home))
        if e.portal is not None:
            e.portal.add_endpoints(lambda *a: cli(e, *a))
            self.portal_procs = [Proc(name, args, e.env, e.home)
                                 for name, args in e.portal.proc_args().items()]
        sup = Supervisor([*self.routers, *self.workers, *self.portal_procs])
        for p in sup.procs:
            p.start()
        sup.start()
        return sup

    def _wait(self, check, timeout_s: float, what: str) -> None:
        deadline = min(time.monotonic() + timeout_s, self.deadline)
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s:g} s")
            time.sleep(0.2)

    @staticmethod
    def _http_ok(url: str) -> bool:
        import httpx

        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    # -- operator actions through the guarded CLI
    def _move(self, mode: str, reason: str, *, rollback: bool = False,
              domain: str = "customer") -> dict:
        e = self.estate
        started = time.monotonic()
        for attempt in range(1, 6):
            self.review_exceptions()
            cli(e, "reconcile", domain, "--repair", "--yes", check=False)
            checked = cli(e, "reconcile", domain, "--format", "json", check=False)
            (e.home / f"reconcile-{domain}-{len(self.switches) + 1}-{attempt}.json").write_text(
                checked.stdout + checked.stderr)
            cmd = (["cutover", "rollback", domain] if rollback
                   else ["cutover", "set", domain, mode])
            done = cli(e, *cmd, "--reason", reason, check=False, timeout_s=300)
            if done.returncode == 0:
                step = {"to": "rollback" if rollback else mode, "attempts": attempt,
                        "seconds": round(time.monotonic() - started, 1)}
                if domain != "customer":
                    step["domain"] = domain
                self.switches.append(step)
                log(f"{domain} -> {step['to']} after {attempt} attempt(s)")
                return step
            self.notes.append(f"{' '.join(cmd)} attempt {attempt} refused: "
                              f"{(done.stdout + done.stderr).strip().splitlines()[-1:]}"
                              f"{_drifted(checked.stdout, domain)}")
            time.sleep(2)
        raise RuntimeError(f"{domain} could not be moved to {mode}: {self.notes[-1]}")

    def review_exceptions(self) -> None:
        """What the operator does before a move: the reports of what the run's people did
        (stray writes, credit limits typed over in the CRM, duplicate CRM accounts) were
        each reviewed, so they are archived (one command for all); any other open record is
        replayed by its group (after a fault, its retries may have run out)."""
        records = self.exception_records("open")
        reviewed = [r for r in records if r["error_type"] in REVIEWED]
        if reviewed:
            kinds = sorted({r["error_type"] for r in reviewed})
            cli(self.estate, "dlq", "archive", *[str(r["id"]) for r in reviewed], "--reason",
                "chaos: " + "; ".join(REVIEWED[k] for k in kinds), check=False)
        groups = Counter((r["group"], r["error_type"]) for r in records
                         if r["error_type"] not in REVIEWED)
        for (group, error_type), count in groups.items():
            cli(self.estate, "dlq", "replay", "--group", group, "--reason",
                "chaos: retried after an injected fault", check=False)
            self.replayed[error_type] += count
        if records:
            self.settle()

    # -- faults
    def fault_plan(self, total_edits: int) -> list[tuple[int, str]]:
        s = self.scale
        kinds = (["kill_worker"] * s["worker_kills"] + ["kill_router"] * s["router_kills"]
                 + ["close_connections"] * s["closes"] + ["cloud_faults"] * s["cloud_windows"])
        if self.estate.crm is not None:
            kinds += s["crm"].kinds()
        if self.estate.edi is not None:
            kinds += ["edi_850"] * s["edi"]
        if self.estate.portal is not None:
            kinds += [kind for kind, count in (
                ("portal_order", s["portal"]["orders"]),
                ("portal_inquiry", s["portal"]["inquiries"]),
                ("portal_status", s["portal"]["statuses"]),
                ("kill_api", s["portal"]["kill_api"]),
                ("kill_deliverer", s["portal"]["kill_deliverer"])) for _ in range(count)]
        if self.args.faults != "all":
            # Only the faults named (people's acts in the channels stay): to see what one
            # kind of fault costs against the calm seconds of the same run.
            keep = {k for k in self.args.faults.split(",") if k}
            kinds = [k for k in kinds if k in keep or k in NOT_FAULTS]
        rng = random.Random(self.args.seed)
        rng.shuffle(kinds)
        # Spread them over the middle 80 % of the load, away from the switches.
        points = sorted(rng.uniform(0.1, 0.9) for _ in kinds)
        return [(int(p * total_edits), k) for p, k in zip(points, kinds, strict=True)]

    def inject(self, kind: str, people: People | None = None) -> None:
        e = self.estate
        if kind.startswith("edi_"):
            e.edi.act(kind, people.legacy)
            self.changes[kind] += 1
            return
        if kind in PORTAL_ACTIONS:
            e.portal.act(kind, self.skus, self.deadline, people.legacy)
            if kind != "portal_status":
                self.changes[kind] += 1
            return
        if kind in ("kill_api", "kill_deliverer"):
            victim = next(p for p in self.portal_procs if p.name == kind.removeprefix("kill_"))
            victim.kill9()
        elif kind.startswith("crm_"):
            e.crm.act(kind, people.legacy, self.clerk_keys)
            if kind in CRM_ACTIONS:
                self.changes[kind] += 1
                return
        elif kind == "kill_worker":
            victim = random.choice([w for w in self.workers if w.alive()] or self.workers)
            victim.kill9()
        elif kind == "kill_router":
            victim = self._active_router() or random.choice(self.routers)
            victim.kill9()
        elif kind == "close_connections":
            with contextlib.suppress(subprocess.CalledProcessError):
                rabbitmqctl("close_all_connections", "-p", e.vhost, "chaos run")
        elif kind == "cloud_faults":
            from workers.cloud_sim.admin import SimulatorAdmin

            admin = SimulatorAdmin(e.cloud_url)
            admin.faults(error_rate=0.1, error_after_rate=0.1, burst_429=20, retry_after_s=1,
                         scope="any", seed=self.args.seed)
            started = time.time()
            threading.Timer(4.0, self._clear_cloud_faults, args=(started,)).start()
            admin.close()
        self.faults[kind] += 1
        self.fault_times.append((time.time(), kind))
        log(f"fault: {kind}")

    def _clear_cloud_faults(self, started: float) -> None:
        from workers.cloud_sim.admin import SimulatorAdmin

        with contextlib.suppress(Exception):
            admin = SimulatorAdmin(self.estate.cloud_url)
            admin.faults()
            admin.close()
        self.cloud_fault_windows.append((started, time.time()))

    def _active_router(self) -> Proc | None:
        from bus.db import create_state_engine
        from workers.router.lease import holders

        engine = create_state_engine(self.estate.state_url)
        try:
            for info in holders(engine):
                if info.state == "held":
                    pid = int(info.holder.split(":")[1])
                    return next((r for r in self.routers if r.pid == pid), None)
        finally:
            engine.dispose()
        return None

    # -- load
    def load(self, people: People, threads: int = 4) -> None:
        """People edit from ``threads`` threads; they pause while an operator switches the
        SoR (a cutover window), and faults are injected as the edits pass the plan's points."""
        total = self.scale["edits"]
        batch = self.args.people_batch or self.scale.get("people_batch", PEOPLE_BATCH)
        plan = self.fault_plan(total)
        targets = [("before the switch", int(total * SWITCH_AT), "cloud"),
                   ("cloud as SoR", int(total * ROLLBACK_AT), "legacy"),
                   ("after the rollback", total, None)]
        errors: list[BaseException] = []
        # Each thread's own keys, kept across phases (a deleted key leaves its list).
        shares = [people.keys[n::threads] for n in range(threads)]
        for phase, upto, next_sor in targets:
            self.stage = f"load: {phase}"
            started = time.monotonic()
            wall_started, sor = time.time(), people.sor
            before = people.seq

            def work(keys: list[str], upto: int = upto) -> None:
                # --edits-per-s: people's pace (each thread its share), 0 = as fast as the
                # ERPs take their edits.
                pace = self.args.edits_per_s / threads if self.args.edits_per_s else 0.0
                began, made = time.monotonic(), 0
                try:
                    while people.seq < upto and not errors:
                        if not keys:
                            raise RuntimeError("a clerk has no customer left to edit")
                        made += len(people.edit_batch(keys, batch, upto))
                        if pace:
                            ahead = began + made / pace - time.monotonic()
                            if ahead > 0:
                                time.sleep(ahead)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            pool = [threading.Thread(target=work, args=(shares[n],), daemon=True)
                    for n in range(threads)]
            for t in pool:
                t.start()
            while any(t.is_alive() for t in pool):
                if time.monotonic() > self.deadline:
                    raise TimeoutError(f"load not finished within --max-s ({people.seq})")
                while plan and plan[0][0] <= people.seq:
                    self.inject(plan.pop(0)[1], people)
                time.sleep(0.05)
            if errors:
                raise errors[0]
            self._rate(phase, started, people.seq - before)
            self.phase_spans.append((wall_started, time.time(), sor))
            second = self.args.second_domain
            if next_sor:
                # The operator lets coexist drain what people did before switching (people
                # are paused): the guarded switch waits only DRAIN_TIMEOUT_S for in-flight
                # work, and a backlog longer than its retries would fail the run.
                self.stage = f"settle before the switch after {phase}"
                self.drains[phase] = self.settle()
                self.stage = f"switch after {phase}"
            if next_sor == "cloud":
                self._move("cloud", "chaos: customer moves to the cloud")
                if second:  # one more domain forward, while people pause as for the first
                    self._move("cloud", f"chaos: {second} moves to the cloud", domain=second)
            elif next_sor == "legacy":
                self._move("legacy", "chaos: rollback drill", rollback=True)
                if second:
                    self._move("legacy", f"chaos: {second} rollback drill", rollback=True,
                               domain=second)
            if next_sor:
                with people.lock:
                    people.sor = next_sor
        for _, kind in plan:
            self.inject(kind, people)

    def _rate(self, phase: str, started: float, edits: int) -> None:
        seconds = max(time.monotonic() - started, 1e-6)
        self.phase_rates[phase] = round(edits / seconds, 1)

    # -- settle and verify
    def status_app(self):
        from workers.bootstrap import App
        from workers.config import Settings

        if self._status_app is None:
            self._status_app = App(Settings.from_env(self.estate.env))
        return self._status_app

    def settle(self) -> float:
        from workers.observe import collect_status

        started = time.monotonic()
        quiet = 0

        def settled() -> bool:
            # What `coexist status --format json` reports, read in this process (a new
            # process per poll costs seconds on a loaded machine).
            try:
                s = collect_status(self.status_app()).to_dict()
            except Exception as exc:  # noqa: BLE001 - a broker reconnecting: ask again
                log(f"status not readable yet: {exc}")
                return False
            held = sum(q.get("held") or 0 for q in s["broker"]["queues"])
            lag = [c.get("lag") for c in s["capture"] if c.get("lag") is not None]
            return s["outbox"]["backlog"] == 0 and held == 0 and all(n == 0 for n in lag)

        while quiet < 2:
            if time.monotonic() > self.deadline:
                raise TimeoutError("did not settle within --max-s")
            quiet = quiet + 1 if settled() else 0
            time.sleep(0.5)
        return round(time.monotonic() - started, 1)

    def verify(self, people: People, initial: dict[str, Decimal]) -> dict:
        touched = sorted({e.key for e in people.edits})
        last_sor: dict[str, Edit] = {}
        sor_values: dict[str, list[int]] = defaultdict(list)
        for e in people.edits:
            if not e.stray:
                last_sor[e.key] = e
                if e.kind == "edit":
                    sor_values[e.key].append(e.seq)
        lost, regressed, diverged = [], [], []
        # Both ERPs read in bulk (a round trip per record took minutes at 20,000).
        in_legacy = people.legacy.get_many("customer", touched)
        in_cloud = people.cloud_get_many(touched)
        for key in touched:
            last = last_sor.get(key)
            if last is not None and last.kind == "delete":
                expected = None  # deleted in its SoR: gone from both ERPs
            else:
                expected = Decimal(last.seq) if last is not None else initial[key]
            legacy = in_legacy.get(key)
            cloud = in_cloud.get(key)
            values = {"legacy": legacy.credit_limit if legacy else None,
                      "cloud": cloud.credit_limit if cloud else None}
            if values["legacy"] != values["cloud"]:
                diverged.append({"key": key, **{k: str(v) for k, v in values.items()},
                                 "expected": str(expected)})
            for system, value in values.items():
                if value == expected:
                    continue
                # A delete not applied on a side is lost (the record lives on there); an
                # older SoR edit where a newer one belongs is a regression.
                older = (expected is not None and value is not None
                         and int(value) in sor_values[key])
                (regressed if older else lost).append(
                    {"key": key, "system": system, "holds": str(value),
                     "expected": str(expected)})
        deleted = {e.key for e in people.edits if e.kind == "delete"}
        gone = [k for k in deleted if in_legacy.get(k) is None and in_cloud.get(k) is None]
        records = self.exception_records()
        exceptions = self._exceptions(people, records)
        crm = None
        if self.estate.crm is not None:
            crm = self.estate.crm.verdict(people.sor_customers(), people.cloud_get,
                                          people.deleted, records)
        edi = self.estate.edi.verdict(people.engine) if self.estate.edi is not None else None
        portal = (self.estate.portal.verdict(people.legacy, lambda *a, **k: cli(
            self.estate, *a, **k), records) if self.estate.portal is not None else None)
        return {"crm": crm, "edi": edi, "portal": portal, "touched_records": len(touched),
                "lost": len(lost),
                "regressed": len(regressed), "diverged": len(diverged),
                "deletes": {"made": len(deleted), "gone_from_both": len(gone)},
                "examples": {"lost": lost[:5], "regressed": regressed[:5],
                             "diverged": diverged[:5]},
                "exceptions": exceptions}

    def exception_records(self, status: str = "all") -> list[dict]:
        """What ``coexist dlq list --status S --format json`` lists, read in this process
        (the same store and summary; a CLI process per read costs seconds on a loaded
        machine, and the operator's acts on them, archive and replay, stay CLI commands)."""
        from bus.exception_store import ExceptionStore
        from workers.observe.exceptions import record_summary

        store = ExceptionStore(self.status_app().state)
        return [record_summary(r) for r in
                store.list(status=None if status == "all" else status, limit=None)]

    def _exceptions(self, people: People, records: list[dict]) -> dict:
        by_type = Counter(r["error_type"] for r in records)
        strays = sum(1 for e in people.edits if e.stray)
        unexplained = [r for r in records if not self._explains(r, strays)]
        # More stray reports than strays made: the surplus is explained by nothing.
        surplus = max(0, by_type.get("StrayWrite", 0) - strays)
        return {"by_type": dict(by_type), "by_class": dict(Counter(r["failure_class"]
                                                                   for r in records)),
                "stray_writes_made": strays, "stray_reports": by_type.get("StrayWrite", 0),
                "unexplained": len(unexplained) + surplus,
                "unexplained_examples": [{k: r[k] for k in ("id", "error_type", "key",
                                                            "first_failed_at",
                                                            "error_message")}
                                         for r in unexplained[:5]]}

    def _explains(self, record: dict, strays: int) -> bool:
        """Whether something the run did explains ``record``: a person's act for a business
        report, an injected fault shortly before it for a technical failure."""
        crm = self.estate.crm
        kind = record["error_type"]
        if kind == "StrayWrite":
            return strays > 0
        if kind == "OwnershipViolationReported":
            return crm is not None and record["key"] in crm.truth.forbidden
        if kind == "CrmDuplicateAccount":
            return crm is not None and any(d[0] for d in crm.truth.duplicates)
        if kind == "CrmRefused:DUPLICATES_DETECTED":
            return crm is not None and record["key"] in crm.lookalikes
        if kind == "CrmRefused:UNABLE_TO_LOCK_ROW":
            return crm is not None and record["key"] in crm.truth.locked
        if kind == "EdiDuplicateInterchange":
            return self.estate.edi is not None and bool(self.estate.edi.resent)
        if kind in ("WebhookEndpointGone", "EndpointError", "WebhookEndpointDisabled"):
            # Webhooks for the endpoint the customer took down (/gone): the 410 itself, those
            # waiting for it when coexist disabled it (more of them now that the order desk
            # moves orders on) and those that came after; never one for /hook.
            portal = self.estate.portal
            return portal is not None and f"endpoint {portal.endpoints.get('/gone')} " in (
                record.get("error_message") or "") + " "
        return self._fault_explains(record)

    def _fault_explains(self, record: dict) -> bool:
        """A technical failure first recorded within ``FAULT_EXPLAINS_S`` after an injected
        fault (cloud or CRM fault window, connection closes, kills) is explained by it."""
        from datetime import datetime

        if record["failure_class"] not in ("technical", "dead_letter"):
            return False
        try:
            at = datetime.fromisoformat(record["first_failed_at"]).timestamp()
        except (TypeError, ValueError):
            return False
        return any(t - 5 <= at <= t + FAULT_EXPLAINS_S for t, _kind in self.fault_times)

    def throughput(self, people: People, started: float, ended: float) -> dict:
        """coexist's routed writes per second into the cloud (read from the simulator's own
        change feed: writes by coexist's client, not by people) while the legacy ERP was the
        SoR, in 1-s buckets within ``FAULT_WINDOW_S`` after a fault against the other
        buckets of the same run. People do not wait for coexist, so in calm buckets the
        figure follows their pace."""
        from datetime import datetime

        writes: Counter = Counter()
        after = 0
        while page := people.cloud.changes(after, 1000):
            for c in page:
                if c["clientId"] not in PERSON_CLIENTS:
                    writes[int(datetime.fromisoformat(c["at"]).timestamp())] += 1
            after = page[-1]["cursor"]
        edits = Counter(int(e.at) for e in people.edits if e.sor == "legacy")
        spans = [(a, b) for a, b, sor in self.phase_spans if sor == "legacy"]
        faulty = [(t, t + FAULT_WINDOW_S) for t, _ in self.fault_times]
        buckets = {"fault": [], "calm": []}
        for a, b in spans:
            for sec in range(int(a) + 1, int(b)):  # whole seconds inside the phase
                hit = any(x <= sec + 1 and sec <= y for x, y in faulty)
                buckets["fault" if hit else "calm"].append(sec)
        out: dict = {"window_s": FAULT_WINDOW_S}
        for name, secs in buckets.items():
            n = len(secs) or 1
            out[name] = {"seconds": len(secs),
                         "routed_writes_per_s": round(sum(writes[x] for x in secs) / n, 1),
                         "people_edits_per_s": round(sum(edits[x] for x in secs) / n, 1)}
        calm = out["calm"]["routed_writes_per_s"]
        out["fault_vs_calm"] = round(out["fault"]["routed_writes_per_s"] / calm, 2) \
            if calm and out["fault"]["seconds"] else None  # None: no fault in a legacy phase
        out.update(self._fault_evidence(writes, edits, spans, buckets))
        return out

    def _fault_evidence(self, writes: Counter, edits: Counter, spans: list, buckets: dict
                        ) -> dict:
        """Where the fault seconds lose routed writes, from this run's own timestamps:
        each fault-window second attributed to the latest fault before it (by kind), the
        seconds in them without a single routed write, each fault's per-second timeline, and
        whether writes missing inside the phases were made up afterwards (between the
        phase's end and the next phase, while people pause for a switch or the settle)."""
        inside = {sec for a, b in spans for sec in range(int(a) + 1, int(b))}
        faults = sorted(self.fault_times)
        by_kind: dict[str, list[int]] = defaultdict(list)
        for sec in buckets["fault"]:
            latest = [(t, k) for t, k in faults if t <= sec + 1]
            by_kind[latest[-1][1] if latest else "before_first"].append(sec)
        kinds = {k: {"seconds": len(v),
                     "routed_writes_per_s": round(sum(writes[x] for x in v) / len(v), 1),
                     "people_edits_per_s": round(sum(edits[x] for x in v) / len(v), 1),
                     "seconds_without_a_write": sum(1 for x in v if writes[x] == 0)}
                 for k, v in sorted(by_kind.items())}
        timeline = []
        for t, k in faults:
            sec = int(t)
            if sec not in inside:
                continue
            timeline.append({"kind": k, "at": round(t, 1),
                             "writes": [writes[sec + d] for d in range(-2, FAULT_WINDOW_S + 1)],
                             "edits": [edits[sec + d] for d in range(-2, FAULT_WINDOW_S + 1)]})
        made_up = []
        for a, b in spans:
            secs = range(int(a) + 1, int(b))
            after = range(int(b), int(b) + 30)
            made_up.append({"edits": sum(edits[x] for x in secs),
                            "writes_inside": sum(writes[x] for x in secs),
                            "writes_30s_after": sum(writes[x] for x in after)})
        return {"by_kind": kinds, "timeline_from_minus_2s": timeline, "phases": made_up}

    def wait_crm(self, people: People) -> float:
        """Wait (bounded) until the CRM shows what people did; returns the seconds."""
        started = time.monotonic()
        crm = self.estate.crm
        crm.clear_faults()
        deadline = min(started + CRM_WAIT_S, self.deadline)
        while True:
            if crm.done(people.sor_customers(), people.cloud_get, people.deleted):
                break
            if time.monotonic() > deadline:
                log("the CRM did not show everything within its wait; the verdict says what")
                break
            time.sleep(1.0)
        return round(time.monotonic() - started, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-s", type=float, default=900.0,
                   help="Give up (exit 2) if the run is not done by then.")
    p.add_argument("--keep", action="store_true", help="Keep the run's folder (logs).")
    p.add_argument("--cluster", action="store_true", help="RabbitMQ as a three-node cluster, "
                   "its busiest queue's leader killed mid-load (scripts/chaos/cluster.py).")
    p.add_argument("--faults", default="all",
                   help="Comma-separated fault kinds to inject (kill_worker, kill_router, "
                        "close_connections, cloud_faults, crm_lock, crm_limit, kill_api, "
                        "kill_deliverer; 'none' for none; default all).")
    p.add_argument("--second-domain", default=None,
                   help="One more domain moved shadow -> cloud -> rolled back with the "
                        "customer domain, through the same guarded CLI ('' for none; "
                        "default product, none at --scale tiny: it costs the suite ~60 s).")
    p.add_argument("--people-batch", type=int, default=0,
                   help="People's edits saved per ERP transaction (default: the scale's, "
                        f"{PEOPLE_BATCH} from medium up).")
    p.add_argument("--edits-per-s", type=float, default=0.0,
                   help="People's pace over all their threads (default 0: as fast as the "
                        "ERPs take the edits).")
    p.add_argument("--channels", default=",".join(CHANNELS),
                   help=f"Comma-separated channels to drive besides the ERPs ({', '.join(CHANNELS)}"
                        "; '' for the ERPs only).")
    args = p.parse_args(argv)
    if args.second_domain is None:
        args.second_domain = "" if args.scale == "tiny" else "product"
    channels = {c.strip() for c in args.channels.split(",") if c.strip()}
    if channels - set(CHANNELS):
        p.error(f"--channels: unknown {', '.join(sorted(channels - set(CHANNELS)))} "
                f"(known: {', '.join(CHANNELS)})")
    if args.cluster:
        from cluster import attach_to_chaos_run

        attach_to_chaos_run(sys.modules[__name__])
    signal.signal(signal.SIGTERM, _terminate)  # a stopped run still removes what it made
    home = Path(tempfile.mkdtemp(prefix="coexist-chaos-"))
    estate = Estate(uuid.uuid4().hex[:8], home)
    if "crm" in channels:
        estate.crm = CrmChannel(home, free_port(), args.seed)
    if "edi" in channels:
        estate.edi = EdiChannel(home, args.seed)
    if "portal" in channels:
        estate.portal = PortalChannel(home, free_port(), free_port())
    started = time.monotonic()
    run = Run(args, estate)
    sup: Supervisor | None = None
    people: People | None = None
    report: dict = {"scale": args.scale, "seed": args.seed, "home": str(home),
                    "channels": sorted(channels), "faults_injected": args.faults}
    ok = False
    try:
        provision(estate)
        run.stage = "setup"
        keys = run.setup()
        seed = people_seed(estate)
        seed_dups = seed_duplicate_groups(seed)
        # The partner's and the portal's customers: ones the CRM's people do not take (they
        # take from the end), the clerks do not edit or delete (taken out of their keys).
        avoid = set(estate.crm.find_lookalikes(seed)) if estate.crm else set()
        for channel in (estate.edi, estate.portal):
            if channel is None:
                continue
            if channel is estate.edi:
                estate.edi.choose(keys, avoid)
            else:
                estate.portal.choose(seed, avoid)
            avoid.add(channel.customer)
            with (home / "coexist.toml").open("a") as f:
                f.write(channel.toml())
            estate.env.update(channel.env())
        # Portal customers order what is orderable (a discontinued SKU is refused, 422).
        run.skus = sorted(p.key for p in people_seed(estate, "product")
                          if str(p.status) == "active")
        sup = run.start_processes()
        run.stage = "backfill and shadow"
        run.backfill_and_shadow()
        clerk_keys = keys
        if estate.crm is not None:
            estate.crm.find_lookalikes(people_seed(estate))
            clerk_keys = estate.crm.reserve(keys)
        taken = {c.customer for c in (estate.edi, estate.portal) if c is not None}
        clerk_keys = [k for k in clerk_keys if k not in taken]
        run.clerk_keys = clerk_keys
        people = People(estate, clerk_keys, args.seed,
                        delete_share=DELETE_SHARE if "deletes" in channels else 0.0)
        initial = {k: people.legacy.get("customer", k).credit_limit for k in clerk_keys}
        if estate.edi is not None:
            estate.edi.connect(people.legacy)
        load_started = time.time()
        run.load(people)
        run.stage = "settle after the load"
        log("load done; waiting for coexist to settle")
        settle_s = run.settle()
        if estate.crm is not None:
            report["crm_wait_s"] = run.wait_crm(people)
            settle_s += run.settle()
        if estate.edi is not None:
            report["edi_wait_s"] = wait_edi(estate.edi, people.legacy, run.deadline)
            settle_s += run.settle()
        if estate.portal is not None:
            report["portal_wait_s"] = wait_portal(estate.portal, run.deadline)
        report["throughput"] = run.throughput(people, load_started, time.time())
        sup.halt.set()
        run.stage = "verify"
        result = run.verify(people, initial)
        repair = cli(estate, "reconcile", "customer", "--repair", "--yes", check=False)
        final = cli(estate, "reconcile", "customer", "--format", "json", check=False)
        raw_drift, raw_duplicates = _drift(final.stdout)
        (home / "reconcile-customer-final.json").write_text(final.stdout + final.stderr)
        report["seed_duplicates"] = _seeded(final.stdout, seed_dups)
        drift, duplicates = _beyond_seed(final.stdout, report["seed_duplicates"])
        if drift or duplicates:
            report["final_reconcile"] = _drifted(final.stdout, "customer")
        second = None
        if args.second_domain:
            d = args.second_domain
            cli(estate, "reconcile", d, "--repair", "--yes", check=False)
            done = cli(estate, "reconcile", d, "--format", "json", check=False)
            d_drift, d_dups = _drift(done.stdout, d)
            second = {"domain": d, "switches": [s for s in run.switches if s.get("domain") == d],
                      "final_drift_pct": d_drift, "duplicates": d_dups}
            second["ok"] = d_drift == 0.0 and d_dups == 0 and len(second["switches"]) == 3
        if result["portal"] is not None:  # made during the load or, deferred, at its end
            run.changes["portal_status"] = result["portal"]["status_changes"]["made"]
        report.update({
            "changes": len(people.edits) + sum(run.changes.values()),
            "changes_by_kind": {**_kinds(people.edits), **run.changes},
            "customers": len(keys),
            "faults": dict(run.faults), "restarts": dict(sup.restarts),
            "switches": run.switches, "settle_s": settle_s,
            "edits_per_s_by_phase": run.phase_rates, "replayed": dict(run.replayed),
            "settle_before_switch_s": run.drains,
            "reconcile_repair_exit": repair.returncode, "final_drift_pct": drift,
            "duplicates": duplicates, "final_drift_pct_with_seed": raw_drift,
            "duplicates_with_seed": raw_duplicates, "second_domain": second,
            **result, "notes": run.notes,
        })
        ok = (result["lost"] == 0 and result["regressed"] == 0 and result["diverged"] == 0
              and duplicates == 0 and result["exceptions"]["unexplained"] == 0
              and drift == 0.0 and result["deletes"]["gone_from_both"]
              == result["deletes"]["made"]
              and (result["crm"] is None or result["crm"]["ok"])
              and (result["edi"] is None or result["edi"]["ok"])
              and (result["portal"] is None or result["portal"]["ok"])
              and (second is None or second["ok"]))
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the report says why
        report["error"] = f"{type(exc).__name__}: {exc}"
        log(report["error"])
        # What the run got to (a run stopped or failed midway says how far it came).
        report.setdefault("partial", {
            "stage": run.stage, "changes_so_far": (len(people.edits) if people else 0)
            + sum(run.changes.values()),
            "faults": dict(run.faults), "switches": run.switches,
            "edits_per_s_by_phase": run.phase_rates,
            "settle_before_switch_s": run.drains,
            "restarts": dict(sup.restarts) if sup is not None else {},
            "notes": run.notes})
    finally:
        if sup is not None:
            sup.halt.set()
        with contextlib.suppress(Exception):
            stop_all([*run.routers, *run.workers, *run.portal_procs,
                      *([run.sim] if run.sim else []),
                      *([run.crm_sim] if run.crm_sim else [])])
        if people is not None:
            people.close()
        if estate.crm is not None:
            estate.crm.close()
        if estate.edi is not None:
            with contextlib.suppress(Exception):
                estate.edi.close()
        if estate.portal is not None:
            with contextlib.suppress(Exception):
                estate.portal.close()
        teardown(estate, args.keep)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["cli_seconds"] = {k: round(v, 1) for k, v in CLI_SECONDS.most_common()}
    report["load_average"] = os.getloadavg()
    report["ok"] = ok
    print(json.dumps(report, default=str))
    return 0 if ok else (2 if "error" in report else 1)


def people_seed(estate: Estate, domain: str = "customer") -> list:
    """Every customer (or record of ``domain``) of the seeded legacy ERP (before anyone
    edits)."""
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine

    engine = create_legacy_engine(estate.legacy_url)
    try:
        return list(LegacyErp(engine).stream(domain))
    finally:
        engine.dispose()


def seed_duplicate_groups(seed: list) -> list[list[str]]:
    """The seeded customers that share a natural key (name, bill-to postal code, tax id) as
    the legacy ERP holds them: two customers of the seed, not a record coexist made twice.
    The sample makes 5 such pairs at 20,000 customers and none at 2,000."""
    from coexistence.reconcile.digest import natural_key

    by_nk: dict = defaultdict(list)
    for record in seed:
        by_nk[natural_key(record)].append(record.key)
    return sorted(sorted(keys) for keys in by_nk.values() if len(keys) > 1)


def _seeded(stdout: str, seed_groups: list[list[str]]) -> dict:
    """The final reconcile's duplicate findings that are the seed's own pairs (their keys
    all in one seed group, on either side)."""
    groups = [frozenset(g) for g in seed_groups]
    try:
        findings = json.loads(stdout).get("findings") or []
    except (json.JSONDecodeError, AttributeError, TypeError):
        findings = []
    found = [f for f in findings if f.get("kind") == "duplicate" and f.get("domain") == "customer"
             and any(set(f.get("keys") or ()) <= g for g in groups)]
    return {"seed_groups": seed_groups,
            "in_final": sum(len(f["keys"]) - 1 for f in found),
            "findings": [{"side": f.get("side"), "keys": f["keys"]} for f in found]}


def _beyond_seed(stdout: str, seeded: dict) -> tuple[float | None, int | None]:
    """The customer drift % and duplicates of the final reconcile without the seed's own
    duplicate pairs (each surplus record of one counts once in the reconcile's drift)."""
    drift, duplicates = _drift(stdout)
    if drift is None or duplicates is None:
        return drift, duplicates
    run = next(r for r in json.loads(stdout)["runs"] if r.get("domain") == "customer")
    n = seeded["in_final"]
    differing = sum(int(run.get(k) or 0) for k in (
        "exclusive_legacy", "exclusive_cloud", "mismatched", "duplicates", "orphans",
        "untranslatable")) - n
    total = max(int(run.get("rows_legacy") or 0), int(run.get("rows_cloud") or 0), 1)
    return round(100.0 * differing / total, 6), duplicates - n


def _drifted(stdout: str, domain: str) -> str:
    """What the reconcile before a refused switch found (counts and the first findings:
    which records drifted), for the run's notes; '' when it found nothing."""
    try:
        out = json.loads(stdout)
    except (json.JSONDecodeError, TypeError):
        return ""
    runs = [r for r in out.get("runs") or [] if r.get("domain") == domain]
    counts = {k: v for r in runs for k, v in r.items()
              if k in ("drift_pct", "mismatched", "exclusive_legacy", "exclusive_cloud",
                       "duplicates", "orphans", "key_mismatches", "untranslatable")
              and v}
    findings = out.get("findings") or []
    if not counts and not findings:
        return ""
    return f"; reconcile before it: {json.dumps(counts)}, findings {json.dumps(findings[:5])}"


def _kinds(edits: list[Edit]) -> dict[str, int]:
    """People's ERP changes by kind: edits in the SoR, stray writes, deletes."""
    return dict(Counter("stray_write" if e.stray else
                        ("erp_delete" if e.kind == "delete" else "erp_edit") for e in edits))


def _drift(stdout: str, domain: str = "customer") -> tuple[float | None, int | None]:
    """A domain's drift % and duplicate count from `coexist reconcile --format json`."""
    try:
        runs = json.loads(stdout)["runs"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None, None
    for r in runs:
        if r.get("domain") == domain:
            return float(r.get("drift_pct") or 0.0), int(r.get("duplicates") or 0)
    return None, None


if __name__ == "__main__":
    sys.exit(main())

"""A three-node RabbitMQ cluster on this machine, and coexist losing one of its nodes.

    .venv/bin/python scripts/chaos/cluster.py --up          # start it, print the URLs, wait
    .venv/bin/python scripts/chaos/cluster.py --run         # the fault run (one JSON report)
    .venv/bin/python scripts/chaos/run.py --cluster ...     # the chaos run on such a cluster
                                                            # (see attach_to_chaos_run)

``Cluster`` starts RabbitMQ nodes ``coexist-c1-<id>@localhost`` ... beside the system node
(which it never touches): each its own AMQP and distribution port on 127.0.0.1, its data
and logs under one temporary folder, one Erlang cookie of its own (a private ``HOME``), no
plugins. Nodes 2 and 3 join node 1. Everything is stopped and removed afterwards, also on
Ctrl-C, SIGTERM or a failure (and the nodes get SIGTERM if this script is killed).

``--run``: the production processes - ``coexist router`` and two ``coexist worker`` - on
PostgreSQL (a state and a legacy database of their own), the cloud simulator
(``coexist cloud-sim``) and the cluster (``COEXIST_BROKER_URL`` naming all three nodes,
``COEXIST_QUEUE_TYPE=quorum``). The customer domain is in shadow: people edit customers in
the legacy ERP and coexist routes every change to the cloud. Mid-load the leader node of
the busiest queue is killed with kill -9 of its Erlang VM and started again after
``--down-s``. Verdict, judged from the ERPs themselves and the script's own log of what
people did (never coexist's bookkeeping): ``lost`` (a customer whose cloud record does not
hold its last legacy edit), ``applied_twice`` (more writes by coexist in the cloud's change
feed for a customer than changes were made to it), exception records, consumers back on
the survivors (RabbitMQ's consumer counts and the workers' "reconnected to" log lines),
and the recovery times. Exit 0 only if nothing was lost or applied twice and every queue's
consumers came back.

Environment: ``COEXIST_CHAOS_PG_URL`` (admin URL, default postgres@127.0.0.1/test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: RabbitMQ's own scripts; /usr/sbin's wrappers switch to the rabbitmq user and drop the
#: environment that gives each node its name, ports and folders.
RABBITMQ_BIN = Path(os.environ.get("COEXIST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
PG_ADMIN_URL = os.environ.get("COEXIST_CHAOS_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: How many times the queues are read to find the busiest one before the kill.
BUSIEST_SAMPLES = 5
#: Longest wait for a node to boot (or to boot again after a kill), in seconds.
NODE_START_TIMEOUT_S = 120.0


def log(msg: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """A child gets SIGTERM when this script dies, even by kill -9 (Linux prctl)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


# --------------------------------------------------------------------------- the cluster


@dataclass
class Node:
    name: str
    amqp_port: int
    dist_port: int
    folder: Path
    script: subprocess.Popen | None = None

    @property
    def beam_pid(self) -> int | None:
        """The Erlang VM's pid (RabbitMQ writes it once it boots)."""
        try:
            return int((self.folder / "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def url(self, vhost: str = "/", user: str = "guest", password: str = "guest") -> str:
        return (f"amqp://{user}:{password}@127.0.0.1:{self.amqp_port}/"
                f"{quote(vhost, safe='')}")


@dataclass
class Cluster:
    """``size`` RabbitMQ nodes clustered on this machine, under ``base`` (a temp folder)."""

    size: int = 3
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="coexist-cluster-")))
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    nodes: list[Node] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    # -- lifecycle
    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        started = time.monotonic()
        cookie = self.base / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (self.base / "rabbitmq-env.conf").write_text("")  # not the system node's
        (self.base / "enabled_plugins").write_text("[].\n")
        for n in range(1, self.size + 1):
            folder = self.base / f"n{n}"
            folder.mkdir()
            node = Node(f"coexist-c{n}-{self.run_id}@localhost", free_port(), free_port(),
                        folder)
            (folder / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}\n"
                # A 3-node cluster: the side that lost the majority stops serving.
                "cluster_partition_handling = pause_minority\n"
                "log.file.level = info\n")
            self.nodes.append(node)
        for node in self.nodes:  # boot in parallel; they join afterwards
            self._launch(node)
        for node in self.nodes:
            self._await(node)
        booted = time.monotonic()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        running = self.running_nodes(first)
        if sorted(running) != sorted(n.name for n in self.nodes):
            raise RuntimeError(f"cluster did not form: running {running}")
        self.figures.update({
            "nodes": self.size, "boot_s": round(booted - started, 1),
            "start_up_s": round(time.monotonic() - started, 1),
            "rss_mb_per_node": [_rss_mb(n.beam_pid or 0) for n in self.nodes],
        })
        self.figures["rss_mb_total"] = round(sum(self.figures["rss_mb_per_node"]), 1)
        log(f"{self.size} nodes clustered in {self.figures['start_up_s']} s "
            f"({self.figures['rss_mb_total']} MB RSS): "
            + ", ".join(f"{n.name} :{n.amqp_port}" for n in self.nodes))

    def _env(self, node: Node | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({"HOME": str(self.base), "ERL_EPMD_ADDRESS": "127.0.0.1",
                    "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
                    "LC_ALL": "C.UTF-8"})
        if node is not None:
            f = node.folder
            env.update({
                "RABBITMQ_NODENAME": node.name, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(node.amqp_port),
                "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_CONFIG_FILE": str(f / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(f / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(f / "mnesia"),
                "RABBITMQ_MNESIA_DIR": str(f / "mnesia" / node.name),
                "RABBITMQ_LOG_BASE": str(f / "log"), "RABBITMQ_PID_FILE": str(f / "pid"),
                "RABBITMQ_SCHEMA_DIR": str(f / "schema"),
                "RABBITMQ_GENERATED_CONFIG_DIR": str(f / "config"),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(f / "plugins-expand"),
                "RABBITMQ_FEATURE_FLAGS_FILE": str(f / "feature_flags"),
            })
        return env

    def _launch(self, node: Node) -> None:
        with contextlib.suppress(FileNotFoundError):
            (node.folder / "pid").unlink()
        out = (node.folder / "server.out").open("ab")
        node.script = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")],
                                       env=self._env(node), cwd=self.base, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       preexec_fn=_die_with_parent)
        out.close()

    def _await(self, node: Node, timeout_s: float = NODE_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if node.script is not None and node.script.poll() is not None:
                tail = (node.folder / "server.out").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{node.name} exited {node.script.returncode}:\n{tail}")
            done = self.ctl(node, "await_startup", "--timeout", "30", check=False,
                            timeout_s=40)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} not up within {timeout_s:g} s: "
                                   f"{done.stderr.strip()[-300:]}")
            time.sleep(0.5)

    def ctl(self, node: Node, *args: str, check: bool = True, timeout_s: float = 60,
            tool: str = "rabbitmqctl") -> subprocess.CompletedProcess:
        done = subprocess.run([str(RABBITMQ_BIN / tool), "-q", "-n", node.name, *args],
                              env=self._env(), capture_output=True, text=True,
                              timeout=timeout_s)
        if check and done.returncode != 0:
            raise RuntimeError(f"{tool} -n {node.name} {' '.join(args)} exited "
                               f"{done.returncode}: {(done.stderr or done.stdout).strip()}")
        return done

    def stop(self) -> None:
        """Stop every node (SIGTERM, kill -9 after 30 s) and remove the folder."""
        for node in self.nodes:
            if node.script is not None and node.script.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.script.terminate()
        for node in self.nodes:
            if node.script is None:
                continue
            try:
                node.script.wait(30)
            except subprocess.TimeoutExpired:
                node.script.kill()
            pid = node.beam_pid
            if pid and _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)

    # -- what the run needs
    def urls(self, vhost: str = "/") -> str:
        """``COEXIST_BROKER_URL`` for this cluster: every node, comma-separated."""
        return ",".join(n.url(vhost) for n in self.nodes)

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if n.script is not None and n.script.poll() is None
                and n.beam_pid and _alive(n.beam_pid)]

    def running_nodes(self, via: Node) -> list[str]:
        status = json.loads(self.ctl(via, "cluster_status", "--formatter", "json").stdout)
        return list(status.get("running_nodes", []))

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def queues(self, vhost: str, via: Node | None = None) -> list[dict]:
        """Every queue of ``vhost`` with its type, leader, messages and consumers."""
        via = via or self.alive()[0]
        done = self.ctl(via, "list_queues", "-p", vhost, "name", "type", "leader", "messages",
                        "consumers", "--formatter", "json", timeout_s=30)
        return json.loads(done.stdout or "[]")

    def kill9(self, node: Node) -> float:
        """kill -9 of the node's Erlang VM; returns the time of the kill."""
        pid = node.beam_pid
        if not pid:
            raise RuntimeError(f"{node.name} has no pid file")
        os.kill(pid, signal.SIGKILL)
        at = time.time()
        if node.script is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.script.wait(30)
        return at

    def restart(self, node: Node) -> None:
        """Start a killed node again on its data folder; it rejoins the cluster."""
        self._launch(node)
        self._await(node)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- the fault run


class Proc:
    """One coexist process, its output in ``<home>/<name>.log``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], home: Path):
        self.name, self.args, self.env, self.home = name, args, env, home
        self.popen: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.home / f"{self.name}.log"

    def start(self) -> None:
        exe = Path(sys.executable).with_name("coexist")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "workers.cli"]
        out = self.log.open("ab")
        self.popen = subprocess.Popen(cmd + self.args, env=self.env, cwd=ROOT, stdout=out,
                                      stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        out.close()
        self.starts += 1

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout_s: float = 30) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.terminate()
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)

    def lines(self) -> list[dict]:
        out = []
        with contextlib.suppress(OSError):
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(line))
        return out


def coexist(env: dict[str, str], *args: str, check: bool = True,
            timeout_s: float = 300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("coexist")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "workers.cli"]
    done = subprocess.run(cmd + list(args), env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s)
    if check and done.returncode != 0:
        raise RuntimeError(f"coexist {' '.join(args)} exited {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()[-1500:]}")
    return done


class FaultRun:
    """The ``--run`` mode: see the module docstring."""

    def __init__(self, args, cluster: Cluster, home: Path):
        self.args, self.cluster, self.home = args, cluster, home
        self.run_id = cluster.run_id
        self.deadline = time.monotonic() + args.max_s
        self.dbs: list[str] = []
        self.procs: list[Proc] = []
        self.env: dict[str, str] = {}
        self.report: dict = {}
        self.exits: Counter = Counter()
        self.load_cursor = 0

    # -- estate
    def provision(self) -> None:
        from sqlalchemy import create_engine, text

        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for kind in ("state", "legacy"):
                db = f"coexist_cluster_{self.run_id}_{kind}"
                conn.execute(text(f'CREATE DATABASE "{db}"'))
                self.dbs.append(db)
        admin.dispose()
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        self.state_url, self.legacy_url = (f"{base}/{db}" for db in self.dbs)
        self.sim_port = free_port()
        self.cloud_url = f"http://127.0.0.1:{self.sim_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("COEXIST_")}
        env.update({
            "COEXIST_HOME": str(self.home), "COEXIST_STATE_URL": self.state_url,
            "COEXIST_LEGACY_URL": self.legacy_url, "COEXIST_CLOUD_URL": self.cloud_url,
            "COEXIST_BROKER_URL": self.cluster.urls("/"), "COEXIST_QUEUE_TYPE": "quorum",
            "COEXIST_BROKER_MANAGEMENT_URL": "off", "COEXIST_REDIS_URL": "",
            "COEXIST_ACTOR": "cluster-run", "PYTHONPATH": str(ROOT),
        })
        self.env = env

    def teardown(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.stop()
        from sqlalchemy import create_engine, text

        with contextlib.suppress(Exception):
            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                for db in self.dbs:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            admin.dispose()

    def setup(self) -> list[str]:
        from sqlalchemy import text

        from coexistence.sample import SampleSpec
        from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
        from workers.legacy_erp.seed import seed_legacy

        engine = create_legacy_engine(self.legacy_url)
        create_legacy_schema(engine)
        seed_legacy(engine, SampleSpec(customers=self.args.customers, products=5),
                    domains=("customer",))
        with engine.connect() as conn:
            keys = [str(int(k)) for (k,) in conn.execute(text('SELECT "CUSTNO" FROM "CUSTMAST"'))]
        engine.dispose()
        coexist(self.env, "db", "upgrade")
        coexist(self.env, "cutover", "set", "customer", "shadow", "--force", "--no-wait",
                "--reason", "cluster run: the cloud shadows the legacy ERP")
        sim = Proc("cloud-sim", ["cloud-sim", "--db", str(self.home / "cloud.db"), "--port",
                                 str(self.sim_port)], self.env, self.home)
        sim.start()
        self.procs.append(sim)
        self._wait(self._sim_ok, 60, "cloud simulator")
        self.routers = [Proc("router1", ["router"], self.env, self.home)]
        self.workers = [Proc(f"worker{n}", ["worker", "--threads", "4"], self.env, self.home)
                        for n in (1, 2)]
        for p in (*self.routers, *self.workers):
            p.start()
            self.procs.append(p)
        return keys

    def _sim_ok(self) -> bool:
        import httpx

        try:
            return httpx.get(self.cloud_url + "/changes?limit=1", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait(self, check, timeout_s: float, what: str, poll_s: float = 0.2):
        deadline = min(time.monotonic() + timeout_s, self.deadline)
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s:g} s")
            time.sleep(poll_s)

    def supervise(self) -> None:
        """supervisord's autorestart: a coexist process that died is started again (each
        exit is counted in the report: losing a node should cost none)."""
        for p in (*self.routers, *self.workers):
            if not p.alive():
                self.exits[p.name] += 1
                log(f"{p.name} exited ({p.popen.returncode if p.popen else '?'}); restarting")
                p.start()

    # -- the run
    def run(self) -> dict:
        from workers.cloud_sim.admin import SimulatorAdmin
        from workers.legacy_erp.adapter import LegacyErp
        from workers.legacy_erp.schema import create_legacy_engine

        keys = self.setup()
        engine = create_legacy_engine(self.legacy_url, pool_size=4)
        legacy = LegacyErp(engine)
        cloud = SimulatorAdmin(self.cloud_url)
        try:
            initial = {k: legacy.get("customer", k).credit_limit for k in keys}
            # The seed's inserts are routed first: wait for them, so the fault lands in
            # the people's edits.
            self.load_cursor = self._seeded(cloud, keys)
            consumers_before = self._consumers()
            edits = self.load(legacy, keys, consumers_before)
            log("load done; waiting for the cloud to hold every last edit")
            settle_started = time.monotonic()
            expected = dict(initial)
            for seq, key in edits:
                expected[key] = Decimal(seq)
            self._settle(cloud, expected)
            # Judged once more, every customer: a late stale write would show here.
            lost = [{"key": k, "cloud": str(v), "expected": str(expected[k])}
                    for k in keys if (v := self._cloud_value(cloud, k)) != expected[k]]
            self.report["settle_s"] = round(time.monotonic() - settle_started, 1)
            self.report.update(self.verdict(cloud, keys, edits, expected, lost,
                                            consumers_before))
        finally:
            cloud.close()
            engine.dispose()
        return self.report

    @staticmethod
    def _feed(cloud, after: int = 0) -> list[dict]:
        """coexist's writes in the cloud's own change feed after cursor ``after``."""
        out = []
        while True:
            page = cloud.changes(after, 1000)
            if not page:
                return out
            out.extend(e for e in page if e["clientId"] == "COEXIST")
            after = page[-1]["cursor"]

    def _seeded(self, cloud, keys: list[str]) -> int:
        """Wait until the seeded customers are in the cloud and its feed has been quiet
        for 3 s (the seed writes a customer's sites after it: one or two writes each);
        returns the feed's cursor then, where the people's edits begin."""
        self._wait(lambda: len({e["number"] for e in self._feed(cloud)}) >= len(keys), 180,
                   "the seeded customers in the cloud", 0.5)
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 3.0:
            page = cloud.changes(max(last, 0), 1000)
            if page:
                last, quiet_since = page[-1]["cursor"], time.monotonic()
            time.sleep(0.3)
        return max(last, 0)

    def _consumers(self) -> dict[str, int]:
        """Consumers per work queue (not .DQ/.XQ) as RabbitMQ counts them."""
        return {q["name"]: int(q.get("consumers") or 0)
                for q in self.cluster.queues("/")
                if not q["name"].endswith((".DQ", ".XQ"))}

    def load(self, legacy, keys: list[str], consumers_before: dict[str, int]
             ) -> list[tuple[int, str]]:
        """People edit customers' credit limits in the legacy ERP from ``--threads`` threads
        (disjoint keys, so the highest value of a key is its last edit); at ``--kill-at`` of
        the edits the busiest queue's leader node is killed, ``--down-s`` later started."""
        total, threads = self.args.edits, self.args.threads
        lock = threading.Lock()
        seq = [0]
        edits: list[tuple[int, str]] = []
        errors: list[BaseException] = []
        rng = random.Random(self.args.seed)
        enough = threading.Event()  # --edits made, and --after-s of them after the restart

        def work(mine: list[str]) -> None:
            try:
                while not errors:
                    with lock:
                        if seq[0] >= total and enough.is_set():
                            return
                        seq[0] += 1
                        n = seq[0]
                        key = rng.choice(mine)
                    record = legacy.get("customer", key)
                    legacy.person_upsert(record.model_copy(update={"credit_limit": Decimal(n)}),
                                         "CLERK")
                    with lock:
                        edits.append((n, key))
                    if self.args.edit_pause_s:
                        time.sleep(self.args.edit_pause_s)
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                errors.append(exc)

        pool = [threading.Thread(target=work, args=(keys[n::threads],), daemon=True)
                for n in range(threads)]
        started = time.monotonic()
        for t in pool:
            t.start()
        fault: FaultWatch | None = None
        while any(t.is_alive() for t in pool):
            if time.monotonic() > self.deadline:
                errors.append(TimeoutError(f"load not done within --max-s ({seq[0]} edits)"))
                break
            if fault is None and seq[0] >= total * self.args.kill_at:
                fault = FaultWatch(self.cluster, "/", self.args.down_s, consumers_before)
                fault.start()
            back_at = fault.figures.get("back_at") if fault is not None else None
            if (fault is not None and fault.error) or (
                    back_at and time.time() - back_at >= self.args.after_s):
                enough.set()
            self.supervise()
            time.sleep(0.1)
        for t in pool:
            t.join(5)
        if errors:
            raise errors[0]
        self.report["edits"] = len(edits)
        self.report["edits_per_s"] = round(len(edits) / (time.monotonic() - started), 1)
        if fault is None:
            fault = FaultWatch(self.cluster, "/", self.args.down_s, consumers_before)
            fault.start()
        fault.join(max(1.0, self.deadline - time.monotonic()))
        self.report["fault"] = fault.figures
        if fault.error:
            raise fault.error
        return edits

    def _settle(self, cloud, expected: dict[str, Decimal]) -> list[dict]:
        """Wait (bounded by ``--settle-s``) until the cloud holds every expected value; the
        records that still differ then are lost."""
        deadline = min(time.monotonic() + self.args.settle_s, self.deadline)
        differ = list(expected)
        while True:
            self.supervise()
            differ = [k for k in differ if self._cloud_value(cloud, k) != expected[k]]
            if not differ or time.monotonic() > deadline:
                return [{"key": k, "cloud": str(self._cloud_value(cloud, k)),
                         "expected": str(expected[k])} for k in differ]
            time.sleep(1.0)

    @staticmethod
    def _cloud_value(cloud, key: str) -> Decimal | None:
        from coexistence.translate.cloud import RESOURCES, canonical_from_json

        r = cloud.http.get(f"/admin/as/reader/{RESOURCES['customer']}(number='{key}')")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return canonical_from_json("customer", r.json()).credit_limit

    def verdict(self, cloud, keys, edits, expected, lost, consumers_before) -> dict:
        feed = self._feed(cloud, self.load_cursor)
        writes = Counter(e["number"] for e in feed if e["op"] == "upsert")
        changes = Counter(k for _, k in edits)
        # Each edit is one change of one customer (one transaction): more writes by coexist
        # than that is a change applied twice.
        twice = {k: writes[k] - changes[k] for k in keys if writes[k] > changes[k]}
        done = coexist(self.env, "dlq", "list", "--status", "all", "--limit", "100000",
                       "--format", "json", check=False)
        records = json.loads(done.stdout) if done.stdout.strip().startswith("[") else []
        consumers_after = self._consumers()
        missing = {q: (n, consumers_after.get(q, 0)) for q, n in consumers_before.items()
                   if consumers_after.get(q, 0) < n}
        killed_port = self.report.get("fault", {}).get("killed_amqp_port")
        moved = [line for p in self.workers + self.routers for line in p.lines()
                 if "reconnected to" in str(line.get("msg", line.get("message", "")))]
        figures = {
            "customers": len(keys), "lost": len(lost), "lost_examples": lost[:5],
            "applied_twice": sum(twice.values()), "applied_twice_examples":
                [{"key": k, "cloud_writes": writes[k], "edits": changes[k]}
                 for k in list(twice)[:5]],
            "cloud_writes": sum(writes.values()), "edits_made": len(edits),
            "cloud_writes_per_s": _rates(feed, self.report.get("fault", {})),
            "exceptions": dict(Counter(f"{r['failure_class']}:{r['error_type']}"
                                       for r in records)),
            "consumers_before": consumers_before, "consumers_after": consumers_after,
            "queues_missing_consumers": missing,
            "reconnect_log_lines": len(moved),
            "reconnect_examples": [_msg(line) for line in moved[:4]],
            "process_exits": dict(self.exits),
        }
        if killed_port:
            figures["reconnects_to_the_killed_node_while_down"] = sum(
                1 for line in moved if f":{killed_port}" in _msg(line)
                and _line_time(line) < self.report["fault"].get("restarted_at", 0))
        figures["ok"] = (not lost and not twice and not missing and bool(moved)
                         and not figures.get("reconnects_to_the_killed_node_while_down"))
        return figures


def _rates(feed: list[dict], fault: dict) -> dict[str, float]:
    """coexist's writes per second into the cloud before the kill (the baseline), while the
    node was down, and after it was back (until the last write)."""
    from datetime import datetime

    at = [datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp() for e in feed]
    if not at or "killed_at" not in fault:
        return {}
    killed, back = fault["killed_at"], fault.get("back_at", fault["killed_at"])
    windows = {"before_kill": (at[0], killed), "node_down": (killed, back),
               "after_restart": (back, at[-1])}
    return {name: round(sum(1 for t in at if lo <= t < hi) / (hi - lo), 1) if hi > lo else 0.0
            for name, (lo, hi) in windows.items()}


def _msg(line: dict) -> str:
    return str(line.get("msg") or line.get("message") or "")


def _line_time(line: dict) -> float:
    from datetime import datetime

    value = line.get("ts") or line.get("time") or line.get("timestamp")
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def wait_for(check, timeout_s: float, what: str, poll_s: float = 0.2):
    """``check()``'s first truthy value within ``timeout_s``, else TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:g} s")
        time.sleep(poll_s)


class FaultWatch(threading.Thread):
    """Kill -9 of the busiest queue's leader node (of ``vhost``), and what recovery took: a
    new leader elected, every work queue's consumers counted back on the survivors
    (``consumers_before``, default: as counted just before the kill), the node started
    again ``down_s`` after the kill and back in the cluster."""

    def __init__(self, cluster: Cluster, vhost: str, down_s: float,
                 consumers_before: dict[str, int] | None = None):
        super().__init__(daemon=True, name="fault")
        self.cluster, self.vhost, self.down_s = cluster, vhost, down_s
        self.consumers_before = consumers_before
        self.figures: dict = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._fault()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the load
            self.error = exc
            self.figures["error"] = f"{type(exc).__name__}: {exc}"

    def _work_queues(self, via: Node | None = None) -> list[dict]:
        return [q for q in self.cluster.queues(self.vhost, via=via)
                if not q["name"].endswith((".DQ", ".XQ"))]

    def _fault(self) -> None:
        cluster = self.cluster
        # Busiest: the most messages held (ready + unacked) over a few samples; consumers
        # that keep up hold few at any one moment.
        held: Counter = Counter()
        for _ in range(BUSIEST_SAMPLES):
            queues = self._work_queues()
            held.update({q["name"]: int(q.get("messages") or 0) for q in queues})
            time.sleep(0.2)
        if self.consumers_before is None:
            self.consumers_before = {q["name"]: int(q.get("consumers") or 0) for q in queues}
        busiest = max(queues, key=lambda q: (held[q["name"]], q["name"] == "coexist.write.cloud",
                                             q["name"]))
        victim = cluster.node(busiest["leader"])
        survivor = next(n for n in cluster.nodes if n is not victim)
        self.figures.update({
            "queue": busiest["name"], "queue_type": busiest.get("type"),
            "messages_at_kill": int(busiest.get("messages") or 0),
            "messages_held_in_samples": dict(held),
            "killed_node": victim.name, "killed_amqp_port": victim.amqp_port,
            "leaders_before": dict(Counter(q["leader"] for q in queues)),
        })
        killed_at = cluster.kill9(victim)
        self.figures["killed_at"] = killed_at
        log(f"kill -9 {victim.name} (leader of {busiest['name']}, "
            f"{self.figures['messages_at_kill']} messages)")

        def new_leader():
            with contextlib.suppress(Exception):
                for q in self._work_queues(via=survivor):
                    if q["name"] == busiest["name"] and q.get("leader") not in (
                            None, "", victim.name):
                        return q["leader"]
            return None

        self.figures["new_leader"] = wait_for(new_leader, 60, "a new leader", 0.2)
        self.figures["new_leader_s"] = round(time.time() - killed_at, 1)
        before = self.consumers_before

        def consumers_back():
            with contextlib.suppress(Exception):
                now = {q["name"]: int(q.get("consumers") or 0)
                       for q in self._work_queues(via=survivor)}
                return all(now.get(q, 0) >= n for q, n in before.items())
            return False

        wait_for(consumers_back, 90, "every queue's consumers back", 0.5)
        self.figures["consumers_back_s"] = round(time.time() - killed_at, 1)
        wait = killed_at + self.down_s - time.time()
        if wait > 0:
            time.sleep(wait)
        self.figures["restarted_at"] = time.time()
        restarted = time.monotonic()
        cluster.restart(victim)
        wait_for(lambda: victim.name in cluster.running_nodes(survivor), 60,
                 f"{victim.name} back in the cluster", 0.5)
        self.figures["node_back_s"] = round(time.monotonic() - restarted, 1)
        self.figures["back_at"] = time.time()
        self.figures["down_s"] = round(time.time() - killed_at, 1)
        log(f"{victim.name} is back ({self.figures['node_back_s']} s to boot and rejoin)")


# --------------------------------------------------------------------------- run.py --cluster

#: ``run.py --cluster``: seconds into the people's load at which the node is killed, and
#: how long it stays down (environment, since run.py's options are its own).
CHAOS_KILL_AFTER_S = float(os.environ.get("COEXIST_CHAOS_CLUSTER_KILL_AFTER_S", "8"))
CHAOS_DOWN_S = float(os.environ.get("COEXIST_CHAOS_CLUSTER_DOWN_S", "10"))


def attach_to_chaos_run(run_module) -> Cluster:
    """``scripts/chaos/run.py --cluster``: the chaos run's RabbitMQ becomes a fresh
    three-node cluster. Its ``rabbitmqctl`` (vhost, permissions, close_all_connections,
    delete_vhost) goes to a live node of the cluster; ``provision`` gives the processes
    every node's URL; ``CHAOS_KILL_AFTER_S`` into the load the busiest queue's leader is
    killed with kill -9 and started again ``CHAOS_DOWN_S`` later; the report gets the
    ``cluster`` figures. The cluster is removed when the script exits."""
    import atexit

    missing = [n for n in ("rabbitmqctl", "provision", "Run") if not hasattr(run_module, n)]
    missing += [f"Run.{n}" for n in ("load", "verify")
                if not hasattr(getattr(run_module, "Run", None), n)]
    if missing:
        raise SystemExit(f"scripts/chaos/run.py --cluster: run.py has no {', '.join(missing)} "
                         "any more; scripts/chaos/cluster.py attach_to_chaos_run needs updating")
    cluster = Cluster()
    cluster.__enter__()
    atexit.register(cluster.stop)
    state: dict = {"vhost": "/", "fault": None}

    def rabbitmqctl(*args: str) -> str:
        done = cluster.ctl(cluster.alive()[0], *args, check=False)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, ["rabbitmqctl", *args],
                                                done.stdout, done.stderr)
        return done.stdout

    provision, load, verify = run_module.provision, run_module.Run.load, run_module.Run.verify

    def cluster_provision(estate, *a, **kw):
        provision(estate, *a, **kw)
        state["vhost"] = estate.vhost
        estate.env["COEXIST_BROKER_URL"] = cluster.urls(estate.vhost)
        estate.env["COEXIST_QUEUE_TYPE"] = "quorum"

    def cluster_load(self, *a, **kw):
        fault = FaultWatch(cluster, state["vhost"], CHAOS_DOWN_S)
        state["fault"] = fault
        timer = threading.Timer(CHAOS_KILL_AFTER_S, fault.start)
        timer.daemon = True
        timer.start()
        try:
            return load(self, *a, **kw)
        finally:
            timer.cancel()
            if fault.is_alive():
                fault.join(NODE_START_TIMEOUT_S + 120)
            self.faults["kill_node"] += 1 if "killed_at" in fault.figures else 0

    def cluster_verify(self, *a, **kw):
        result = verify(self, *a, **kw)
        fault = state["fault"]
        figures = fault.figures if fault is not None else {}
        log(f"cluster: {json.dumps({**cluster.figures, 'fault': figures}, default=str)}")
        if fault is None or fault.error is not None or "back_at" not in figures:
            raise RuntimeError("cluster fault did not complete: "
                               + (figures.get("error") or "the load ended before the kill "
                                  f"(COEXIST_CHAOS_CLUSTER_KILL_AFTER_S={CHAOS_KILL_AFTER_S:g})"))
        result["cluster"] = {**cluster.figures, "fault": figures}
        return result

    run_module.rabbitmqctl = rabbitmqctl
    run_module.provision = cluster_provision
    run_module.Run.load = cluster_load
    run_module.Run.verify = cluster_verify
    return cluster


# --------------------------------------------------------------------------- entry points


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--up", action="store_true",
                      help="Start the cluster, print its COEXIST_BROKER_URL, wait for Ctrl-C.")
    mode.add_argument("--run", action="store_true", help="The fault run (one JSON report).")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--customers", type=int, default=200)
    p.add_argument("--edits", type=int, default=3000)
    p.add_argument("--threads", type=int, default=2, help="people editing at once")
    p.add_argument("--edit-pause-s", type=float, default=0.0)
    p.add_argument("--kill-at", type=float, default=0.3,
                   help="fraction of the edits after which the node is killed")
    p.add_argument("--down-s", type=float, default=10.0,
                   help="seconds the killed node stays down")
    p.add_argument("--after-s", type=float, default=10.0,
                   help="people go on editing at least this long after the node is back")
    p.add_argument("--settle-s", type=float, default=180.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-s", type=float, default=600.0,
                   help="give up (exit 2) if the run is not done by then")
    p.add_argument("--keep", action="store_true", help="keep the run's folder (logs)")
    args = p.parse_args(argv)
    if args.run and args.nodes < 3:
        p.error("--run needs at least 3 nodes: a quorum queue survives the loss of a minority")
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    report: dict = {"mode": "up" if args.up else "run"}
    ok = False
    home = Path(tempfile.mkdtemp(prefix="coexist-cluster-run-"))
    run: FaultRun | None = None
    try:
        with Cluster(size=args.nodes) as cluster:
            report["cluster"] = cluster.figures
            if args.up:
                print(json.dumps({"COEXIST_BROKER_URL": cluster.urls(),
                                  "COEXIST_QUEUE_TYPE": "quorum",
                                  "node_names": [n.name for n in cluster.nodes],
                                  **cluster.figures}), flush=True)
                log("Ctrl-C stops and removes the cluster")
                with contextlib.suppress(KeyboardInterrupt):
                    signal.pause()
                return 0
            run = FaultRun(args, cluster, home)
            try:
                run.provision()
                report.update(run.run())
                ok = bool(report.get("ok"))
            finally:
                if args.keep:
                    for node in cluster.nodes:
                        shutil.copytree(node.folder / "log", home / f"rabbitmq-{node.folder.name}",
                                        dirs_exist_ok=True)
                run.teardown()
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the report says why
        report["error"] = f"{type(exc).__name__}: {exc}"
        log(report["error"])
    finally:
        if args.keep:
            report["home"] = str(home)
        else:
            shutil.rmtree(home, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["load_average"] = os.getloadavg()
    report["ok"] = ok
    print(json.dumps(report, default=str))
    return 0 if ok else (2 if "error" in report else 1)


if __name__ == "__main__":
    sys.exit(main())

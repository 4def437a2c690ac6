"""A broker URL naming several nodes: ``coexist router`` and ``coexist worker``, as OS
processes, move to the surviving node when the one they use goes away.

The two "nodes" are TCP proxies in front of the one RabbitMQ of the test run (a real
three-node cluster takes half a minute to start: ``scripts/chaos/cluster.py --run`` is its
proof). Only node A answers at first, so every connection goes to A; then B comes up and A
dies, closing every connection through it. The people's next edits must reach the cloud
ERP (the simulator's own API judges), with the processes' log naming node B as where their
consumers and the outbox publisher reconnected, and no process restarted.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from decimal import Decimal

import pytest

from coexistence.sample import iter_customers
from tests.support.cloud_sim import sim, simulator  # noqa: F401 - fixtures
from tests.support.processes import (
    Process,
    coexist_env,
    coexist_executable,
    free_port,
    wait_until,
)
from workers.cloud_sim.admin import SimulatorAdmin
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema

pytestmark = pytest.mark.integration

CUSTOMERS = 12


class Node:
    """A TCP proxy to the real RabbitMQ: a broker node that can die (``kill``: its
    listener and every connection through it are closed)."""

    def __init__(self, port: int, target: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.port, self.target = port, target
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def start(self) -> Node:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def connections(self) -> int:
        with self._lock:
            return sum(1 for s in self._socks if s.fileno() != -1) // 2

    def kill(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the accept() blocked on it
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._socks.clear()


def cloud_limit(admin: SimulatorAdmin, key: str) -> Decimal | None:
    from coexistence.translate.cloud import RESOURCES, canonical_from_json

    r = admin.http.get(f"/admin/as/reader/{RESOURCES['customer']}(number='{key}')")
    return canonical_from_json("customer", r.json()).credit_limit if r.status_code == 200 \
        else None


def test_router_and_worker_reconnect_to_the_surviving_node(tmp_path, pg_url, sim,  # noqa: F811
                                                            fresh_rabbit_vhost):
    _url, vhost = fresh_rabbit_vhost
    a, b = Node(free_port()).start(), Node(free_port())  # b is down for now
    broker_url = ",".join(f"amqp://guest:guest@127.0.0.1:{n.port}/{vhost}" for n in (a, b))
    legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
    env = coexist_env(tmp_path, state_url=pg_url, legacy_url=legacy_url, cloud_url=sim.url,
                      broker_url=broker_url, broker_management_url="off", actor="test")
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    legacy = LegacyErp(engine)
    for args in (["db", "upgrade"],
                 ["cutover", "set", "customer", "shadow", "--force", "--no-wait", "--reason",
                  "test: the cloud shadows the legacy ERP"]):
        done = subprocess.run(coexist_executable() + args, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    procs = [Process(["router"], env, tmp_path / "router.log"),
             Process(["worker", "--threads", "2"], env, tmp_path / "worker.log")]
    try:
        customers = list(iter_customers(CUSTOMERS, seed=5))
        for c in customers:
            legacy.person_upsert(c.model_copy(update={"credit_limit": Decimal(1000)}), "CLERK")
        wait_until(lambda: all(cloud_limit(sim, c.key) == Decimal(1000) for c in customers),
                   30, "the first edits in the cloud through node A")
        assert a.connections() >= 2  # the router's and the worker's, all through A

        b.start()
        a.kill()
        for c in customers:
            legacy.person_upsert(c.model_copy(update={"credit_limit": Decimal(2000)}), "CLERK")
        wait_until(lambda: all(cloud_limit(sim, c.key) == Decimal(2000) for c in customers),
                   30, "the edits after node A died in the cloud")

        node_b = f"reconnected to 127.0.0.1:{b.port}"
        worker_log, router_log = procs[1].output(), procs[0].output()
        assert f"Consumer of coexist.write.cloud {node_b}" in worker_log, worker_log[-3000:]
        assert f"Outbox publisher {node_b}" in router_log, router_log[-3000:]
        assert all(p.alive() for p in procs)  # reconnected, not restarted
    finally:
        for p in procs:
            p.stop()
        engine.dispose()
        a.kill()
        b.kill()

"""Issue 9's two reproductions, as an operator runs them: ``coexist router`` and
``coexist worker`` as OS processes, the cutover from the ``coexist`` command, people's
edits made directly in the legacy SQL and through the cloud simulator's HTTP API.
Once on RabbitMQ + PostgreSQL, once on the embedded default (SQLite + the embedded
broker).

Forward: customer in shadow; the only worker stops; a person edits the customer in the
legacy ERP (its write to the cloud waits in ``coexist.write.cloud``); the switch to
``cloud``; a person edits the same customer in the cloud (now the SoR); the worker
starts.  Rollback: customer in cloud; the worker stops; a person edits a customer in the
cloud (its write to legacy waits); ``cutover rollback``; a person edits it in legacy;
the worker starts.

Afterwards both ERPs hold the person's newest edit and exactly one ``SwitchConflict``
record per case names both values.  Then a third case: a legacy SoR edit waits for the
cloud across a ``--no-wait`` switch, a stray is made in legacy, and a ``--no-wait``
rollback makes legacy the SoR before the stray's repair lands: the stray stays in both
ERPs, and a ``StrayKept`` record (besides its ``StrayWrite``) says so.  On the way, the
xref holds the ids of the customers the cloud writer created (issue 10 item 3).  Before
the write conditions, the forward case ended with the cloud holding the older legacy
value (7777.03) and the rollback with legacy holding 5555.00, with no exception anywhere.

With no worker running, b9's drain wait in ``cutover set`` / ``rollback`` would time
out, so those steps use ``--no-wait`` (audited as such): that is exactly the case the
write conditions must make safe.
"""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from coexistence.canonical import decode
from tests.support import cloud_sim
from tests.support import deployment as deployment_support
from tests.support.processes import Process, coexist_env, extra_pg_schema, wait_until
from workers.cli import cli

#: Each case is about 20-30 s on an idle machine; the bound leaves room for a loaded one.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

simulator, sim = cloud_sim.simulator, cloud_sim.sim

#: Bound of each wait (a bound, not a figure: the steps take a second or two).
WAIT_S = 60.0


def customer(key: str, limit: str):
    return decode("customer", {
        "schema_version": 2, "key": key, "name": f"Customer {key}", "status": "active",
        "currency": "USD", "credit_limit": limit, "credit_hold": False, "terms": "net30",
        "customer_group": "RETAIL", "region": "WEST",
    })


class Deployment(deployment_support.Deployment):
    def __init__(self, home, env: dict[str, str], state_url: str, legacy_url: str, sim):
        super().__init__(home, env, state_url, legacy_url)
        self.sim = sim
        self.worker: Process | None = None

    def cli(self, *args: str) -> str:
        """``coexist ARGS`` with the deployment's settings (in this process: the command
        is short-lived, the router and the workers it steers are the OS processes)."""
        result = CliRunner().invoke(cli, list(args), env=self.env)
        assert result.exit_code == 0, f"coexist {' '.join(args)}: {result.output}"
        return result.output

    def start(self, command: str) -> Process:
        return self.started(self.spawn([command, "--log-level", "INFO"],
                                       f"{command}-{len(self.procs)}.log"), WAIT_S)

    def start_worker(self) -> None:
        self.worker = self.start("worker")

    def stop_worker(self) -> None:
        assert self.worker is not None
        assert self.worker.stop() == 0, self.worker.output()[-3000:]
        self.worker = None

    # -------------------------------------------------------------- people

    def person_edits_legacy(self, key: str, limit: str, user: str = "JSMITH") -> None:
        """As a person at the green screen would: one UPDATE, stamped with their user."""
        cents = int(Decimal(limit) * 100)
        with self.legacy_engine.begin() as conn:
            updated = conn.execute(text(
                'UPDATE "CUSTMAST" SET "CRLIMIT" = :cents, "LCHGUSER" = :user '
                'WHERE "CUSTNO" = :custno'),
                {"cents": cents, "user": user, "custno": key.rjust(10, "0")}).rowcount
        assert updated == 1

    def person_edits_cloud(self, key: str, limit: str, client: str = "jdoe") -> None:
        """As a person in the cloud ERP's UI would: read, then PATCH with If-Match."""
        with httpx.Client(base_url=self.sim.url, headers={"X-Client-Id": client}) as http:
            doc = http.get(f"/customers(number='{key}')").json()
            answer = http.patch(f"/customers({doc['id']})", json={"creditLimit": limit},
                                headers={"If-Match": doc["@odata.etag"]})
        assert answer.status_code in (200, 204), answer.text

    # -------------------------------------------------------------- what is where

    def limits(self, key: str) -> tuple[Decimal | None, Decimal | None]:
        legacy = self.legacy.get("customer", key)
        with httpx.Client(base_url=self.sim.url) as http:
            answer = http.get(f"/customers(number='{key}')")
        cloud = Decimal(answer.json()["creditLimit"]) if answer.status_code == 200 else None
        return (legacy.credit_limit if legacy else None), cloud

    def xref(self) -> dict[str, tuple[str, str]]:
        with self.state.connect() as conn:
            return {r[0]: (r[1], r[2]) for r in conn.execute(text(
                "SELECT canonical_key, legacy_key, cloud_id FROM xref "
                "WHERE domain = 'customer'"))}

    def cloud_ids(self, *keys: str) -> dict[str, tuple[str, str]]:
        with httpx.Client(base_url=self.sim.url) as http:
            return {k: (k.rjust(10, "0"), http.get(f"/customers(number='{k}')").json()["id"])
                    for k in keys}

    def conflicts(self) -> list[str]:
        with self.state.connect() as conn:
            return [row[0] for row in conn.execute(text(
                "SELECT error_message FROM exception_record "
                "WHERE error_type LIKE '%SwitchConflict'"))]

    def exceptions(self) -> list[tuple[str, str]]:
        with self.state.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(text(
                "SELECT error_type, error_message FROM exception_record"))]

    def unsent(self) -> int:
        with self.state.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                                ).scalar_one()

    def routed_to(self, actor: str, key: str) -> int:
        """Messages for ``key`` the router handed to the broker for ``actor``."""
        with self.state.connect() as conn:
            return conn.execute(text(
                "SELECT count(*) FROM outbox WHERE actor_name = :a AND partition_key LIKE :k "
                "AND sent_at IS NOT NULL"), {"a": actor, "k": f"%{key}%"}).scalar_one()

    def close(self) -> str:
        return super().close(tail=2500)


def _deploy(home, env: dict[str, str], state_url: str, legacy_url: str, sim):
    deployment_support.prepare(state_url, legacy_url)
    return deployment_support.running(Deployment(home, env, state_url, legacy_url, sim))


@pytest.fixture
def on_rabbitmq_and_postgres(tmp_path, pg_url, pg_database_url, sim, fresh_rabbit_vhost):
    with extra_pg_schema(pg_database_url) as legacy_url:
        env = coexist_env(tmp_path, state_url=pg_url, legacy_url=legacy_url,
                          cloud_url=sim.url, broker_url=fresh_rabbit_vhost[0], actor="ops")
        with _deploy(tmp_path, env, pg_url, legacy_url, sim) as d:
            yield d


@pytest.fixture
def on_the_embedded_default(tmp_path, sim):
    env = coexist_env(tmp_path, cloud_url=sim.url, actor="ops")
    with _deploy(tmp_path, env, f"sqlite:///{tmp_path / 'state.db'}",
                 f"sqlite:///{tmp_path / 'legacy.db'}", sim) as d:
        yield d


def forward_and_rollback(d: Deployment) -> None:
    d.cli("cutover", "set", "customer", "shadow", "--force", "--reason", "pilot", "--no-wait")
    for key in ("10003", "10005"):
        d.legacy.person_upsert(customer(key, "1000.00"), "JSMITH")
    d.start("router")
    d.start_worker()
    wait_until(lambda: d.limits("10003")[1] and d.limits("10005")[1], WAIT_S,
               "both customers reach the cloud (shadow)")
    # Issue 10 item 3: the writer that created them in the cloud linked their ids.
    assert wait_until(lambda: d.xref() == d.cloud_ids("10003", "10005"), WAIT_S,
                      "the xref links what the writer created")

    # ---- forward: a write routed under shadow waits while the switch happens
    d.stop_worker()
    d.person_edits_legacy("10003", "7777.03")
    wait_until(lambda: d.routed_to("write_cloud", "10003") >= 2 and d.unsent() == 0, WAIT_S,
               "the legacy edit's write to the cloud is in the broker")
    d.cli("cutover", "set", "customer", "cloud", "--force", "--reason", "go live",
          "--no-wait")
    d.person_edits_cloud("10003", "4242.00")
    d.start_worker()
    wait_until(lambda: d.limits("10003") == (Decimal("4242.00"), Decimal("4242.00"))
               and d.conflicts(), WAIT_S, "the cloud's edit in both ERPs, one conflict")
    [conflict] = d.conflicts()
    assert "customer 10003" in conflict and "jdoe" in conflict
    assert "refused 7777.03 vs kept 4242.00" in conflict

    # ---- rollback: a write routed under cloud waits while the rollback happens
    d.stop_worker()
    d.person_edits_cloud("10005", "5555.00")
    wait_until(lambda: d.routed_to("write_legacy", "10005") >= 1 and d.unsent() == 0,
               WAIT_S, "the cloud edit's write to legacy is in the broker")
    d.cli("cutover", "rollback", "customer", "--reason", "back out", "--no-wait")
    d.person_edits_legacy("10005", "6666.00")
    d.start_worker()
    wait_until(lambda: d.limits("10005") == (Decimal("6666.00"), Decimal("6666.00"))
               and len(d.conflicts()) == 2, WAIT_S,
               "legacy's edit in both ERPs, a second conflict")
    second = next(c for c in d.conflicts() if "10005" in c)
    assert "refused 5555.00 vs kept 6666.00" in second and "JSMITH" in second
    # Nothing else went wrong, nothing else was recorded; 10003 stays settled.
    assert [t for t, _ in d.exceptions() if not t.endswith("SwitchConflict")] == []
    assert d.limits("10003") == (Decimal("4242.00"), Decimal("4242.00"))

    # ---- a stray whose repair lands after its ERP became the SoR stays, and says so
    d.stop_worker()
    to_cloud = d.routed_to("write_cloud", "10003")
    d.person_edits_legacy("10003", "1111.00")         # the SoR's edit, waits for the cloud
    wait_until(lambda: d.routed_to("write_cloud", "10003") > to_cloud and d.unsent() == 0,
               WAIT_S, "the legacy edit's write to the cloud is in the broker")
    d.cli("cutover", "set", "customer", "cloud", "--force", "--reason", "again", "--no-wait")
    to_legacy = d.routed_to("write_legacy", "10003")
    d.person_edits_legacy("10003", "2222.00")         # a stray: legacy is the shadow now
    wait_until(lambda: d.routed_to("write_legacy", "10003") > to_legacy and d.unsent() == 0,
               WAIT_S, "the stray's repair is in the broker")
    d.cli("cutover", "rollback", "customer", "--reason", "back again", "--no-wait")
    d.start_worker()
    wait_until(lambda: d.limits("10003") == (Decimal("2222.00"), Decimal("2222.00"))
               and any(t.endswith("StrayKept") for t, _ in d.exceptions()), WAIT_S,
               "the stray in both ERPs, a StrayKept record")
    [kept] = [m for t, m in d.exceptions() if t.endswith("StrayKept")]
    assert "customer 10003 in legacy" in kept and "credit_limit: kept 2222.00 vs" in kept
    [stray] = [m for t, m in d.exceptions() if t.endswith("StrayWrite")]
    assert "2222.00 in legacy vs" in stray
    status = CliRunner().invoke(cli, ["cutover", "status", "customer"], env=d.env)
    assert "waiting for the SoR" not in status.output, status.output


def test_a_switch_and_a_rollback_never_lose_a_newer_edit_on_rabbitmq_and_postgres(
        on_rabbitmq_and_postgres):
    forward_and_rollback(on_rabbitmq_and_postgres)


def test_a_switch_and_a_rollback_never_lose_a_newer_edit_on_the_embedded_default(
        on_the_embedded_default):
    forward_and_rollback(on_the_embedded_default)

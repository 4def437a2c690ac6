"""The CRM channel's process-test world: a COEXIST_HOME with a legacy ERP, state, flags and the
`crm` channel configured against the CRM simulator, and the calls the process tests make on
it (start and stop `coexist` commands, wait with the processes alive, read the CRM back)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from coexistence.flags import FlagState, Mode, Rollout
from tests.support import processes
from workers.db import create_state_engine
from workers.flags import SqlFlagStore
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.migrate import upgrade as upgrade_schema

COEXIST = str(Path(sys.executable).with_name("coexist"))
#: Longest wait for the processes to do what they are asked, in seconds (a bound).
WAIT_S = 60


def crm_home(tmp_path: Path, crm, cloud_url: str, *, state_url: str | None = None,
             broker_url: str | None = None, mode: Mode = Mode.LEGACY) -> tuple[dict, Path]:
    """Make *tmp_path* a COEXIST_HOME (state with the customer flag at *mode*, an empty legacy
    ERP, the `crm` channel in coexist.toml); the environment for its commands, and the home."""
    state = create_state_engine(state_url or f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(state)
    store = SqlFlagStore(state)
    store.commit(store.load()["customer"],
                 FlagState("customer", mode, mode, Rollout(), 1),
                 actor="alice", reason="CRM pilot", action="set")
    state.dispose()
    legacy = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(legacy)
    legacy.dispose()
    (tmp_path / "coexist.toml").write_text(
        '[subscriptions.crm]\ndomains = ["customer"]\n\n'
        f'[crm]\nurl = "{crm.url}"\nclient_id = "{crm.client_id}"\npoll_interval_s = 0.3\n'
        'pause_s = 2\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("COEXIST_")
           or k.startswith(("COEXIST_TEST", "COEXIST_REQUIRE"))}
    env.update({"COEXIST_HOME": str(tmp_path), "COEXIST_CLOUD_URL": cloud_url,
                "COEXIST_CRM_CLIENT_SECRET": crm.client_secret})
    if state_url:
        env["COEXIST_STATE_URL"] = state_url
    if broker_url:
        env["COEXIST_BROKER_URL"] = broker_url
    return env, tmp_path


def start(command: str, env: dict, home: Path, name: str | None = None,
          *args: str) -> subprocess.Popen:
    """`coexist COMMAND` as its own process, its output in HOME/NAME.log."""
    with open(home / f"{name or command}.log", "w") as log:
        return subprocess.Popen([COEXIST, command, "--log-level", "INFO", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def wait_for(predicate, what: str, *procs: subprocess.Popen, timeout_s: float = WAIT_S):
    return processes.wait_until(predicate, timeout_s, what, alive=procs)


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def crm_accounts(crm) -> dict[str, dict]:
    rows = crm.query("SELECT Id, Name, AccountNumber, Coexist_Id__c, Coexist_Version__c, "
                     "CreatedDate FROM Account")
    return {r["Id"]: r for r in rows}


def keyed_accounts(crm) -> dict[str, dict]:
    return {r["Coexist_Id__c"]: r for r in crm_accounts(crm).values() if r["Coexist_Id__c"]}


def logs(home: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in home.glob("*.log"))


def account_creates(crm) -> dict[str, int]:
    """Account CREATE events in the CRM's change feed, by account id."""
    from workers.crm.client import CrmClient

    counts: dict[str, int] = {}
    client = CrmClient(crm.url, client_id=crm.client_id, client_secret=crm.client_secret)
    try:
        after = 0
        while events := client.changes(after, 1000):
            for e in events:
                if e.sobject == "Account" and e.change_type == "CREATE":
                    counts[e.record_id] = counts.get(e.record_id, 0) + 1
            after = events[-1].replay_id
    finally:
        client.close()
    return counts

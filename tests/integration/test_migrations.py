"""Schema migrations, on SQLite files and PostgreSQL: a state database made by coexist
0.1.0 is refused until ``coexist db upgrade`` and keeps every row through it; the models
and the migrations never disagree (a forgotten revision fails here); processes never
create a schema at start, so the supervisord group starting together stays up."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, inspect, select, text

import workers.tables  # noqa: F401  (every state table registered)
from bus.db import BUS_METADATA
from migrations._env import compare_options
from tests.support import cloud_sim
from tests.support.records import ACME as CUSTOMER
from workers import migrate
from workers.db import STATE_METADATA, create_state_engine
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.capture import CAPTURE_METADATA
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema

simulator, sim = cloud_sim.simulator, cloud_sim.sim
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STATE_METADATAS = [BUS_METADATA, STATE_METADATA]
#: Longest wait for a started process to log that it runs, or to stop after SIGTERM (three
#: processes importing everything at once on a loaded 2-core machine can take a minute).
PROCESS_WAIT_S = 150.0


def coexist(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from workers.cli import main; main()", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def invoke(env: dict[str, str], *args: str):
    """A command in this process (click's runner), on the settings in ``env``."""
    from click.testing import CliRunner

    from workers.cli import cli

    base = {k: None for k in os.environ if k.startswith("COEXIST_")}
    return CliRunner().invoke(cli, list(args), env={**base, **env})


def diff(engine, metadata, version_table: str) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={
            **compare_options(metadata), "version_table": version_table})
        return compare_metadata(ctx, metadata)


#: 0.1.0 tables a later revision drops on purpose (0011: ``applied_version``, whose writer
#: ``bus.monotonic`` had no production caller).
DROPPED_SINCE_0_1_0 = frozenset({"applied_version"})


def fingerprint(engine, columns: dict[str, list[str]] | None = None):
    """Rows per 0.1.0 state table and a digest of their contents, over ``columns`` (default:
    every column the table has now), so a later revision may add columns without a false
    alarm; returns (fingerprint, the columns it covered)."""
    reflected = MetaData()
    reflected.reflect(engine)
    out, covered = {}, {}
    with engine.connect() as conn:
        for name in sorted(migrate.STATE_TABLES_0_1_0 - DROPPED_SINCE_0_1_0):
            table = reflected.tables[name]
            cols = sorted(columns[name] if columns else table.columns.keys())
            rows = [tuple(repr(r._mapping[c]) for c in cols)
                    for r in conn.execute(select(*(table.c[c] for c in cols)))]
            out[name] = (len(rows), hashlib.sha256(repr(sorted(rows)).encode()).hexdigest())
            covered[name] = cols
    return out, covered


def load_sqlite_fixture(path: Path) -> str:
    import sqlite3

    conn = sqlite3.connect(path)
    conn.executescript((FIXTURES / "state_0_1_0.sqlite.sql").read_text())
    conn.close()
    return f"sqlite:///{path}"


def load_pg_fixture(url: str) -> str:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql((FIXTURES / "state_0_1_0.pg.sql").read_text())
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def old_state(request, tmp_path):
    """The URL of a state database that coexist 0.1.0 made (see tests/fixtures)."""
    if request.param == "sqlite":
        return load_sqlite_fixture(tmp_path / "state.db")
    return load_pg_fixture(request.getfixturevalue("pg_url"))


def test_a_state_database_from_0_1_0_is_refused_then_upgraded_keeping_every_row(old_state,
                                                                               tmp_path):
    engine = create_state_engine(old_state)
    before, columns = fingerprint(engine)
    assert before["flag_audit"][0] > 0 and before["exception_record"][0] > 0
    assert before["reconcile_run"][0] > 0 and before["reconcile_finding"][0] > 0

    with pytest.raises(migrate.SchemaNotCurrent, match="coexist 0.1.0.*`coexist db upgrade`"):
        migrate.require_current(engine)
    env = {"COEXIST_HOME": str(tmp_path), "COEXIST_STATE_URL": old_state}
    refused = invoke(env, "cutover", "status")
    assert refused.exit_code == 2 and "coexist db upgrade" in refused.output, refused.output
    assert invoke(env, "db", "current").exit_code == 1
    # The process, as supervisord starts it: one line, exit 2.  And the embedded default's
    # first start creates only a new, empty database: it never upgrades an existing one.
    not_run = coexist("run", env={**env, "COEXIST_CLOUD_URL": "http://127.0.0.1:9"})
    assert not_run.returncode == 2 and "coexist db upgrade" in not_run.stderr, not_run.stderr
    assert "Traceback" not in not_run.stderr

    upgraded = coexist("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from no revision to {migrate.head()}" in upgraded.stdout

    assert fingerprint(engine, columns)[0] == before
    assert not DROPPED_SINCE_0_1_0 & set(inspect(engine).get_table_names())
    assert diff(engine, STATE_METADATAS, "alembic_version") == []
    migrate.require_current(engine)
    assert invoke(env, "db", "current").exit_code == 0
    again = invoke(env, "db", "upgrade")
    assert again.exit_code == 0 and "nothing to do" in again.output
    # What the rows mean survives too: the commands read the upgraded database.
    history = invoke(env, "cutover", "history")
    assert history.exit_code == 0 and "cloud_only" in history.output, history.output
    dlq = invoke(env, "dlq", "list", "--format", "json")
    assert dlq.exit_code == 0, dlq.output
    assert "HTTPStatusError" in dlq.output and "StrayWrite" in dlq.output
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return request.getfixturevalue("pg_url")


def test_the_migrations_build_exactly_the_models_state_tables(empty_url):
    """Fails when a model changed without a revision: add one (DEVELOPERS.md)."""
    engine = create_state_engine(empty_url)
    assert migrate.upgrade(engine) == (None, migrate.head())
    assert diff(engine, STATE_METADATAS, "alembic_version") == []
    engine.dispose()


def test_the_migrations_build_exactly_the_models_legacy_capture_tables(empty_url):
    engine = create_legacy_engine(empty_url)
    create_legacy_schema(engine)
    assert diff(engine, CAPTURE_METADATA, "XCOEXREV") == []
    migrate.require_current(engine, migrate.LEGACY)
    assert {"CHGLOG", "XCOEXVER", "XCOEXREV"} <= set(inspect(engine).get_table_names())
    # The triggers are in place (replaced after the revisions): a person's change is logged.
    legacy = LegacyErp(engine)
    legacy.person_upsert(CUSTOMER, "JSMITH")
    assert [(c.key, c.writer) for c in legacy.read(0, 10)] == [("10042", "JSMITH")]
    engine.dispose()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_legacy_database_from_0_1_0_is_refused_then_upgraded_keeping_its_change_log(
        dialect, tmp_path, request):
    """0.1.0 installed the change log (the baseline's tables) without a revision: processes
    refuse it until `coexist db upgrade --legacy`, which adopts it, numbers its rows by
    commit order (revision 0002) and installs the triggers; the logged change keeps its
    cursor, so a router's checkpoint stays valid, and new changes come after it."""
    from coexistence.legacy import LEGACY_METADATA

    url = (f"sqlite:///{tmp_path / 'legacy.db'}" if dialect == "sqlite"
           else request.getfixturevalue("pg_url"))
    engine = create_legacy_engine(url)
    LEGACY_METADATA.create_all(engine)
    migrate.upgrade(engine, migrate.LEGACY, to=migrate.LEGACY_BASELINE)
    with engine.begin() as conn:  # 0.1.0 kept no revision
        conn.exec_driver_sql('DROP TABLE "XCOEXREV"')
        conn.exec_driver_sql('INSERT INTO "CHGLOG" ("TABNAME", "CHGKEY", "OP", "CHGTS", '
                             "\"LCHGUSER\") VALUES ('CUSTMAST', '00010041', 'U', 1, 'JSMITH')")
    with pytest.raises(migrate.SchemaNotCurrent, match="0.1.0.*`coexist db upgrade --legacy`"):
        migrate.require_current(engine, migrate.LEGACY)
    result = coexist("db", "upgrade", "--legacy", env={"COEXIST_HOME": str(tmp_path),
                                                       "COEXIST_LEGACY_URL": url})
    assert result.returncode == 0, result.stderr
    migrate.require_current(engine, migrate.LEGACY)
    assert diff(engine, CAPTURE_METADATA, "XCOEXREV") == []
    legacy = LegacyErp(engine)
    legacy.person_upsert(CUSTOMER, "JSMITH")
    changes = legacy.read(0, 10)
    assert [(c.cursor, c.key) for c in changes][0] == (1, "10041")
    assert changes[-1].key == "10042" and changes[-1].cursor > 1
    engine.dispose()


def test_a_database_newer_than_the_code_is_refused_and_not_downgraded(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = create_state_engine(url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(migrate.SchemaNotCurrent, match="newer than this coexist"):
        migrate.require_current(engine)
    with pytest.raises(migrate.SchemaNotCurrent, match="upgraded by a newer coexist"):
        migrate.upgrade(engine)
    engine.dispose()


def test_read_and_write_commands_never_create_a_state_database(tmp_path):
    env = {"COEXIST_HOME": str(tmp_path / "nowhere")}
    for args in (("cutover", "status"), ("dlq", "list"), ("db", "current")):
        result = invoke(env, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "no state database at" in result.output
    assert not (tmp_path / "nowhere").exists()


# ------------------------------------------------------- processes starting together


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from workers.cli import main; main()", *args],
        env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_logged(log: Path, needle: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + PROCESS_WAIT_S
    while time.monotonic() < deadline:
        if needle in log.read_text():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{proc.args[3:]} did not log {needle!r} (exit {proc.poll()}):\n"
                         + log.read_text()[-3000:])


@pytest.mark.timeout(600)
def test_router_and_two_workers_starting_together_on_a_fresh_upgraded_pg_database_stay_up(
        pg_url, rabbit_vhost, tmp_path, sim):
    """The supervisord group on fresh PostgreSQL state: 0.1.0 crashed 1-3 of 3 processes in
    8 of 8 starts (concurrent create_all); now nothing runs DDL at start."""
    legacy = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(legacy)
    legacy.dispose()
    env = {"COEXIST_HOME": str(tmp_path), "COEXIST_STATE_URL": pg_url,
           "COEXIST_LEGACY_URL": f"sqlite:///{tmp_path / 'legacy.db'}",
           "COEXIST_BROKER_URL": rabbit_vhost, "COEXIST_CLOUD_URL": sim.url,
           "COEXIST_REDIS_URL": ""}
    refused = coexist("worker", env=env)
    assert refused.returncode == 2 and "run `coexist db upgrade`" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert coexist("db", "upgrade", env=env).returncode == 0
    procs = []
    try:
        for n, args in enumerate((["router"], ["worker", "--threads", "2"],
                                  ["worker", "--threads", "2"])):
            procs.append((start([*args, "--log-level", "INFO"], env, tmp_path / f"p{n}.log"),
                          tmp_path / f"p{n}.log"))
        for proc, log in procs:
            wait_logged(log, "coexist bootstrapped", proc)
        for proc, log in procs:
            assert proc.poll() is None, log.read_text()[-3000:]
            proc.send_signal(signal.SIGTERM)
        for proc, log in procs:
            assert proc.wait(PROCESS_WAIT_S) == 0, log.read_text()[-3000:]
            assert "Traceback" not in log.read_text()
    finally:
        for proc, _log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


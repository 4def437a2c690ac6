"""The EDI SFTP transport against an asyncssh SFTP server on loopback (its own port, folder
and generated host key): the file-drop guarantees over SFTP (a file taken only after its
final rename, claimed by a rename, never deleted or overwritten, outbound written under a
temporary name then renamed), a connection dropped while a file is read or written
(nothing lost, nothing doubled), and bad credentials (one clear line, no traceback)."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bus.exception_store import ExceptionStore
from bus.outbox import OutboxRecord
from coexistence.edi import x12
from coexistence.edi.profiles import EdiSettings
from tests.support import edi as support
from tests.support.sftp_server import PASSWORD, LoopbackSftp
from workers.cli import cli
from workers.db import create_state_engine
from workers.edi import handlers, sftp
from workers.edi.consumer import EdiPoller
from workers.edi.store import INTERCHANGE
from workers.errors import SetupError
from workers.migrate import upgrade as upgrade_schema

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KNOWN = {"WID-01000": "EA"}


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "sftp-root"
    root.mkdir()
    srv = LoopbackSftp(root, tmp_path / "keys").start()
    yield srv
    sftp.close_all()
    srv.stop()


def make_deps(tmp_path, sftp_settings):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    acme = support.profile("", transport="sftp", sftp=sftp_settings, customers=["10000"])
    return handlers.EdiDeps(engine, EdiSettings(partners=(acme,)), ExceptionStore(engine),
                            unit_of=KNOWN.get, get_order={}.get, clock=lambda: NOW)


def order_850(po, control_no):
    body = [f"BEG*00*SA*{po}**20260601", "CUR*BY*USD", "PO1*1*10*EA*2.50**VP*WID-01000",
            "CTT*1"]
    return x12.write_interchange(
        sender=x12.Party("ZZ", "ACMEBUY"), receiver=x12.Party("ZZ", "DISTCO"),
        control=control_no, at=NOW,
        groups=[x12.GroupSpec("PO", "ACMEBUY", "DISTCO", 1,
                              [x12.SetSpec("850", 1, [b.split("*") for b in body])])],
        segment_suffix="\n", usage="T")


def names(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def orders(deps):
    with deps.engine.connect() as conn:
        return [json.loads(r.payload)["payload"]["record"]["customer_po"]
                for r in conn.execute(select(OutboxRecord.__table__))]


def test_850s_over_sftp_are_claimed_answered_and_moved_never_overwritten(server, tmp_path):
    deps = make_deps(tmp_path, server.settings())
    root = server.root
    deps.folder(deps.settings.partners[0]).ensure()
    assert names(root) == ["failed", "inbound", "outbound", "processed"]
    (root / "inbound" / "po1.edi").write_text(order_850("PO-1", 1))
    (root / "inbound" / ".po2.edi").write_text(order_850("PO-2", 2))  # still being written
    (root / "inbound" / "po3.edi.part").write_text(order_850("PO-3", 3))
    (root / "processed" / "po1.edi").write_text("an older file of that name")

    [done] = handlers.handle_inbound(deps)
    assert done.ok and done.file == "po1.edi" and orders(deps) == ["PO-1"]
    assert names(root / "inbound") == [".po2.edi", "po3.edi.part"]  # never taken
    # Moved by SFTP's rename, which never replaces a name: the older file is kept.
    assert names(root / "processed") == ["po1.edi", "po1.edi.1"]
    assert (root / "processed" / "po1.edi").read_text() == "an older file of that name"
    [ack] = names(root / "outbound")  # no temporary file left
    assert ack.endswith("-997.x12")
    [ic] = x12.read((root / "outbound" / ack).read_text(), file=ack)
    assert ic.errors == [] and ic.groups[0].sets[0].code == "997"

    # The partner's final rename makes the next one visible; a resend keeps the first 997.
    (root / "inbound" / "po3.edi.part").rename(root / "inbound" / "po3.edi")
    [third] = handlers.handle_inbound(deps)
    assert third.ok and orders(deps) == ["PO-1", "PO-3"]
    assert len(names(root / "outbound")) == 2
    with deps.engine.connect() as conn:
        first_out = conn.execute(select(INTERCHANGE.c.id).where(
            INTERCHANGE.c.direction == "out").order_by(INTERCHANGE.c.id)).scalars().first()
    (root / "read").mkdir()  # the partner took the file away
    (root / "outbound" / ack).rename(root / "read" / ack)
    path = handlers.resend(deps, first_out, actor="test", reason="partner lost it")
    assert path.name == ack
    assert (root / "outbound" / ack).read_bytes() == (root / "read" / ack).read_bytes()
    [acme] = handlers.partner_status(deps.engine, deps.settings, now=datetime.now(UTC))
    assert acme["folder"] == f"sftp://distco@127.0.0.1:{server.port}"
    assert (acme["inbound_waiting"], acme["inbound_claimed"], acme["attention"]) == (0, 0, [])


@pytest.mark.parametrize("fault", [("read", "inbound"), ("write", "outbound")])
def test_a_dropped_connection_loses_nothing_and_doubles_nothing(server, tmp_path, fault):
    deps = make_deps(tmp_path, server.settings())
    deps.folder(deps.settings.partners[0]).ensure()
    root = server.root
    for n in (1, 2):
        (root / "inbound" / f"po{n}.edi").write_text(order_850(f"PO-{n}", n))
    server.fault = fault
    # The pass the production poller runs (coexist worker / coexist edi poll).
    poller = EdiPoller(deps, poll_s=0.1, abandoned_after_s=0)
    with pytest.raises(sftp.SftpUnavailable):
        poller.run_once()
    assert server.faults_fired and server.fault is None
    # The claims are still on the server (nothing lost); the next pass takes them over.
    assert all(n.endswith(".processing") for n in names(root / "inbound"))
    result = poller.run_once()
    assert result["failed"] == 0
    assert poller.run_once()["files"] == 0  # nothing left, nothing answered twice
    assert sorted(orders(deps)) == ["PO-1", "PO-2"]
    assert names(root / "inbound") == []
    assert names(root / "processed") == ["po1.edi", "po2.edi"]
    out = [n for n in names(root / "outbound") if not n.startswith(".")]
    assert len(out) == 2 and all(n.endswith("-997.x12") for n in out), out
    # At most the dropped write's temporary dot-file, which no partner reads.
    left = [n for n in names(root / "outbound") if n.startswith(".")]
    assert len(left) <= 1 and all(n.endswith(".tmp") for n in left), left
    for tmp in left:  # once old, the next write of that name removes it
        os.utime(root / "outbound" / tmp, (0, 0))
        name = tmp[1:].rsplit(".", 2)[0]
        folder = deps.folder(deps.settings.partners[0])
        assert folder.write_outbound(name, (root / "outbound" / name).read_bytes())[1] is False
        assert [n for n in names(root / "outbound") if n.startswith(".")] == []
    with deps.engine.connect() as conn:
        statuses = conn.execute(select(INTERCHANGE.c.status).where(
            INTERCHANGE.c.direction == "out")).scalars().all()
    assert statuses == ["written", "written"]
    assert ExceptionStore(deps.engine).list() == []
    assert server.logins >= 2  # it reconnected


def test_a_password_from_the_environment_logs_in(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ACME_SFTP_PW", PASSWORD)
    deps = make_deps(tmp_path, server.settings(key_path=None, password_env="ACME_SFTP_PW"))
    deps.folder(deps.settings.partners[0]).ensure()
    (server.root / "inbound" / "po1.edi").write_text(order_850("PO-1", 1))
    [done] = handlers.handle_inbound(deps)
    assert done.ok and orders(deps) == ["PO-1"]


@pytest.mark.parametrize("login", ["wrong-password", "unknown-key", "unset-password"])
def test_bad_credentials_are_one_clear_line(server, tmp_path, monkeypatch, caplog, login):
    if login == "wrong-password":
        monkeypatch.setenv("ACME_SFTP_PW", "not-it")
        table = server.settings(key_path=None, password_env="ACME_SFTP_PW")
    elif login == "unset-password":
        monkeypatch.delenv("ACME_SFTP_PW", raising=False)
        table = server.settings(key_path=None, password_env="ACME_SFTP_PW")
    else:
        table = server.settings(key_path=str(server.other_key_path))
    deps = make_deps(tmp_path, table)
    with pytest.raises(SetupError) as err:
        handlers.handle_inbound(deps)
    words = "is not set" if login == "unset-password" else "login refused for user 'distco'"
    assert words in str(err.value) and "EDI partner ACME SFTP" in str(err.value)

    # The poller (coexist worker) logs one line, no traceback, and keeps polling.
    poller = EdiPoller(deps, poll_s=0.05)
    import threading

    stop = threading.Event()
    with caplog.at_level(logging.ERROR, logger="workers.edi.consumer"):
        t = threading.Thread(target=poller.run_forever, args=(stop,))
        t.start()
        stop.wait(0.3)
        stop.set()
        t.join(10)
    records = [r for r in caplog.records if words in r.getMessage()]
    assert records and all(r.exc_info is None for r in records)

    # coexist edi poll / coexist edi status: exit 2 / a reason, no traceback.
    config = tmp_path / "coexist.toml"
    sftp_toml = ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items() if v is not None)
    config.write_text(support.partner_toml("", transport="sftp")
                      .replace('folder = ""\n', f"sftp = {{ {sftp_toml} }}\n"))
    env = {"COEXIST_HOME": str(tmp_path), "COEXIST_CONFIG": str(config),
           "COEXIST_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
           "COEXIST_LEGACY_URL": f"sqlite:///{tmp_path / 'nolegacy.db'}",
           "COEXIST_CLOUD_URL": "", "COEXIST_BROKER_URL": "", "COEXIST_REDIS_URL": ""}
    polled = CliRunner().invoke(cli, ["edi", "poll"], env=env)
    assert polled.exit_code == 2, polled.output
    assert words in polled.output and "Traceback" not in polled.output
    [acme] = handlers.partner_status(deps.engine, deps.settings, now=datetime.now(UTC))
    assert any(words in a for a in acme["attention"])

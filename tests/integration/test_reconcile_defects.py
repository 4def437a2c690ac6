"""Reconciliation defects an independent check found (issue 12 item 5), one test each:
a cloud answering JSON of an unexpected shape, bad legacy data blamed on the cloud, a
legacy key without zero padding on PostgreSQL, a record the canonical model cannot hold,
mixed case typed into a legacy column, ``--repair --format json`` and the CSV columns."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import insert, text

from coexistence.reconcile.findings import Finding, Report
from coexistence.sample import iter_customers
from coexistence.translate.cloud import from_canonical as cloud_from_canonical
from coexistence.translate.cloud import to_json_dict
from coexistence.translate.legacy import LEGACY_TRANSLATORS
from tests.integration.test_reconcile import legacy_engine, write_cloud, write_legacy
from tests.integration.test_reconcile_cli import env, run
from tests.support import cloud_sim
from tests.unit.test_legacy_translators import SAMPLES
from workers.cloud_erp import CloudErp
from workers.db import create_state_engine
from workers.flags.facts import SqlPreflightFacts
from workers.legacy_erp.adapter import LegacyErp
from workers.reconcile.cloud import CloudReader
from workers.reconcile.legacy import LegacyReader
from workers.reconcile.runner import reconcile_domain
from workers.reconcile.store import RunStore

simulator, sim = cloud_sim.simulator, cloud_sim.sim
__all__ = ["env", "legacy_engine"]  # fixtures used here


def _state(env):
    return create_state_engine(env["state_url"])


def _good_run(env) -> None:
    """A previous good run, which the guards must not fall back on after a failed one."""
    store = RunStore(_state(env))
    store.finish(store.start("customer", 0.1), Report("customer"), "ok")
    assert SqlPreflightFacts(_state(env)).last_reconciliation("customer") is not None


# --------------------------------------------------------------------------- odd JSON


class _Odd(BaseHTTPRequestHandler):
    """Answers /health, and every other request with the JSON body it is given."""

    body: bytes

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._send(b'{"status": "ok"}' if self.path.startswith("/health") else self.body)

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def odd_cloud():
    servers = []

    def start(body: bytes) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), type("Odd", (_Odd,), {"body": body}))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode", ["checksum", "auto"])
@pytest.mark.parametrize("body", [
    b'{"unexpected": true}',
    b'{"segments": [["", "many", 3]], "duplicates": []}',
    b'[1, 2, 3]',
])
def test_a_cloud_answering_an_unexpected_shape_fails_the_run_with_exit_2(env, odd_cloud,
                                                                        monkeypatch, body,
                                                                        mode):
    write_legacy(env["legacy"], list(iter_customers(5, seed=5)))
    _good_run(env)
    monkeypatch.setenv("COEXIST_CLOUD_URL", odd_cloud(body))
    result = CliRunner().invoke(cli_main(), ["reconcile", "customer", "--no-progress",
                                             "--mode", mode])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "unexpected shape" in lines[0], result.output
    last = RunStore(_state(env)).last("customer")
    assert last["status"] == "failed" and "unexpected shape" in last["detail"]
    # The failed run is the newest: the guard sees it and has no drift figure to trust
    # (the drift guard refuses a newest run that failed, naming it).
    seen = SqlPreflightFacts(_state(env)).last_reconciliation("customer")
    assert seen is not None and seen.status == "failed" and seen.drift_pct is None


def cli_main():
    from workers.cli import cli
    return cli


# --------------------------------------------------------------------------- bad legacy data


def test_bad_legacy_data_is_a_legacy_finding_not_the_cloud_s_fault(env):
    header = dict(SAMPLES["price"][0], EFFDATE=20231345)
    t = LEGACY_TRANSLATORS["price"]
    with env["legacy"].begin() as conn:
        conn.execute(insert(t.TABLE.__table__), [header])
    result = run("price", "--format", "json")
    assert "cloud ERP" not in result.output, result.output
    assert result.exit_code == 1, result.output
    body = json.loads(result.output)
    (finding,) = body["findings"]
    assert finding["kind"] == "untranslatable" and finding["side"] == "legacy"
    assert finding["key"] == "7001"
    assert "legacy ERP" in finding["detail"] and "EFFDATE=20231345" in finding["detail"]
    assert body["runs"][0]["untranslatable"] == 1


# --------------------------------------------------------------------------- key padding


def test_a_legacy_key_typed_without_zero_padding_is_read_as_typed(legacy_engine, sim):
    """On PostgreSQL CHAR pads '42' with spaces; SQLite keeps it as typed.  Both read it
    as customer 42 (here equal to the cloud's), neither aborts the run."""
    records = list(iter_customers(6, seed=3))
    odd = records[0].model_copy(update={"key": "42"})
    write_legacy(legacy_engine, records[1:])
    t = LEGACY_TRANSLATORS["customer"]
    head, sites = t.from_canonical(odd, changed_by="JSMITH")
    head["CUSTNO"] = "42"
    for site in sites:
        site["CUSTNO"] = "42"
    with legacy_engine.begin() as conn:
        conn.execute(insert(t.TABLE.__table__), [head])
        conn.execute(insert(t.CHILD_TABLE.__table__), sites)
    erp = CloudErp(sim.url, timeout_s=5)
    try:
        write_cloud(erp, [odd, *records[1:]])
        found: list[Finding] = []
        report = reconcile_domain("customer", LegacyReader(LegacyErp(legacy_engine)),
                                  CloudReader(erp), mode="full", on_finding=found.append)
    finally:
        erp.close()
    assert found == []
    assert report.counts.unchanged == 6 and report.counts.rows_legacy == 6


# --------------------------------------------------------------------------- unrepresentable


def _post_raw(url: str, doc: dict) -> None:
    response = httpx.post(f"{url}/customers", json=doc, timeout=5)
    assert response.status_code in (200, 201), response.text


def test_a_record_the_canonical_model_cannot_hold_is_a_finding_and_the_run_goes_on(env, sim):
    records = list(iter_customers(8, seed=9))
    write_legacy(env["legacy"], records)
    write_cloud(env["cloud"], records[1:])
    # The cloud holds 150 characters of name (the legacy ERP would truncate to 30, a
    # declared tolerance), more than the canonical model's 120.
    doc = to_json_dict(cloud_from_canonical(records[0]))
    doc = {k: v for k, v in doc.items()
           if k not in ("@odata.etag", "id", "lastModifiedDateTime", "coexistSourceVersion")}
    doc["displayName"] = "N" * 150
    _post_raw(sim.url, doc)
    for mode in ("full", "checksum"):
        result = run("customer", "product", "--format", "json", "--mode", mode)
        assert result.exit_code == 1, result.output
        body = json.loads(result.output)
        assert [r["domain"] for r in body["runs"]] == ["customer", "product"]
        customer = body["runs"][0]
        assert customer["untranslatable"] == 1 and customer["unchanged"] == 7
        (finding,) = body["findings"]
        assert finding["kind"] == "untranslatable" and finding["side"] == "cloud"
        assert finding["key"] == records[0].key and "cloud ERP" in finding["detail"]
        assert "displayName" in finding["detail"] and "120 characters" in finding["detail"]


# --------------------------------------------------------------------------- mixed case


def test_mixed_case_typed_into_a_legacy_column_is_within_the_case_tolerance(env):
    records = list(iter_customers(6, seed=2))
    write_legacy(env["legacy"], records)
    write_cloud(env["cloud"], records)
    t = LEGACY_TRANSLATORS["customer"]
    with env["legacy"].begin() as conn:
        conn.execute(text('UPDATE "CUSTMAST" SET "CUSTNAME" = :n WHERE "CUSTNO" = :k'),
                     {"n": records[2].name.title()[:30], "k": t.legacy_key(records[2].key)})
    assert records[2].name.upper() != records[2].name.title()
    for mode in ("full", "checksum"):
        result = run("customer", "--format", "json", "--mode", mode, "--repair")
        assert result.exit_code == 0, result.output
        body = json.loads(result.stdout)
        assert body["findings"] == [] and body["runs"][0]["mismatched"] == 0
        assert "0 repairs planned" in result.stderr


# --------------------------------------------------------------------------- outputs


def test_repair_with_json_keeps_stdout_json_and_says_the_rest_on_stderr(env):
    records = list(iter_customers(6, seed=2))
    write_legacy(env["legacy"], records)
    write_cloud(env["cloud"], records[1:])
    for extra in ((), ("--yes",)):
        result = run("customer", "--repair", *extra, "--format", "json")
        assert result.exit_code == 1
        body = json.loads(result.stdout)  # stdout is the JSON alone
        assert body["runs"][0]["exclusive_legacy"] == 1
        assert "repair" in result.stderr


def test_the_csv_summary_has_key_mismatches_untranslatable_and_findings(env):
    records = list(iter_customers(6, seed=2))
    write_legacy(env["legacy"], records)
    write_cloud(env["cloud"], records[1:])
    result = run("customer", "--format", "csv")
    header, row = result.stdout.strip().splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert values["key_mismatches"] == "0" and values["untranslatable"] == "0"
    assert values["findings"] == "1" and values["exclusive_legacy"] == "1"

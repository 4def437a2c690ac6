"""The cloud export digested in a helper process (``workers.reconcile.pipeline``): the items
equal the ones the calling process makes, in the same order, on a real simulator's export,
with a document the canonical model cannot hold among them; a cold run through it finds what
an inline one finds; a document without a number still stops the stream with a clear error."""

from __future__ import annotations

import httpx
import pytest

from coexistence.sample import iter_customers
from coexistence.translate.cloud import from_canonical as cloud_from_canonical
from coexistence.translate.cloud import to_json_dict
from tests.integration.test_reconcile import as_tuple, seeded, write_cloud, write_legacy
from tests.support import cloud_sim
from workers.cloud_erp import CloudErp
from workers.reconcile.cloud import CloudReader, CloudUnavailable, item_of_json
from workers.reconcile.pipeline import Digester

simulator, sim = cloud_sim.simulator, cloud_sim.sim

#: Small chunks, and the helper from the 7th record on, so a test of a few hundred
#: records crosses many chunk boundaries and both paths.
SMALL = {"inline_records": 6, "chunk_lines": 7, "ahead_chunks": 2}


def _post_raw(url: str, doc: dict) -> None:
    response = httpx.post(f"{url}/customers", json=doc, timeout=5)
    assert response.status_code in (200, 201), response.text


def _reader(erp: CloudErp, processes: int, monkeypatch) -> CloudReader:
    import workers.reconcile.cloud as cloud_module

    monkeypatch.setattr(cloud_module, "Digester",
                        lambda *args, processes: Digester(*args, processes=processes, **SMALL))
    return CloudReader(erp, digest_processes=processes)


def _as_tuples(items) -> list[tuple]:
    return [(i.key, i.digest, i.nk, i.error,
             None if i.error else i.record.model_dump_json()) for i in items]


def test_the_helper_process_makes_the_items_the_caller_makes(sim, monkeypatch):
    records = list(iter_customers(150, seed=5))
    erp = CloudErp(sim.url, timeout_s=10)
    try:
        write_cloud(erp, records[1:])
        bad = to_json_dict(cloud_from_canonical(records[0]))
        bad = {k: v for k, v in bad.items()
               if k not in ("@odata.etag", "id", "lastModifiedDateTime", "coexistSourceVersion")}
        bad["displayName"] = "N" * 150  # more than canonical's 120: untranslatable
        _post_raw(sim.url, bad)
        inline = _reader(erp, 0, monkeypatch)
        expected = _as_tuples(inline.stream("customer"))
        helped = _reader(erp, 1, monkeypatch)
        got = _as_tuples(helped.stream("customer"))
    finally:
        erp.close()
    assert inline.digester.offloaded == 0
    assert helped.digester.offloaded == 150 - SMALL["inline_records"]
    assert len(expected) == 150 and got == expected
    assert [t[0] for t in got if t[3]] == [records[0].key]
    # ``upto`` ends the stream inside a chunk in flight, and the helper is stopped.
    erp = CloudErp(sim.url, timeout_s=10)
    try:
        cut = _reader(erp, 1, monkeypatch)
        upto = expected[40][0]
        assert [i.key for i in cut.stream("customer", upto=upto)] == [
            t[0] for t in expected[:41]]
        assert cut.digester._pool is None
    finally:
        erp.close()


def test_a_cold_run_through_the_helper_finds_what_an_inline_run_finds(sim, tmp_path,
                                                                       monkeypatch):
    from workers.db import create_state_engine
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
    from workers.migrate import upgrade
    from workers.reconcile.legacy import LegacyReader
    from workers.reconcile.runner import reconcile_domain
    from workers.xref_sql import SqlXref

    engine = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(engine)
    legacy, cloud, links, expected = seeded(80)
    write_legacy(engine, legacy)
    erp = CloudErp(sim.url, timeout_s=10)
    found = {}
    try:
        write_cloud(erp, cloud)
        for processes in (0, 1):
            state = create_state_engine(f"sqlite:///{tmp_path / f'state-{processes}.db'}")
            upgrade(state)
            xref = SqlXref(state)
            for key, cloud_id in links:
                xref.link("customer", key, cloud_id=cloud_id)
            reader = _reader(erp, processes, monkeypatch)
            findings: list = []
            reconcile_domain("customer", LegacyReader(LegacyErp(engine)), reader,
                             xref=xref.entries("customer"), mode="full",
                             on_finding=findings.append, rebuild_index=state)
            with state.connect() as conn:
                rows = conn.exec_driver_sql(
                    "SELECT side, key, bucket, digest, nk FROM reconcile_index "
                    "ORDER BY side, key").all()
            found[processes] = ({as_tuple(f) for f in findings}, rows,
                                reader.digester.offloaded)
            state.dispose()
    finally:
        erp.close()
        engine.dispose()
    assert found[0][0] == expected == found[1][0]
    assert found[0][1] == found[1][1] and len(found[1][1]) == len(legacy) + len(cloud)
    assert found[0][2] == 0 and found[1][2] == len(cloud) - SMALL["inline_records"]


def test_a_document_without_a_number_past_the_inline_records_stops_the_stream(monkeypatch):
    lines = [to_json_dict(cloud_from_canonical(r)) for r in iter_customers(12, seed=3)]
    import json

    text = [json.dumps(d) for d in lines]
    text[9] = json.dumps({"unexpected": True})
    digester = Digester("customer", item_of_json, CloudUnavailable, processes=1, **SMALL)
    got: list[str] = []
    try:
        with pytest.raises(CloudUnavailable, match="without a number"):
            for line in text:
                got.extend(i.key for i in digester.feed(line))
            got.extend(i.key for i in digester.flush())
    finally:
        digester.close()
    assert got == [d["number"] for d in lines[:9]]

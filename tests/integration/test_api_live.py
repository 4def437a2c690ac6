"""The API served by uvicorn on loopback: schemathesis, the committed OpenAPI document,
and two concurrent requests with the same Idempotency-Key."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import api_world as w
from tests.support.receiver import ServerThread
from workers.api.app import create_app
from workers.api.deps import ApiDeps, ApiSettings
from workers.api.queries import MemoryQueries
from workers.cli.api import openapi_document
from workers.db import create_state_engine
from workers.erp_memory import InMemoryErp
from workers.migrate import upgrade as upgrade_schema

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
#: Examples per operation: bounded, so the suite stays fast.
EXAMPLES = 30


class SlowLegacy(InMemoryErp):
    """Holds every order write until released: a request that stays in flight."""

    def __init__(self):
        super().__init__("legacy")
        self.entered = threading.Event()
        self.release = threading.Event()

    def upsert(self, record, **kw):
        if record.domain == "order" and record.channel == "portal":
            self.entered.set()
            self.release.wait(10)
        return super().upsert(record, **kw)


@pytest.fixture
def live(tmp_path):
    legacy, cloud = SlowLegacy(), InMemoryErp("cloud")
    legacy.release.set()
    w.seed(legacy, w.records("L"))
    w.seed(cloud, w.records("C"))
    state = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(state)
    deps = ApiDeps.build(erps={"legacy": legacy, "cloud": cloud},
                         queries={"legacy": MemoryQueries(legacy), "cloud": MemoryQueries(cloud)},
                         flags=w.flags(), state=state, consumers=w.consumers(),
                         settings=ApiSettings(cache_ttl_s=1.0, rate_per_s=1e6, rate_burst=10**6),
                         send=lambda *a: None)
    server = ServerThread(create_app(deps)).start()
    yield f"http://127.0.0.1:{server.port}", legacy
    legacy.release.set()
    server.stop()
    state.dispose()


def test_the_committed_openapi_document_is_the_one_the_app_serves(live):
    base, _ = live
    served = httpx.get(f"{base}/v1/openapi.json").json()
    committed = json.loads(OPENAPI.read_text())
    assert served == committed == openapi_document(), (
        "docs/openapi.json drifted: run `coexist api openapi > docs/openapi.json`")


def test_schemathesis_finds_no_server_error_and_no_schema_violation(live):
    base, _ = live
    schema = schemathesis.openapi.from_url(f"{base}/v1/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 5
    for role in ("portal", "inquiry"):
        for operation in operations:
            _explore(operation.as_strategy(), base, w.auth(role), checks)


def _explore(strategy, base, headers, checks):
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case):
        case.call_and_validate(base_url=base, headers=headers, checks=checks)

    run()


def test_two_concurrent_requests_with_one_key_one_writes_the_other_gets_409(live):
    base, legacy = live
    legacy.release.clear()
    body = {"customer_key": w.ACCOUNT, "lines": [{"sku": w.SKU, "quantity": 2}]}
    headers = {**w.auth("portal"), "Idempotency-Key": f'"{uuid.uuid4()}"'}
    results = {}

    def first():
        results["first"] = httpx.post(f"{base}/v1/orders", json=body, headers=headers,
                                      timeout=20)

    t = threading.Thread(target=first)
    t.start()
    assert legacy.entered.wait(10)
    second = httpx.post(f"{base}/v1/orders", json=body, headers=headers, timeout=20)
    legacy.release.set()
    t.join(20)
    assert (second.status_code, second.json()["code"]) == (409, "idempotency_key_in_flight")
    assert results["first"].status_code == 201
    third = httpx.post(f"{base}/v1/orders", json=body, headers=headers, timeout=20)
    assert third.status_code == 201 and third.json() == results["first"].json()
    orders = [c for c in legacy.read(0, 100_000) if c.writer == "COEXPORTAL"]
    assert len(orders) == 1

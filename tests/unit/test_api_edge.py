"""The warm inquiry path (``workers.api.edge``): a kept answer is the answer the full path
gives, never outlives its reads or a flag switch, and is never served to another caller."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.pool import StaticPool

from tests.support import api_world as w
from workers.api.app import create_app
from workers.api.deps import ApiDeps, ApiSettings
from workers.api.queries import MemoryQueries
from workers.api.service import Inquiry
from workers.db import create_state_engine
from workers.erp_memory import InMemoryErp
from workers.migrate import upgrade as upgrade_schema


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(monkeypatch):
    legacy, cloud = InMemoryErp("legacy"), InMemoryErp("cloud")
    w.seed(legacy, w.records("L"))
    w.seed(cloud, w.records("C"))
    flags = w.flags(customer="legacy", order="legacy", invoice="legacy")
    state = create_state_engine("sqlite://", poolclass=StaticPool)
    upgrade_schema(state)
    deps = ApiDeps.build(erps={"legacy": legacy, "cloud": cloud},
                         queries={"legacy": MemoryQueries(legacy),
                                  "cloud": MemoryQueries(cloud)},
                         flags=flags, state=state, consumers=w.consumers(),
                         settings=ApiSettings(cache_ttl_s=10))
    clock = Clock()
    deps.inquiry.cache.clock = clock
    app = create_app(deps)
    app.edge.clock = clock
    computed = []
    full = Inquiry.credit

    def counting(self, reads, scope, key):
        computed.append(key)
        return full(self, reads, scope, key)

    monkeypatch.setattr(Inquiry, "credit", counting)
    yield TestClient(app), flags, clock, computed
    state.dispose()


def _credit(client, role="inquiry", key=w.ACCOUNT, **headers):
    return client.get(f"/v1/customers/{key}/credit", headers={**w.auth(role), **headers})


def test_a_warm_answer_is_the_full_paths_answer_without_recomputing_it(world):
    client, _flags, clock, computed = world
    first = _credit(client)
    made = len(computed)  # a miss evaluates cache-only first, then reads the SoR
    clock.now += 3
    second = _credit(client, **{"X-Correlation-Id": "call-2"})
    assert len(computed) == made, "the second answer came from the warm path"
    assert first.status_code == second.status_code == 200
    a, b = first.json(), second.json()
    assert a["data"] == b["data"] and a["schema_version"] == b["schema_version"]
    assert a["meta"]["answered_by"] == b["meta"]["answered_by"]
    assert b["meta"]["cached"] is True and b["meta"]["age_s"] == pytest.approx(3.0)
    assert second.headers["x-correlation-id"] == "call-2"
    assert second.headers["age"] == "3" and second.headers["cache-control"] == "max-age=10"
    assert second.headers["content-type"] == first.headers["content-type"]


def test_a_flag_switch_misses_at_once_and_the_new_sor_answers(world):
    client, flags, _clock, computed = world
    assert _credit(client).json()["data"]["credit_limit"] == "1000.00"
    made = len(computed)
    w.set_mode(flags, "customer", "cloud")
    answer = _credit(client).json()
    assert len(computed) > made
    assert answer["data"]["credit_limit"] == "2000.00"
    assert {s["system"] for s in answer["meta"]["answered_by"]
            if s["domain"] == "customer"} == {"cloud"}


def test_a_kept_answer_expires_with_its_oldest_read(world):
    client, _flags, clock, computed = world
    _credit(client)
    made = len(computed)
    clock.now += 9.9
    _credit(client)
    assert len(computed) == made
    clock.now += 0.2
    assert _credit(client).json()["meta"]["cached"] is False
    assert len(computed) > made


def test_a_kept_answer_is_never_served_to_another_credential(world):
    client, _flags, _clock, computed = world
    assert _credit(client, role="inquiry").status_code == 200
    made = len(computed)
    # Same URL, other consumers: each goes through authentication and its own policy.
    assert _credit(client, role="partner").status_code in (403, 404)
    assert client.get(f"/v1/customers/{w.ACCOUNT}/credit").status_code == 401
    assert client.get(f"/v1/customers/{w.ACCOUNT}/credit",
                      headers={"Authorization": "Bearer nope"}).status_code == 401
    assert len(computed) > made  # the partner's request was evaluated, not served warm


def _edge_body(data) -> dict:
    return {"schema_version": 1, "data": data, "meta": {
        "answered_by": [{"domain": "customer", "system": "legacy", "flag_version": 3}],
        "cached": False, "stale": False, "age_s": 1.5, "max_age_s": 10}}


class _Flags:
    def state(self, domain):
        from types import SimpleNamespace
        return SimpleNamespace(version=3)


def _scope():
    return {"path": "/v1/customers/1/credit", "query_string": b"",
            "headers": [(b"authorization", b"Bearer t")]}


def test_a_kept_answers_bytes_are_what_encoding_it_anew_gives():
    import asyncio
    import json

    from workers.api.edge import EdgeCache

    clock = Clock()
    edge = EdgeCache(_Flags(), clock)
    body = _edge_body({"name": "Zoë \"age_s\": 1", "limit": "10.00"})
    edge.put(_scope(), body)
    clock.now += 2.25
    sent = []

    async def send(message):
        sent.append(message)

    entry = edge.get(_scope())
    cid, age = asyncio.run(edge.serve(entry, _scope(), send,
                                      headers=[(b"ratelimit", b"r=1")]))
    expected = {**body, "meta": {**body["meta"], "cached": True, "age_s": 3.75}}
    raw = sent[1]["body"]
    assert age == 3.75
    assert raw == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()
    headers = dict(sent[0]["headers"])
    assert headers[b"content-length"] == str(len(raw)).encode()
    assert headers[b"age"] == b"3" and headers[b"ratelimit"] == b"r=1"
    assert headers[b"x-correlation-id"] == cid


def test_an_answer_holding_the_age_marker_itself_is_not_kept():
    from workers.api.edge import _AGE, EdgeCache

    edge = EdgeCache(_Flags(), Clock())
    edge.put(_scope(), _edge_body({"name": _AGE}))
    assert edge.get(_scope()) is None

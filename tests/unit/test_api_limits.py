"""Per-consumer rate limits on the real app (Starlette's test client over ASGI), the
inquiry trace they sit next to, and the consumers file's budget fields."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.pool import StaticPool

from tests.support import api_world as w
from workers.api.app import create_app
from workers.api.auth import ConsumerConfigError, Consumers, token_hash
from workers.api.deps import ApiDeps, ApiSettings
from workers.api.queries import MemoryQueries
from workers.api.trace import ApiInquiry, InquiryTrace
from workers.db import create_state_engine
from workers.erp_memory import InMemoryErp
from workers.migrate import upgrade as upgrade_schema

BURSTY, QUIET = "tok-bursty", "tok-quiet"


def _consumers(**extra) -> Consumers:
    return Consumers.from_json({"consumers": [
        {"name": "bursty", "role": "inquiry", "token_sha256": token_hash(BURSTY),
         "rate_per_s": 0.01, "burst": 3, **extra},
        {"name": "quiet", "role": "inquiry", "token_sha256": token_hash(QUIET)},
    ]})


class Api:
    def __init__(self, settings: ApiSettings, consumers: Consumers | None = None):
        self.legacy = InMemoryErp("legacy")
        w.seed(self.legacy, w.records("L"))
        self.state = create_state_engine("sqlite://", poolclass=StaticPool)
        upgrade_schema(self.state)
        self.deps = ApiDeps.build(
            erps={"legacy": self.legacy}, queries={"legacy": MemoryQueries(self.legacy)},
            flags=w.flags(customer="legacy", order="legacy", invoice="legacy",
                          price="legacy", product="legacy"),
            state=self.state, consumers=consumers or _consumers(),
            settings=settings)
        self.app = create_app(self.deps)
        self.client = TestClient(self.app, raise_server_exceptions=False)

    def credit(self, token: str, **headers):
        return self.client.get(f"/v1/customers/{w.ACCOUNT}/credit",
                               headers={"Authorization": f"Bearer {token}", **headers})

    def close(self):
        self.app.inquiry_trace.close()
        self.state.dispose()


@pytest.fixture(params=[0.0, 60.0], ids=["no-cache", "warm-path"])
def api(request):
    # The quiet consumer has the default budget: burst 4, then 1 request per 20 s (slow enough
    # that a loaded machine does not refill a token between two requests of a test).
    a = Api(ApiSettings(cache_ttl_s=request.param, rate_per_s=0.05, rate_burst=4))
    yield a
    a.close()


def _count(consumer: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("coexist_api_requests_total",
                                     {"consumer": consumer, "outcome": outcome}) or 0.0


def test_one_consumers_burst_is_refused_with_429_and_never_throttles_another(api):
    throttled0, quiet0 = _count("bursty", "throttled"), _count("quiet", "admitted")
    answers = [api.credit(BURSTY) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert answers[-1].headers["ratelimit-policy"] == '"consumer";q=3;w=300'
    assert answers[-1].headers["ratelimit"].startswith('"consumer";r=0;')
    refused = api.credit(BURSTY, **{"X-Correlation-Id": "cid-429"})
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert (body["code"], body["status"], body["correlation_id"]) == (
        "rate_limited", 429, "cid-429")
    assert "bursty" in body["detail"] and "burst 3" in body["detail"]
    # 1 token at 0.01/s: 100 s away, said the same way in both headers.
    assert int(refused.headers["retry-after"]) >= 99
    assert refused.headers["ratelimit"] == f'"consumer";r=0;t={refused.headers["retry-after"]}'
    assert refused.headers["x-correlation-id"] == "cid-429"
    # The other consumer's budget is untouched by the first one's burst.
    quiet = [api.credit(QUIET) for _ in range(4)]
    assert [r.status_code for r in quiet] == [200] * 4
    assert quiet[0].headers["ratelimit-policy"] == '"consumer";q=4;w=80'
    assert api.credit(BURSTY).status_code == 429
    assert _count("bursty", "throttled") - throttled0 == 2
    assert _count("quiet", "admitted") - quiet0 == 4


def test_the_default_budget_applies_to_a_consumer_without_its_own(api):
    statuses = [api.credit(QUIET).status_code for _ in range(6)]
    # Burst 4 at 0.05/s: a token comes back 20 s after it was spent.
    assert statuses[:4] == [200] * 4 and 429 in statuses[4:]


def test_requests_without_a_valid_credential_draw_from_no_bucket(api):
    for _ in range(6):
        assert api.credit("wrong-token").status_code == 401
    assert api.credit(BURSTY).status_code == 200


def test_with_redis_unreachable_the_limit_holds_in_the_process_and_answers_go_on():
    a = Api(ApiSettings(cache_ttl_s=0, redis_url="redis://127.0.0.1:1/0"))
    try:
        before = REGISTRY.get_sample_value("coexist_api_ratelimit_fallback_total") or 0.0
        assert [a.credit(BURSTY).status_code for _ in range(4)] == [200, 200, 200, 429]
        after = REGISTRY.get_sample_value("coexist_api_ratelimit_fallback_total")
        assert after - before == 4
    finally:
        a.close()


@pytest.mark.parametrize("entry, field", [
    ({"rate_per_s": 0}, "rate_per_s"), ({"rate_per_s": "fast"}, "rate_per_s"),
    ({"burst": 0}, "burst"), ({"burst": 2.5}, "burst"), ({"burst": True}, "burst"),
])
def test_a_bad_budget_in_the_consumers_file_names_the_consumer_and_field(entry, field):
    with pytest.raises(ConsumerConfigError) as err:
        _consumers(**entry)
    assert "bursty" in str(err.value) and f"field {field}" in str(err.value)


# --------------------------------------------------------------------------- inquiry trace


def _rows(state):
    t = ApiInquiry.__table__
    with state.connect() as conn:
        return conn.execute(select(t).order_by(t.c.id)).all()


def test_inquiries_are_traced_with_who_asked_which_system_answered_and_the_cache(api):
    first = api.credit(QUIET, **{"X-Correlation-Id": "cid-a"})
    second = api.credit(QUIET, **{"X-Correlation-Id": "cid-b"})
    api.client.get(f"/v1/prices?customer={w.ACCOUNT}&sku={w.SKU}&qty=5",
                   headers={"Authorization": f"Bearer {QUIET}"})
    assert first.status_code == second.status_code == 200
    api.app.inquiry_trace.flush()
    rows = _rows(api.state)
    assert [(r.domain, r.object_key, r.consumer, r.role, r.status) for r in rows] == [
        ("customer", w.ACCOUNT, "quiet", "inquiry", 200),
        ("customer", w.ACCOUNT, "quiet", "inquiry", 200),
        ("customer", w.ACCOUNT, "quiet", "inquiry", 200),
        ("product", w.SKU, "quiet", "inquiry", 200)]
    assert [r.correlation_id for r in rows[:2]] == ["cid-a", "cid-b"]
    answered = json.loads(rows[0].answered_by)
    assert {(a["domain"], a["system"], a["flag_version"]) for a in answered} == {
        ("customer", "legacy", 1), ("order", "legacy", 1), ("invoice", "legacy", 1)}
    # The second answer came from a cache (the warm path when it is on) only with a TTL.
    ttl = api.deps.settings.cache_ttl_s
    assert (rows[0].cached, rows[1].cached) == (False, ttl > 0)
    assert rows[2].path.startswith("/v1/prices?customer=")


def test_the_trace_keeps_at_most_its_cap_per_second_and_counts_the_rest():
    a = Api(ApiSettings(cache_ttl_s=60, trace_max_per_s=2))
    try:
        before = REGISTRY.get_sample_value("coexist_api_inquiries_untraced_total",
                                           {"reason": "over_cap"}) or 0.0
        for _ in range(3):
            assert a.credit(BURSTY).status_code == 200
        a.app.inquiry_trace.flush()
        assert len(_rows(a.state)) == 2
        after = REGISTRY.get_sample_value("coexist_api_inquiries_untraced_total",
                                          {"reason": "over_cap"})
        assert after - before == 1
    finally:
        a.close()


def test_the_trace_purges_rows_past_its_retention():
    from datetime import UTC, datetime, timedelta

    a = Api(ApiSettings(cache_ttl_s=0))
    try:
        clock = [datetime(2026, 3, 1, tzinfo=UTC)]
        trace = InquiryTrace(a.state, retention_h=1, now=lambda: clock[0])
        a.app.inquiry_trace = trace
        assert a.credit(QUIET).status_code == 200
        trace.flush()  # (or the writer thread already did)
        assert len(_rows(a.state)) == 1
        clock[0] += timedelta(hours=2)
        trace._purged_at = -1e9  # the purge is due
        assert a.credit(QUIET).status_code == 200
        trace.flush()
        assert [r.at.replace(tzinfo=UTC) for r in _rows(a.state)] == [clock[0]]
    finally:
        a.close()


def test_the_trace_admits_again_once_its_cap_refills_after_skipping_draws(monkeypatch):
    """Over the cap the trace skips the bucket until a token is due; then admits again."""
    import workers.api.trace as trace_module

    now = [1000.0]
    monkeypatch.setattr(trace_module.time, "monotonic", lambda: now[0])
    a = Api(ApiSettings(cache_ttl_s=0))
    try:
        trace = InquiryTrace(a.state, max_per_s=2)
        trace._bucket.clock = lambda: now[0]
        trace._bucket._at = now[0]
        assert [trace.admit() for _ in range(3)] == [True, True, False]
        draws = []
        take = trace._bucket.take
        trace._bucket.take = lambda n=1: draws.append(n) or take(n)
        now[0] += 0.4  # the next token is due at +0.5 s: no draw before it
        assert trace.admit() is False and draws == []
        now[0] += 0.11
        assert trace.admit() is True and draws == [1]
    finally:
        a.close()


def test_a_remembered_authorization_header_maps_to_the_consumer_authenticate_gives():
    consumers = _consumers()
    for raw in (f"Bearer {BURSTY}".encode(), f"bearer {QUIET}".encode()):
        first = consumers.authenticate_header(raw)
        assert first is consumers.authenticate(raw.decode()) is not None
        assert consumers.authenticate_header(raw) is first
    assert consumers.authenticate_header(b"Bearer nope") is None
    assert consumers.authenticate_header(None) is None
    assert len(consumers._by_header) == 2  # only valid credentials are remembered

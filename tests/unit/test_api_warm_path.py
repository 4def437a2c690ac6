"""The warm path answers byte for byte as FastAPI's routes do: the same status, the same
response headers in the same order and the same body bytes, for authorized, unauthorized,
forbidden, rate-limited, unknown and bad requests, on every inquiry route.

Two apps over the same ERPs, flags and clock receive the same requests at the ASGI level
(what uvicorn hands the app and gets back): one with the warm path (``workers.api.edge``),
one with it switched off (every request through FastAPI).  Only a correlation id made by
the server (none given) differs, and it is checked to be a UUID instead."""

from __future__ import annotations

import asyncio
import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.pool import StaticPool

from tests.support import api_world as w
from workers.api.app import create_app
from workers.api.auth import Consumers, token_hash
from workers.api.deps import ApiDeps, ApiSettings
from workers.api.queries import MemoryQueries
from workers.db import create_state_engine
from workers.erp_memory import InMemoryErp
from workers.migrate import upgrade as upgrade_schema

_UUID = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
BURSTY = "tok-bursty"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _consumers() -> Consumers:
    entries = json.loads(json.dumps({"consumers": [
        {"name": "acme-portal", "role": "portal", "account": w.ACCOUNT,
         "children": [w.CHILD], "token_sha256": token_hash(w.TOKENS["portal"])},
        {"name": "service-desk", "role": "inquiry",
         "token_sha256": token_hash(w.TOKENS["inquiry"])},
        {"name": "globex-edi", "role": "partner", "account": w.OTHER,
         "token_sha256": token_hash(w.TOKENS["partner"])},
        {"name": "bursty", "role": "inquiry", "token_sha256": token_hash(BURSTY),
         "rate_per_s": 0.5, "burst": 3},
    ]}))
    return Consumers.from_json(entries)


class Pair:
    """The same API twice: ``fast`` with the warm path, ``full`` without it."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.legacy, self.cloud = InMemoryErp("legacy"), InMemoryErp("cloud")
        w.seed(self.legacy, w.records("L"))
        w.seed(self.cloud, w.records("C"))
        self.flags = w.flags(customer="legacy", order="legacy", invoice="legacy",
                             price="legacy", product="legacy", inventory="legacy",
                             shipment="legacy")
        self.engines = []
        self.fast, self.full = self._app(), self._app()
        self.full.edge = None

    def _app(self):
        state = create_state_engine("sqlite://", poolclass=StaticPool)
        upgrade_schema(state)
        self.engines.append(state)
        deps = ApiDeps.build(
            erps={"legacy": self.legacy, "cloud": self.cloud},
            queries={"legacy": MemoryQueries(self.legacy), "cloud": MemoryQueries(self.cloud)},
            flags=self.flags, state=state, consumers=_consumers(),
            settings=ApiSettings(cache_ttl_s=10, rate_per_s=100, rate_burst=1000))
        deps.inquiry.cache.clock = self.clock
        app = create_app(deps)
        app.edge.clock = self.clock
        app.limits.clock = self.clock
        return app

    def close(self) -> None:
        for app in (self.fast, self.full):
            app.inquiry_trace.close()
        for engine in self.engines:
            engine.dispose()


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


async def _exchange(app, target: str, headers: dict[str, str]):
    path, _, query = target.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
             "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080), "state": {},
             "headers": [(b"host", b"127.0.0.1:8080"),
                         *((k.lower().encode(), v.encode()) for k, v in headers.items())]}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start, *rest = sent
    assert start["type"] == "http.response.start"
    return (start["status"], [(bytes(k), bytes(v)) for k, v in start["headers"]],
            b"".join(m.get("body", b"") for m in rest))


def _masked(answer, given_cid: bool):
    status, headers, body = answer
    if not given_cid:
        cids = [v for k, v in headers if k == b"x-correlation-id"]
        assert len(cids) == 1 and _UUID.match(cids[0]), headers
        headers = [(k, b"<made>" if k == b"x-correlation-id" else v) for k, v in headers]
        body = re.sub(rb'"correlation_id":"[0-9a-f-]{36}"', b'"correlation_id":"<made>"', body)
    return status, headers, body


def _same(pair: Pair, target: str, headers: dict[str, str] | None = None, *,
          valid_cid: bool = True):
    """Ask both apps; they must answer alike.  Returns the fast app's answer."""
    headers = headers or {}

    async def both():
        return (await _exchange(pair.fast, target, headers),
                await _exchange(pair.full, target, headers))

    fast, full = asyncio.run(both())
    given = "X-Correlation-Id" in headers and valid_cid
    assert _masked(fast, given) == _masked(full, given)
    return fast


INQUIRIES = [
    f"/v1/customers/{w.ACCOUNT}/credit",
    f"/v1/prices?customer={w.ACCOUNT}&sku={w.SKU}&qty=12",
    f"/v1/availability?sku={w.SKU}&warehouse=W01",
    f"/v1/availability?sku={w.SKU}",
    "/v1/orders/300001",
]


def _warm_hits(pair: Pair) -> int:
    return len(pair.fast.edge._entries)


@pytest.mark.parametrize("target", INQUIRIES)
@pytest.mark.parametrize("role", ["inquiry", "portal"])
def test_a_warm_answer_is_byte_for_byte_the_routes_answer(pair, target, role):
    first = _same(pair, target, {**w.auth(role), "X-Correlation-Id": "first-1"})
    assert first[0] == 200
    assert _warm_hits(pair) == 1, "the first answer is kept for the warm path"
    for step, cid in ((0.0, {"X-Correlation-Id": "call-2"}), (0.25, {}),
                      (1.7504, {"X-Correlation-Id": "call:3.a"}), (3.0, {})):
        pair.clock.now += step
        status, headers, body = _same(pair, target, {**w.auth(role), **cid})
        assert status == 200
        assert json.loads(body)["meta"]["cached"] is True
    # The same headers, in the order FastAPI sends them.
    assert [k for k, _ in headers] == [
        b"cache-control", b"age", b"content-length", b"content-type", b"x-correlation-id",
        b"ratelimit-policy", b"ratelimit"]


def test_an_invalid_correlation_id_is_replaced_on_both_paths(pair):
    target = INQUIRIES[0]
    _same(pair, target, w.auth("inquiry"))
    status, headers, _ = _same(pair, target, {**w.auth("inquiry"),
                                              "X-Correlation-Id": "bad id with spaces"},
                                valid_cid=False)
    cid = dict(headers)[b"x-correlation-id"]
    assert status == 200 and cid != b"bad id with spaces"


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dG9rLWlucXVpcnk="},
    {"Authorization": "bearer"}, {"Authorization": f"Bearer  {w.TOKENS['inquiry']}x"},
], ids=["none", "wrong-token", "other-scheme", "empty", "near-miss"])
def test_an_unauthorized_request_is_answered_alike(pair, headers):
    target = INQUIRIES[0]
    _same(pair, target, w.auth("inquiry"))  # a kept answer for this URL exists
    status, found, body = _same(pair, target, headers)
    assert status == 401 and json.loads(body)["code"] == "unauthorized"
    assert (b"www-authenticate", b'Bearer realm="coexist"') in found
    assert b"ratelimit" not in dict(found)


def test_another_consumer_never_gets_a_kept_answer_and_is_answered_alike(pair):
    _same(pair, INQUIRIES[0], w.auth("inquiry"))
    status, _, body = _same(pair, INQUIRIES[0], {**w.auth("partner"),
                                                 "X-Correlation-Id": "p-1"})
    assert status == 403 and json.loads(body)["code"] == "forbidden"
    status, _, _ = _same(pair, f"/v1/customers/{w.OTHER}/credit", w.auth("portal"))
    assert status == 403


def test_over_budget_the_429_is_answered_alike_warm_or_not(pair):
    target = INQUIRIES[0]
    answers = [_same(pair, target, {"Authorization": f"Bearer {BURSTY}",
                                    "X-Correlation-Id": f"b-{i}"}) for i in range(5)]
    assert [a[0] for a in answers] == [200, 200, 200, 429, 429]
    status, headers, body = answers[3]
    assert dict(headers)[b"retry-after"] == b"2"
    assert json.loads(body)["correlation_id"] == "b-3"
    pair.clock.now += 2.0  # one token back: the next one is served warm again
    assert _same(pair, target, {"Authorization": f"Bearer {BURSTY}"})[0] == 200
    assert _same(pair, target, {"Authorization": f"Bearer {BURSTY}"})[0] == 429


@pytest.mark.parametrize("target,status", [
    ("/v1/customers/99999/credit", 404),
    ("/v1/orders/999999", 404),
    (f"/v1/prices?customer={w.ACCOUNT}&sku=NOPE-1&qty=1", 404),
    (f"/v1/prices?customer={w.ACCOUNT}&sku={w.SKU}&qty=abc", 422),
    (f"/v1/prices?customer={w.ACCOUNT}&sku={w.SKU}&qty=0", 422),
    (f"/v1/prices?customer={w.ACCOUNT}&qty=2", 422),
    ("/v1/customers/bad%20key/credit", 422),
    (f"/v1/availability?sku={w.SKU}&warehouse=W%2001", 422),
    ("/v1/nowhere", 404),
])
def test_unknown_and_bad_requests_are_answered_alike_and_never_kept(pair, target, status):
    for cid in ({"X-Correlation-Id": "e-1"}, {}, {"X-Correlation-Id": "e-2"}):
        got = _same(pair, target, {**w.auth("inquiry"), **cid})
        assert got[0] == status
    assert _warm_hits(pair) == 0


def test_a_flag_switch_is_answered_alike_by_the_new_sor(pair):
    target = INQUIRIES[0]
    _same(pair, target, w.auth("inquiry"))
    _same(pair, target, w.auth("inquiry"))
    for domain in ("customer", "order", "invoice"):
        w.set_mode(pair.flags, domain, "cloud")
    status, _, body = _same(pair, target, w.auth("inquiry"))
    assert status == 200 and json.loads(body)["data"]["credit_limit"] == "2000.00"
    assert json.loads(_same(pair, target, w.auth("inquiry"))[2])["meta"]["cached"] is True


def test_past_its_reads_age_the_answer_is_made_again_alike(pair):
    target = INQUIRIES[0]
    _same(pair, target, w.auth("inquiry"))
    pair.clock.now += 10.5  # past the read cache's TTL (10 s)
    status, _, body = _same(pair, target, w.auth("inquiry"))
    assert status == 200 and json.loads(body)["meta"]["cached"] is False


@given(st.one_of(
    st.floats(min_value=0.0, max_value=1e7, allow_nan=False),
    # Right at and beside the half milliseconds, where rounding ties are decided.
    st.integers(min_value=0, max_value=10**8).map(lambda m: (m + 0.5) / 1000),
    st.tuples(st.integers(min_value=0, max_value=10**8), st.integers(-3, 3)).map(
        lambda t: math.nextafter((t[0] + 0.5) / 1000, math.inf if t[1] > 0 else 0.0))))
@settings(max_examples=3000, deadline=None)
def test_a_spliced_age_is_what_round_and_json_dumps_give(age_s):
    from workers.api.edge import age_of

    rounded = round(age_s, 3)
    assert age_of(age_s) == (rounded, json.dumps(rounded).encode())
    assert b"%d" % age_of(age_s)[0] == str(int(rounded)).encode()

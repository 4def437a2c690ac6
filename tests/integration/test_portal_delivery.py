"""Webhook delivery against a real HTTP receiver on loopback (uvicorn in a thread).

Every delivery is verified with the independent ``standardwebhooks`` package.
Schedules are asserted on the times the dispatcher computed (it takes ``now``),
never on sleeps.
"""

from __future__ import annotations

import json
import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook

from bus.envelope import new_envelope
from bus.exception_store import ExceptionStore
from tests.support import records as r
from tests.support.receiver import serving, step
from workers.db import create_state_engine
from workers.migrate import upgrade as upgrade_schema
from workers.portal import delivery as d
from workers.portal.endpoints import EndpointRegistry
from workers.portal.events import publish
from workers.portal.store import ATTEMPT, DELIVERY

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def receiver():
    with serving() as rec:
        yield rec


@pytest.fixture
def env(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    registry = EndpointRegistry(engine)
    exceptions = ExceptionStore(engine)
    dispatcher = d.Dispatcher(engine, registry, exceptions, timeout_s=1.0,
                              rng=random.Random(7))
    yield engine, registry, exceptions, dispatcher
    dispatcher.close()
    engine.dispose()


def _event(record, version: int, flag_version: int = 1):
    return new_envelope(domain=record.domain, kind="event", key=record.key,
                        payload={"record": record.model_dump(mode="json")},
                        source_system="legacy", source_version=version,
                        flag_version=flag_version)


def _add(registry, url, customer="C1", **kw):
    return registry.add(customer, url, actor="ops", reason="test", **kw)


def _queue(engine, registry, *records, version=1):
    return publish([_event(x, version) for x in records], engine=engine, registry=registry,
                   order_owner=lambda k: None, now=T0)


def _attempts(engine):
    with engine.connect() as conn:
        return conn.execute(select(ATTEMPT).order_by(ATTEMPT.c.id)).all()


def _verify(secret, request):
    return Webhook(secret).verify(request.body, request.headers)


def test_a_delivery_is_signed_per_standard_webhooks_and_carries_the_scoped_record(env, receiver):
    engine, registry, _, dispatcher = env
    endpoint, secret = _add(registry, receiver.script("/ok", [200]))
    _queue(engine, registry, r.order("O1", "C1"))
    assert step(dispatcher, T0) == 1
    [req] = receiver.at("/ok")
    payload = _verify(secret, req)
    assert payload["type"] == "order.status_changed"
    assert payload["schema_version"] == 1
    assert payload["data"]["record"]["key"] == "O1"
    assert payload["data"]["version"] == (1 << 40) | 1
    assert req.headers["webhook-id"].startswith("msg_")
    assert req.headers["x-correlation-id"]
    [attempt] = _attempts(engine)
    assert (attempt.outcome, attempt.status_code, attempt.attempt_no) == ("delivered", 200, 1)


def test_during_a_rotation_both_secrets_verify_and_after_the_overlap_only_the_new(env, receiver):
    engine, registry, _, dispatcher = env
    endpoint, old = _add(registry, receiver.script("/rot", [200]))
    new = registry.rotate_secret(endpoint.id, actor="ops", reason="yearly rotation")
    _queue(engine, registry, r.order("O1", "C1"))
    step(dispatcher, T0)
    [req] = receiver.at("/rot")
    assert len(req.headers["webhook-signature"].split(" ")) == 2
    assert _verify(old, req) and _verify(new, req)
    newest = registry.rotate_secret(endpoint.id, actor="ops", reason="leaked", overlap_s=0)
    assert registry.secrets(endpoint.id) == [newest]
    assert [a.action for a in registry.history(endpoint.id)] == [
        "rotate-secret", "rotate-secret", "add"]


def test_failures_are_retried_on_the_schedule_with_jitter_and_the_id_stays_the_same(
        env, receiver):
    engine, registry, _, dispatcher = env
    _, secret = _add(registry, receiver.script("/flaky", [500, 502, 200]))
    _queue(engine, registry, r.order("O1", "C1"))
    now = T0
    for _ in range(3):
        step(dispatcher, now)
        with engine.connect() as conn:
            now = conn.execute(select(DELIVERY.c.next_attempt_at)).scalar_one()
            now = now.replace(tzinfo=UTC)
    attempts = _attempts(engine)
    assert [a.outcome for a in attempts] == ["retry", "retry", "delivered"]
    gaps = [(a.next_attempt_at.replace(tzinfo=UTC) - a.at.replace(tzinfo=UTC)).total_seconds()
            for a in attempts[:2]]
    assert 5 * 0.8 <= gaps[0] <= 5 * 1.2 and 300 * 0.8 <= gaps[1] <= 300 * 1.2
    ids = {req.headers["webhook-id"] for req in receiver.at("/flaky")}
    assert len(ids) == 1
    for req in receiver.at("/flaky"):
        _verify(secret, req)


def test_nothing_is_attempted_before_it_is_due(env, receiver):
    engine, registry, _, dispatcher = env
    _add(registry, receiver.script("/later", [500, 200]))
    _queue(engine, registry, r.order("O1", "C1"))
    step(dispatcher, T0)
    assert step(dispatcher, T0 + timedelta(seconds=3)) == 0
    assert len(receiver.at("/later")) == 1


def test_429_and_503_retry_after_is_honoured_when_longer_than_the_schedule(env, receiver):
    engine, registry, _, dispatcher = env
    _add(registry, receiver.script("/busy", [(429, {"Retry-After": "120"}),
                                             (503, {"Retry-After": "3600"}), 200]))
    _queue(engine, registry, r.order("O1", "C1"))
    step(dispatcher, T0)
    step(dispatcher, T0 + timedelta(seconds=120))
    step(dispatcher, T0 + timedelta(seconds=120 + 3600))
    a = _attempts(engine)
    assert [x.status_code for x in a] == [429, 503, 200]
    gaps = [(x.next_attempt_at - x.at).total_seconds() for x in a[:2]]
    assert gaps == [120.0, 3600.0]


def test_a_receiver_that_hangs_times_out_and_is_retried(env, receiver):
    engine, registry, _, dispatcher = env
    _add(registry, receiver.script("/hang", ["hang"]))
    _queue(engine, registry, r.order("O1", "C1"))
    step(dispatcher, T0)
    [a] = _attempts(engine)
    assert (a.outcome, a.status_code, a.error) == ("retry", None, "timeout after 1 s")


def test_410_disables_the_endpoint_audited_and_its_messages_go_to_the_exception_store(
        env, receiver):
    engine, registry, exceptions, dispatcher = env
    endpoint, _ = _add(registry, receiver.script("/gone", [410]))
    _queue(engine, registry, r.order("O1", "C1"))
    _queue(engine, registry, r.order("O2", "C1"))
    dispatcher.per_endpoint = 1
    step(dispatcher, T0)
    assert not registry.get(endpoint.id).active
    assert registry.history(endpoint.id)[0].action == "auto-disable"
    records = exceptions.list()
    assert sorted(x.error_type for x in records) == ["WebhookEndpointDisabled",
                                                     "WebhookEndpointGone"]
    assert step(dispatcher, T0 + timedelta(hours=1)) == 0
    [notice] = d.notices(engine)
    assert (notice.state, notice.failed_deliveries) == ("disabled", 2)


def test_after_the_last_attempt_the_message_is_dead_lettered_and_a_replay_delivers_it(
        env, receiver):
    engine, registry, exceptions, dispatcher = env
    _, secret = _add(registry, receiver.script("/dead", [500] * 8 + [200]))
    _queue(engine, registry, r.order("O1", "C1"))
    now = T0
    for _ in range(8):
        step(dispatcher, now)
        with engine.connect() as conn:
            now = conn.execute(select(DELIVERY.c.next_attempt_at)).scalar_one().replace(
                tzinfo=UTC)
    assert [a.outcome for a in _attempts(engine)] == ["retry"] * 7 + ["failed"]
    [record] = exceptions.list()
    assert (record.error_type, record.failure_class, record.attempts) == (
        "WebhookDeliveryFailed", "technical", 8)
    message = record.message_dict()
    assert (message["actor_name"], message["queue_name"]) == (d.REDELIVER_ACTOR,
                                                               d.REDELIVER_QUEUE)
    # What the portal_redeliver actor runs when `coexist dlq replay` sends the message back.
    assert d.redeliver(message["args"][0]["payload"], engine, registry, now=now) == "rescheduled"
    step(dispatcher, now)
    assert _attempts(engine)[-1].outcome == "delivered"
    first, last = receiver.at("/dead")[0], receiver.at("/dead")[-1]
    assert first.headers["webhook-id"] == last.headers["webhook-id"]
    _verify(secret, last)


def test_an_endpoint_failing_for_days_is_disabled_with_an_operator_notice(env, receiver):
    engine, registry, exceptions, dispatcher = env
    endpoint, _ = _add(registry, receiver.script("/down", [503]))
    for day in range(7):
        _queue(engine, registry, r.order("O1", "C1", customer_po=f"PO-{day}"), version=day + 1)
        step(dispatcher, T0 + timedelta(days=day))
        if not registry.get(endpoint.id).active:
            break
    assert day == 5
    [notice] = d.notices(engine)
    assert notice.state == "disabled" and "5 days" in notice.detail
    assert registry.history(endpoint.id)[0].action == "auto-disable"
    assert {x.error_type for x in exceptions.list()} == {"WebhookEndpointDisabled"}


def test_a_failing_endpoint_shows_as_failing_until_a_success(env, receiver):
    engine, registry, _, dispatcher = env
    _add(registry, receiver.script("/wobbly", [500, 200]))
    _queue(engine, registry, r.order("O1", "C1"))
    step(dispatcher, T0)
    assert [n.state for n in d.notices(engine)] == ["failing"]
    step(dispatcher, T0 + timedelta(minutes=1))
    assert d.notices(engine) == []


def test_a_slow_endpoint_never_delays_the_others(env, receiver):
    engine, registry, _, dispatcher = env
    _add(registry, receiver.script("/slow", ["hang"]), customer="C1")
    _add(registry, receiver.script("/fast", [200]), customer="C2")
    dispatcher.timeout_s = 30.0
    dispatcher.http.timeout = 30.0
    orders = [r.order(f"A{i}", "C1") for i in range(6)] + [r.order(f"B{i}", "C2")
                                                            for i in range(6)]
    _queue(engine, registry, *orders)
    dispatcher.run_once(T0)
    # The slow lane holds its two threads; the fast lane goes on, claim after claim.
    for _ in range(10):
        if len(receiver.at("/fast")) >= 6:
            break
        receiver.wait_for("/fast", len(receiver.at("/fast")) + 1, 5)
        dispatcher.run_once(T0)
    assert len(receiver.at("/fast")) == 6
    assert receiver.wait_for("/slow", 2, 5)
    assert len(receiver.at("/slow")) == 2 and dispatcher.in_flight(1) == 2
    receiver.release()
    assert dispatcher.wait(10)


class CountingWaits(threading.Event):
    """An event whose ``wait`` counts how many attempts were in flight at each call and
    never sleeps longer than ``cap_s`` (so a loop that sleeps wrongly is seen, not waited
    out); ``entered`` is set at the first call."""

    def __init__(self, dispatcher, entered: threading.Event,
                 cap_s: float | None = None) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.cap_s = cap_s
        self.in_flight_at_wait: list[int] = []
        self.entered = entered

    def wait(self, timeout=None):
        self.in_flight_at_wait.append(sum(self.dispatcher._in_flight.values()))
        self.entered.set()
        if self.cap_s is not None:
            timeout = self.cap_s if timeout is None else min(timeout, self.cap_s)
        return super().wait(timeout)


def test_a_full_lane_claims_its_next_message_when_a_slot_frees_not_after_the_poll_interval(
        env, receiver):
    """One endpoint, two lane slots, three messages: the third is claimed when one of the
    first two finishes.  Counted, not timed: while attempts are in flight, the loop waits on
    "an attempt finished" and never sleeps its poll interval (it did, which held one
    endpoint near per_endpoint / poll_s = 10 deliveries a second with 14 threads idle)."""
    engine, registry, _, dispatcher = env
    endpoint, _ = _add(registry, receiver.script("/lane", ["hang"]))
    dispatcher.timeout_s = 30.0
    dispatcher.http.timeout = 30.0
    _queue(engine, registry, *(r.order(f"O{i}", "C1") for i in range(3)))
    idle = threading.Event()  # set when the loop first waits, either way
    stop = CountingWaits(dispatcher, idle, cap_s=0.05)
    freed = dispatcher._freed = CountingWaits(dispatcher, idle)
    loop = threading.Thread(target=dispatcher.run_forever, args=(stop,),
                            kwargs={"poll_s": 60.0}, daemon=True)
    loop.start()
    try:
        assert receiver.wait_for("/lane", 2, 10)
        # The loop found nothing it may claim (the lane is full) and chose how to wait.
        assert idle.wait(10)
        assert dispatcher.in_flight(endpoint.id) == 2
        receiver.release()
        assert receiver.wait_for("/lane", 3, 10)
    finally:
        receiver.release()
        stop.set()
        loop.join(30)
    assert not loop.is_alive()
    poll_sleeps_while_busy = [n for n in stop.in_flight_at_wait if n > 0]
    assert poll_sleeps_while_busy == []
    assert freed.in_flight_at_wait and freed.in_flight_at_wait[0] == 2
    with engine.connect() as conn:
        assert set(conn.execute(select(DELIVERY.c.status)).scalars()) == {"delivered"}


def test_payload_of_a_record_the_endpoint_may_not_see_is_never_queued(env, receiver):
    engine, registry, _, dispatcher = env
    _add(registry, receiver.script("/mine", [200]), customer="C1")
    _queue(engine, registry, r.order("O9", "C9"), r.price("P9", "C9", "WID-1"))
    assert step(dispatcher, T0) == 0
    _queue(engine, registry, r.product("WID-1"))
    assert step(dispatcher, T0) == 0  # products are not a portal event
    body = json.dumps([x.body for x in receiver.requests])
    assert "C9" not in body


def test_a_lane_slot_takes_several_messages_and_records_them_in_one_commit(env, receiver):
    """With ``batch`` 8, one claim round gives one endpoint's two lane slots 8 messages
    each: 16 deliveries from one round (with 1 each it was 2 a round), the successes of a
    slot committed together (2 commits of successes, not 16)."""
    engine, registry, _, dispatcher = env
    dispatcher.batch = 8
    _, secret = _add(registry, receiver.script("/many", [200]))
    _queue(engine, registry, *(r.order(f"O{i}", "C1") for i in range(20)))
    commits = []
    original = dispatcher._record_delivered_all
    dispatcher._record_delivered_all = lambda e: (commits.append(len(e)), original(e))[1]
    assert step(dispatcher, T0) == 16
    assert sorted(commits) == [8, 8] and dispatcher.in_flight(1) == 0
    assert len(receiver.at("/many")) == 16
    assert all(_verify(secret, q) for q in receiver.at("/many"))
    assert step(dispatcher, T0) == 4
    with engine.connect() as conn:
        assert set(conn.execute(select(DELIVERY.c.status)).scalars()) == {"delivered"}
    assert [a.outcome for a in _attempts(engine)] == ["delivered"] * 20


def test_a_slot_stops_at_its_first_failure_and_gives_the_rest_back_unattempted(
        env, receiver):
    engine, registry, _, dispatcher = env
    dispatcher.batch, dispatcher.per_endpoint = 8, 1
    _add(registry, receiver.script("/third", [200, 200, 500, 200]))
    _queue(engine, registry, *(r.order(f"O{i}", "C1") for i in range(6)))
    assert step(dispatcher, T0) == 6  # claimed
    assert len(receiver.at("/third")) == 3
    # (the slot's successes are committed at its end, after the retry)
    assert sorted(a.outcome for a in _attempts(engine)) == ["delivered", "delivered", "retry"]
    with engine.connect() as conn:
        rows = conn.execute(select(DELIVERY).order_by(DELIVERY.c.id)).all()
    assert [x.status for x in rows] == ["delivered"] * 2 + ["pending"] * 4
    assert [x.attempts for x in rows] == [1, 1, 1, 0, 0, 0]
    assert all(x.lease_until is None for x in rows[2:])
    # The three given back are claimable at once; the failed one waits for its retry.
    assert step(dispatcher, T0) == 3
    assert len(receiver.at("/third")) == 6


def test_a_slot_that_would_outlive_its_lease_renews_it(env, receiver):
    engine, registry, _, dispatcher = env
    dispatcher.batch, dispatcher.per_endpoint = 4, 1
    wall = [T0.timestamp()]
    dispatcher.wall = lambda: wall[0]
    _add(registry, receiver.script("/slowish", [200]))
    _queue(engine, registry, *(r.order(f"O{i}", "C1") for i in range(3)))
    original = dispatcher.attempt

    def attempt(claim, now, **kw):  # each attempt "takes" most of a lease
        wall[0] += dispatcher.timeout_s + dispatcher.lease_margin_s - 0.5
        return original(claim, now, **kw)

    dispatcher.attempt = attempt
    renewed = []
    original_renew = dispatcher._renew
    dispatcher._renew = lambda claims: (renewed.append(len(claims)),
                                        original_renew(claims))[1]
    assert step(dispatcher, T0) == 3
    assert renewed == [2, 1]
    assert [a.outcome for a in _attempts(engine)] == ["delivered"] * 3

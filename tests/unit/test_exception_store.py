"""The exception store: record, group, list, archive and replay failed messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bus.db import create_state_engine
from bus.envelope import new_envelope, to_message_arg
from bus.errors import BusinessError
from bus.exception_store import ExceptionStore, call_site, group_key, reset_for_replay
from workers.migrate import upgrade as upgrade_schema


@pytest.fixture
def store(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    yield ExceptionStore(engine)
    engine.dispose()


def message_for(key="C001", domain="customer", **options):
    env = new_envelope(domain=domain, kind="upserted", key=key, payload={"k": key},
                       source_system="legacy", source_version=1)
    return env, {
        "queue_name": "crm.DQ", "actor_name": "sync_crm", "args": [to_message_arg(env)],
        "kwargs": {}, "options": {"retries": 5, "traceback": "Traceback...", "eta": 1,
                                  "max_retries": 9, **options},
        "message_id": env.message_id, "message_timestamp": 0,
    }


def record(store, key="C001", domain="customer", error_type="UnknownRecord",
           site="workers.crm.apply", failure_class="business", attempts=1, failed_at=None):
    env, message = message_for(key, domain)
    rid = store.record(
        failure_class=failure_class, queue_name="crm", actor_name="sync_crm",
        message_id=env.message_id, envelope=env, raw=None, message=message,
        error_type=error_type, error_message=f"unknown customer {key}", call_site=site,
        attempts=attempts, failed_at=failed_at)
    return rid, env, message


class FakeQueue:
    def __init__(self, fail_on: set[str] | None = None) -> None:
        self.messages: list[dict] = []
        self.fail_on = fail_on or set()

    def __call__(self, message: dict) -> None:
        if message["args"][0]["key"] in self.fail_on:
            raise ConnectionError("broker down")
        self.messages.append(message)


def test_a_failure_is_recorded_with_its_envelope_class_error_and_call_site(store):
    rid, env, message = record(store)
    rec = store.get(rid)
    assert rec.domain == "customer" and rec.key == "C001"
    assert rec.failure_class == "business" and rec.status == "open"
    assert rec.error_type == "UnknownRecord" and rec.call_site == "workers.crm.apply"
    assert rec.envelope_dict()["message_id"] == env.message_id
    assert rec.message_dict() == message
    assert rec.first_failed_at == rec.last_failed_at
    assert rec.correlation_id == env.correlation_id
    assert [r.id for r in store.list(correlation_id=env.correlation_id)] == [rid]
    assert store.get(rid + 100) is None


WHO = {"actor": "ops", "reason": "handled"}


def test_the_same_message_failing_again_updates_its_record_instead_of_duplicating(store):
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    env, message = message_for()
    common = dict(queue_name="crm", actor_name="sync_crm", message_id=env.message_id,
                  envelope=env, raw=None, message=message, error_type="Timeout",
                  error_message="timed out", call_site="workers.crm.apply")
    first = store.record(failure_class="technical", attempts=3, failed_at=t0, **common)
    store.archive([first], **WHO)
    again = store.record(failure_class="technical", attempts=6,
                         failed_at=t0 + timedelta(hours=1), **common)
    assert again == first
    rec = store.get(first)
    assert rec.attempts == 6 and rec.status == "open"
    assert rec.first_failed_at.replace(tzinfo=UTC) == t0
    assert rec.last_failed_at.replace(tzinfo=UTC) == t0 + timedelta(hours=1)
    assert len(store.list(status=None)) == 1


def test_a_replayed_message_failing_again_reopens_its_record_and_adds_up_attempts(store):
    rid, env, message = record(store, attempts=3)
    store.replay([rid], enqueue=FakeQueue(), **WHO)
    again = store.record(failure_class="business", queue_name="crm", actor_name="sync_crm",
                         message_id=env.message_id, envelope=env, raw=None, message=message,
                         error_type="UnknownRecord", error_message="still unknown",
                         call_site="workers.crm.apply", attempts=1)
    rec = store.get(again)
    assert again == rid
    assert rec.status == "open" and rec.attempts == 4 and rec.replay_count == 1
    assert rec.error_message == "still unknown"


def test_undecodable_input_keeps_its_raw_bytes(store):
    rid = store.record(failure_class="undecodable", queue_name="crm", actor_name="sync_crm",
                       message_id=None, envelope=None, raw=b"\xff{not json", message=None,
                       error_type="MessageDecodeError", error_message="not UTF-8 at byte 0",
                       call_site="bus.envelope.decode", attempts=1)
    assert store.get(rid).raw == b"\xff{not json"
    assert store.get(rid).domain is None


def test_an_unknown_failure_class_is_refused(store):
    with pytest.raises(ValueError, match="failure_class"):
        store.record(failure_class="oops", queue_name="q", actor_name="a", message_id="m",
                     envelope=None, raw=None, message=None, error_type="E",
                     error_message="", call_site="x", attempts=1)


def test_failures_are_grouped_by_error_type_and_call_site(store):
    for key in ("C1", "C2", "C3"):
        record(store, key=key)
    record(store, key="P1", domain="product")
    record(store, key="C9", error_type="Timeout", failure_class="technical")
    groups = store.groups()
    assert [(g.error_type, g.count) for g in groups] == [("UnknownRecord", 4), ("Timeout", 1)]
    assert groups[0].domains == ("customer", "product")
    assert groups[0].group == group_key("UnknownRecord", "workers.crm.apply")
    assert [g.count for g in store.groups(domain="product")] == [1]


def test_list_filters_by_status_domain_and_group(store):
    a, _, _ = record(store, key="C1")
    b, _, _ = record(store, key="P1", domain="product")
    c, _, _ = record(store, key="C2", error_type="Timeout")
    store.archive([c], **WHO)
    assert {r.id for r in store.list()} == {a, b}
    assert [r.id for r in store.list(domain="product")] == [b]
    assert [r.id for r in store.list(status="archived")] == [c]
    assert {r.id for r in store.list(group=group_key("UnknownRecord", "workers.crm.apply"))} \
        == {a, b}
    assert store.open_count() == 2 and store.open_count("customer") == 1


def test_archive_by_group_touches_only_open_records_of_that_group(store):
    a, _, _ = record(store, key="C1")
    b, _, _ = record(store, key="C2")
    other, _, _ = record(store, key="C3", error_type="Timeout")
    assert store.archive(group=group_key("UnknownRecord", "workers.crm.apply"), **WHO) == 2
    assert store.get(a).status == store.get(b).status == "archived"
    assert store.get(other).status == "open"


def test_replay_resets_retry_counters_and_goes_back_to_the_base_queue(store):
    rid, env, _ = record(store)
    queue = FakeQueue()
    result = store.replay([rid], enqueue=queue, **WHO)
    assert result.replayed == [rid]
    (sent,) = queue.messages
    assert sent["queue_name"] == "crm"
    assert sent["options"]["retries"] == 0
    assert "traceback" not in sent["options"] and "eta" not in sent["options"]
    assert sent["options"]["max_retries"] == 9
    assert sent["options"]["coexist_replay_of"] == rid
    assert sent["args"][0]["message_id"] == env.message_id
    rec = store.get(rid)
    assert rec.status == "replayed" and rec.replay_count == 1


def test_a_dry_run_replays_nothing(store):
    rid, _, _ = record(store)
    queue = FakeQueue()
    result = store.replay([rid], enqueue=queue, dry_run=True, **WHO)
    assert result.replayed == [rid] and result.dry_run
    assert queue.messages == [] and store.get(rid).status == "open"


def test_a_failed_enqueue_leaves_the_record_open_to_try_again(store):
    ok, _, _ = record(store, key="C1")
    bad, _, _ = record(store, key="C2")
    result = store.replay(group=group_key("UnknownRecord", "workers.crm.apply"),
                          enqueue=FakeQueue(fail_on={"C2"}), **WHO)
    assert result.replayed == [ok]
    assert result.failed == [(bad, "ConnectionError: broker down")]
    assert store.get(bad).status == "open"
    assert store.get(ok).status == "replayed"


def test_replay_skips_unknown_ids_and_records_without_a_message(store):
    raw_only = store.record(failure_class="undecodable", queue_name="crm",
                            actor_name="sync_crm", message_id=None, envelope=None,
                            raw=b"garbage", message=None, error_type="MessageDecodeError",
                            error_message="not JSON", call_site="bus.envelope.decode",
                            attempts=1)
    result = store.replay([raw_only, 999], enqueue=FakeQueue(), **WHO)
    reasons = dict(result.skipped)
    assert reasons[999] == "no such record"
    assert "only raw bytes" in reasons[raw_only]
    assert result.replayed == []


def test_replay_and_archive_need_ids_or_a_group(store):
    with pytest.raises(ValueError):
        store.replay(enqueue=FakeQueue(), **WHO)
    with pytest.raises(ValueError):
        store.archive([1], group="abc", **WHO)


def test_reset_for_replay_leaves_the_stored_message_untouched():
    _, message = message_for()
    out = reset_for_replay(message, 7)
    assert message["options"]["retries"] == 5 and out["options"]["retries"] == 0


def _failing_handler():
    raise BusinessError("unknown customer")


def test_the_call_site_is_the_innermost_frame_in_our_code_without_line_numbers():
    try:
        _failing_handler()
    except BusinessError as exc:
        site = call_site(exc)
    assert site == "tests.unit.test_exception_store._failing_handler"
    assert call_site(BusinessError("never raised")) == "<unknown>"


def test_archive_and_replay_are_audited_with_actor_and_reason(store):
    a, _, _ = record(store, key="C1")
    b, _, _ = record(store, key="C2")
    store.archive([a], actor="maria", reason="fixed the customer by hand")
    store.replay([b], enqueue=FakeQueue(), actor="joe", reason="bug 42 deployed")
    [archived] = store.actions(a)
    assert (archived["action"], archived["actor"], archived["reason"]) == (
        "archive", "maria", "fixed the customer by hand")
    [replayed] = store.actions(b)
    assert (replayed["action"], replayed["actor"]) == ("replay", "joe")
    with pytest.raises(ValueError, match="actor and a reason"):
        store.archive([b], actor="joe", reason=" ")


def test_an_archived_record_is_never_replayed_not_even_by_id(store):
    rid, _, _ = record(store)
    store.archive([rid], **WHO)
    queue = FakeQueue()
    result = store.replay([rid], enqueue=queue, **WHO)
    assert result.replayed == [] and queue.messages == []
    assert result.skipped == [(rid, "archived (handled by hand): never replayed")]
    assert store.get(rid).status == "archived"

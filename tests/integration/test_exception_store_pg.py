"""The exception store's behaviour on real PostgreSQL: the same tests as on SQLite."""

from __future__ import annotations

import threading

import pytest

from bus.db import create_state_engine
from bus.exception_store import ExceptionStore
from tests.unit.test_exception_store import (  # noqa: F401 - collected here against PostgreSQL
    message_for,
    test_a_dry_run_replays_nothing,
    test_a_failed_enqueue_leaves_the_record_open_to_try_again,
    test_a_failure_is_recorded_with_its_envelope_class_error_and_call_site,
    test_a_replayed_message_failing_again_reopens_its_record_and_adds_up_attempts,
    test_archive_by_group_touches_only_open_records_of_that_group,
    test_failures_are_grouped_by_error_type_and_call_site,
    test_list_filters_by_status_domain_and_group,
    test_replay_resets_retry_counters_and_goes_back_to_the_base_queue,
    test_replay_skips_unknown_ids_and_records_without_a_message,
    test_the_same_message_failing_again_updates_its_record_instead_of_duplicating,
    test_undecodable_input_keeps_its_raw_bytes,
)
from workers.migrate import upgrade as upgrade_schema

pytestmark = pytest.mark.integration


@pytest.fixture
def store(pg_url):
    engine = create_state_engine(pg_url, pool_size=10)
    upgrade_schema(engine)
    yield ExceptionStore(engine)
    engine.dispose()


def test_concurrent_first_records_of_one_message_make_one_record(store):
    env, message = message_for()
    start = threading.Barrier(8)
    ids: list[int] = []

    def record(attempts: int) -> None:
        start.wait(5)
        ids.append(store.record(
            failure_class="technical", queue_name="crm", actor_name="sync_crm",
            message_id=env.message_id, envelope=env, raw=None, message=message,
            error_type="Timeout", error_message="timed out", call_site="workers.crm.apply",
            attempts=attempts))

    threads = [threading.Thread(target=record, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(set(ids)) == 1 and len(ids) == 8
    assert len(store.list(status=None)) == 1

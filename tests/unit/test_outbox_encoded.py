"""An outbox row's message bytes, put together from its stored envelope text."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from bus.envelope import encode, new_envelope
from bus.outbox import OutboxRow


def _row(payload: dict, key: str = "C001", queue: str = "coexist.write.cloud") -> OutboxRow:
    env = new_envelope(domain="customer", kind="upserted", key=key, payload=payload,
                       source_system="legacy", source_version=7)
    return OutboxRow(id=1, message_id=env.message_id, queue_name=queue,
                     actor_name="write_cloud", domain="customer", partition_key=key,
                     payload=encode(env).decode(), created_at=datetime.now(UTC), attempts=0)


def _without_timestamp(raw: bytes) -> dict:
    data = json.loads(raw)
    assert isinstance(data.pop("message_timestamp"), int)
    return data


def test_the_encoded_row_decodes_to_what_its_dramatiq_message_encodes():
    row = _row({"record": {"name": "Ünïcode \"quoted\" \\ name", "lines": [1, 2.5, None]}})
    fast, slow = row.encoded(), row.to_message().encode()
    assert _without_timestamp(fast) == _without_timestamp(slow)
    assert json.loads(fast)["args"][0] == json.loads(row.payload)
    assert json.loads(fast)["message_id"] == row.message_id


@settings(max_examples=60, deadline=None)
@given(payload=st.dictionaries(st.text(), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8), max_size=4), key=st.text(min_size=1, max_size=20),
    queue=st.text(min_size=1, max_size=30))
def test_any_envelope_key_and_queue_name_survive_the_encoding(payload, key, queue):
    row = _row(payload, key=key, queue=queue)
    assert _without_timestamp(row.encoded()) == _without_timestamp(row.to_message().encode())

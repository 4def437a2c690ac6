"""The envelope: round trips, ids from the correlation context, bad input, upcasting."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from dramatiq import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import context, envelope
from bus.envelope import (
    MAX_ENVELOPE_BYTES,
    Envelope,
    EnvelopeTooLarge,
    decode,
    encode,
    envelope_from_message,
    new_envelope,
    register_payload_upcaster,
    to_message_arg,
)
from bus.errors import BusinessError, MessageDecodeError


def make(**overrides) -> Envelope:
    fields = dict(
        domain="customer",
        kind="upserted",
        key="C001",
        payload={"name": "Acme"},
        source_system="legacy",
        source_version=7,
        schema_version=2,
        flag_version=3,
    )
    fields.update(overrides)
    return new_envelope(**fields)


@pytest.fixture(autouse=True)
def _no_upcaster():
    previous = register_payload_upcaster(None)
    yield
    register_payload_upcaster(previous)


def test_an_envelope_survives_encode_and_decode_unchanged():
    env = make()
    assert decode(encode(env)) == env


def test_an_envelope_survives_the_trip_through_a_dramatiq_message():
    env = make()
    message = Message(queue_name="q", actor_name="a", args=(to_message_arg(env),), kwargs={},
                      options={})
    wire = Message.decode(message.encode())
    assert envelope_from_message(wire) == env


def test_a_first_cause_starts_its_own_correlation():
    env = make()
    assert env.correlation_id == env.message_id
    assert env.causation_id is None


def test_a_message_made_while_handling_another_inherits_its_correlation_and_names_its_cause():
    with context.correlation_scope(correlation="corr-1", message="parent-9"):
        env = make()
    assert env.correlation_id == "corr-1"
    assert env.causation_id == "parent-9"
    assert make().correlation_id != "corr-1"


def test_an_envelope_is_immutable():
    env = make()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        env.key = "other"  # type: ignore[misc]


def test_a_naive_timestamp_is_refused():
    with pytest.raises(Exception, match="timezone"):
        make(occurred_at=datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"envelope_version": 99}', "newer than this build"),
    ],
)
def test_undecodable_bytes_raise_a_business_error_naming_the_reason(raw, reason):
    with pytest.raises(MessageDecodeError, match=reason) as info:
        decode(raw)
    assert isinstance(info.value, BusinessError)
    assert info.value.raw == raw


def test_an_invalid_envelope_names_the_field_and_the_message():
    data = to_message_arg(make())
    data["source_version"] = "seven"
    raw = json.dumps(data).encode()
    with pytest.raises(MessageDecodeError, match=r"source_version='seven'") as info:
        decode(raw)
    assert data["message_id"] in str(info.value)


def test_a_missing_field_is_named():
    data = to_message_arg(make())
    del data["key"]
    with pytest.raises(MessageDecodeError, match="field key is missing"):
        decode(json.dumps(data).encode())


def test_an_unknown_field_is_refused_rather_than_dropped():
    data = to_message_arg(make())
    data["colour"] = "blue"
    with pytest.raises(MessageDecodeError, match="colour"):
        decode(json.dumps(data).encode())


def test_oversized_input_is_refused_before_parsing():
    raw = b" " * (MAX_ENVELOPE_BYTES + 1)
    with pytest.raises(MessageDecodeError, match="over the"):
        decode(raw)


def test_an_oversized_envelope_is_never_encoded():
    with pytest.raises(EnvelopeTooLarge):
        encode(make(payload={"blob": "x" * MAX_ENVELOPE_BYTES}))


def test_a_dramatiq_message_without_args_is_a_decode_error():
    message = Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    with pytest.raises(MessageDecodeError, match="carries no envelope"):
        envelope_from_message(message)


def test_the_registered_upcaster_brings_old_payloads_to_todays_schema():
    def upcast(domain, version, payload):
        if domain == "customer" and version == 1:
            return 2, {**payload, "currency": "USD"}
        return version, payload

    register_payload_upcaster(upcast)
    env = decode(encode(make(schema_version=1)))
    assert env.schema_version == 2
    assert env.payload == {"name": "Acme", "currency": "USD"}
    current = make(schema_version=2)
    assert decode(encode(current)) == current


def test_a_payload_that_cannot_be_upcast_is_a_decode_error():
    def upcast(domain, version, payload):
        raise ValueError(f"no upcaster from v{version}")

    register_payload_upcaster(upcast)
    with pytest.raises(MessageDecodeError, match="cannot be upcast: ValueError: no upcaster"):
        decode(encode(make()))


def test_the_envelope_format_version_is_carried():
    assert to_message_arg(make())["envelope_version"] == envelope.ENVELOPE_VERSION
    assert make().occurred_at.tzinfo is not None
    assert make(occurred_at=datetime(2026, 1, 1, tzinfo=UTC)).occurred_at.year == 2026


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=25, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
       key=st.text(min_size=1, max_size=40), source_version=st.integers(0, 2**62))
def test_any_json_payload_survives_encode_and_decode(payload, key, source_version):
    env = make(payload=payload, key=key, source_version=source_version)
    assert decode(encode(env)) == env


def test_message_ids_grow_with_time_so_their_indexes_are_appended_to(monkeypatch):
    """Version 7 UUIDs: a later millisecond sorts after, as text too (the indexes' order);
    unique within one millisecond."""
    import uuid

    clock = iter([1_800_000_000_000_000_000 + k * 1_000_000 for k in range(3) for _ in range(2)])
    monkeypatch.setattr(envelope.time, "time_ns", lambda: next(clock))
    ids = [envelope.new_message_id() for _ in range(6)]
    assert [uuid.UUID(i).version for i in ids] == [7] * 6
    assert all(uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert len(set(ids)) == 6
    assert max(ids[0:2]) < min(ids[2:4]) and max(ids[2:4]) < min(ids[4:6])
    assert int(ids[0].replace("-", "")[:12], 16) == 1_800_000_000_000

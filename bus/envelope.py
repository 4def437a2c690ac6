"""The one envelope every message on the bus travels in.

An envelope says what happened (domain, kind, key, payload), where it came from
(source system and version), under which cutover flag version it was routed,
and how it relates to other messages (correlation and causation ids).

dramatiq messages carry the envelope as a JSON dict in ``args[0]``
(``to_message_arg`` / ``envelope_from_message``).  Raw bytes are read with
``decode``, which never lets bad input crash a worker: anything undecodable,
invalid or oversized raises ``MessageDecodeError`` (a ``BusinessError``) with a
reason a person can act on, so the failure middleware records it in the
exception store together with the raw bytes.

Payload schemas evolve; the bus knows nothing of them.  The domain layer plugs
its upcaster in with ``register_payload_upcaster`` and every decoded envelope
then carries a payload of today's schema version.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from bus import context
from bus.errors import BusinessError, MessageDecodeError

#: Version of the envelope's own format (not of the payload).  Bump it, and
#: teach ``_upcast_envelope`` the step, when a field is added or changed.
ENVELOPE_VERSION = 1

#: Largest encoded envelope accepted or produced.  Bigger documents belong in
#: storage with a reference on the bus; RabbitMQ degrades well before its own limit.
MAX_ENVELOPE_BYTES = 1_048_576

#: Longest id (message, correlation, causation) we accept: ids are DB keys.
MAX_ID_CHARS = 128

Payload = dict[str, Any]
#: (domain, schema_version, payload) -> (new schema_version, new payload).
PayloadUpcaster = Callable[[str, int, Payload], tuple[int, Payload]]

_payload_upcaster: PayloadUpcaster | None = None


class EnvelopeTooLarge(BusinessError):
    """An envelope whose encoding exceeds ``MAX_ENVELOPE_BYTES``; it is never published."""


_Id = Field(min_length=1, max_length=MAX_ID_CHARS)


class Envelope(BaseModel):
    """One message on the bus.  Immutable; build with ``new_envelope``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    envelope_version: int = ENVELOPE_VERSION
    message_id: str = _Id
    correlation_id: str = _Id
    #: Id of the message whose handling produced this one; ``None`` for a first cause.
    causation_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    domain: str = Field(min_length=1, max_length=64)
    kind: str = Field(min_length=1, max_length=64)
    #: The canonical key; also the partition key that orders the outbox.
    key: str = Field(min_length=1, max_length=256)
    source_system: str = Field(min_length=1, max_length=64)
    source_version: int
    #: Schema version of the PAYLOAD (the envelope's own is ``envelope_version``).
    schema_version: int = Field(default=1, ge=1)
    #: Cutover flag version the message was routed under.
    flag_version: int = Field(default=0, ge=0)
    occurred_at: AwareDatetime
    payload: Payload


def new_message_id() -> str:
    """A UUID version 7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits.

    Message ids key b-tree indexes on every hop: the outbox's unique ``message_id`` and,
    through an envelope's default correlation id, ``ix_outbox_correlation_id``; each
    consumer's inbox primary key.  Ids that grow with time are inserted at the right
    edge of those indexes, in the few pages a burst already touched, where random ones
    (version 4) land on a different leaf page each, every one dirtied, split halfway and
    written in full to the WAL after each checkpoint.  Unique as version 4 is for any
    purpose here (74 random bits per millisecond); nothing reads the time back."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
             | 0b10 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF)
    return str(uuid.UUID(int=value))


def new_envelope(
    *,
    domain: str,
    kind: str,
    key: str,
    payload: Payload,
    source_system: str,
    source_version: int,
    schema_version: int = 1,
    flag_version: int = 0,
    occurred_at: datetime | None = None,
    message_id: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> Envelope:
    """A new envelope with fresh ids.

    While a message is being handled (the correlation context is set), the new
    envelope inherits its correlation id and names it as its cause.  Outside a
    handler the message starts a new correlation: its own id.
    """
    mid = message_id or new_message_id()
    return Envelope(
        message_id=mid,
        correlation_id=correlation_id or context.correlation_id.get() or mid,
        causation_id=causation_id or context.message_id.get(),
        domain=domain,
        kind=kind,
        key=key,
        source_system=source_system,
        source_version=source_version,
        schema_version=schema_version,
        flag_version=flag_version,
        occurred_at=occurred_at or datetime.now(UTC),
        payload=payload,
    )


def register_payload_upcaster(fn: PayloadUpcaster | None) -> PayloadUpcaster | None:
    """Install the function that brings payloads to today's schema; returns the previous one.

    Called once by the composition root (``None`` removes it).  The function may
    raise any exception for a payload it cannot upcast; ``decode`` turns that
    into a ``MessageDecodeError``.
    """
    global _payload_upcaster
    previous, _payload_upcaster = _payload_upcaster, fn
    return previous


def to_message_arg(env: Envelope) -> dict[str, Any]:
    """The JSON dict a dramatiq message carries as ``args[0]``."""
    return env.model_dump(mode="json")


def encode(env: Envelope) -> bytes:
    """UTF-8 JSON bytes; raises ``EnvelopeTooLarge`` beyond ``MAX_ENVELOPE_BYTES``."""
    raw = env.model_dump_json().encode()
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise EnvelopeTooLarge(
            f"envelope {env.message_id} ({env.domain} {env.key}) is {len(raw)} bytes, "
            f"over the {MAX_ENVELOPE_BYTES}-byte limit"
        )
    return raw


def decode(raw: bytes) -> Envelope:
    """Parse, validate and upcast raw bytes into an ``Envelope``.

    Raises ``MessageDecodeError`` whose ``reason`` says what is wrong and whose
    ``raw`` holds the input, for the exception store.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise _decode_error(f"expected bytes, got {type(raw).__name__}", None)
    raw = bytes(raw)
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise _decode_error(
            f"message is {len(raw)} bytes, over the {MAX_ENVELOPE_BYTES}-byte limit", raw
        )
    try:
        # Decode explicitly: json.loads(bytes) would guess UTF-16/32 from the first bytes.
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _decode_error(f"not UTF-8 at byte {exc.start}", raw) from None
    except json.JSONDecodeError as exc:
        raise _decode_error(
            f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", raw
        ) from None
    return from_dict(data, raw=raw)


def from_dict(data: Any, *, raw: bytes | None = None) -> Envelope:
    """Validate and upcast an already-parsed envelope dict (see ``decode``)."""
    if not isinstance(data, dict):
        raise _decode_error(f"envelope must be a JSON object, got {type(data).__name__}", raw)
    mid = data.get("message_id") if isinstance(data.get("message_id"), str) else None
    data = _upcast_envelope(data, raw, mid)
    try:
        env = Envelope.model_validate(data)
    except ValidationError as exc:
        raise _decode_error(_describe(exc), raw, mid) from None
    if _payload_upcaster is None:
        return env
    try:
        version, payload = _payload_upcaster(env.domain, env.schema_version, dict(env.payload))
    except Exception as exc:  # any failure to upcast is a fact about this message
        raise _decode_error(
            f"payload of {env.domain} {env.key} schema v{env.schema_version} cannot be upcast: "
            f"{type(exc).__name__}: {exc}",
            raw,
            mid,
        ) from exc
    if version == env.schema_version and payload == env.payload:
        return env
    return env.model_copy(update={"schema_version": int(version), "payload": payload})


def envelope_from_message(message: Any) -> Envelope:
    """The envelope carried in a dramatiq message's ``args[0]``."""
    args = getattr(message, "args", None)
    if not args:
        raise _decode_error(
            f"dramatiq message {getattr(message, 'message_id', '?')} carries no envelope "
            "(args is empty)",
            None,
        )
    return from_dict(args[0])


def _upcast_envelope(data: dict[str, Any], raw: bytes | None, mid: str | None) -> dict[str, Any]:
    version = data.get("envelope_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _decode_error(f"envelope_version={version!r} is not a positive integer", raw, mid)
    if version > ENVELOPE_VERSION:
        raise _decode_error(
            f"envelope_version {version} is newer than this build understands "
            f"({ENVELOPE_VERSION})",
            raw,
            mid,
        )
    # Version 1 is the first format; future steps go here as `if version == N: ...`.
    return data


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<envelope>"
        value = err.get("input")
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        if err["type"] == "missing":
            parts.append(f"field {loc} is missing")
        else:
            parts.append(f"field {loc}={shown}: {err['msg']}")
    more = exc.error_count() - len(parts)
    suffix = f" (and {more} more)" if more > 0 else ""
    return "invalid envelope: " + "; ".join(parts) + suffix


def _decode_error(reason: str, raw: bytes | None, mid: str | None = None) -> MessageDecodeError:
    where = f"message {mid}: " if mid else ""
    err = MessageDecodeError(f"{where}{reason}")
    err.reason = reason  # type: ignore[attr-defined]
    err.raw = raw  # type: ignore[attr-defined]
    err.message_id = mid  # type: ignore[attr-defined]
    return err

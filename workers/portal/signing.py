"""Standard Webhooks signatures (https://www.standardwebhooks.com).

A delivery carries three headers:

* ``webhook-id``: the message id, the same on every retry (receivers dedupe on it);
* ``webhook-timestamp``: integer seconds since the epoch of this attempt;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``,
  one per active secret separated by spaces, so a receiver holding the old or
  the new secret verifies during a rotation.

Secrets are ``whsec_`` + base64 of ``SECRET_BYTES`` random bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as _secrets
from collections.abc import Iterable

SECRET_PREFIX = "whsec_"
#: Random bytes in a new secret (the spec asks for 24 to 64).
SECRET_BYTES = 32


class BadSecret(ValueError):
    """A secret that is not ``whsec_`` + base64 of 24..64 bytes."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise BadSecret("a webhook secret starts with whsec_")
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except ValueError:
        raise BadSecret("a webhook secret is whsec_ + base64") from None
    if not 24 <= len(raw) <= 64:
        raise BadSecret(f"a webhook secret holds 24 to 64 bytes, not {len(raw)}")
    return raw


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``{id}.{timestamp}.{body}``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every active secret."""
    sigs = [signature(s, msg_id, timestamp, body) for s in secrets]
    if not sigs:
        raise BadSecret(f"message {msg_id}: no active secret to sign with")
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(sigs)}


#: How far a ``webhook-timestamp`` may be from the receiver's clock (the spec's 5 minutes).
TOLERANCE_S = 300


class BadSignature(ValueError):
    """A delivery whose headers do not verify (names which header and why)."""


def verify(secret: str, headers: dict[str, str], body: bytes, *, now: float | None = None,
           tolerance_s: float = TOLERANCE_S) -> str:
    """What a receiver does: check the three headers against ``secret``; returns the
    ``webhook-id`` (to dedupe on), or raises ``BadSignature``."""
    import time

    head = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, stamp, sigs = (head["webhook-id"], head["webhook-timestamp"],
                               head["webhook-signature"])
    except KeyError as exc:
        raise BadSignature(f"missing header {exc.args[0]}") from None
    try:
        timestamp = int(stamp)
    except ValueError:
        raise BadSignature(f"webhook-timestamp {stamp!r} is not an integer") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise BadSignature(f"webhook-timestamp {timestamp} is more than {tolerance_s:g} s "
                           "from now")
    expected = signature(secret, msg_id, timestamp, body).encode()
    for candidate in sigs.split():
        if hmac.compare_digest(candidate.encode(), expected):
            return msg_id
    raise BadSignature("no webhook-signature matches the secret")

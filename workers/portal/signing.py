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

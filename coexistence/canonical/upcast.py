"""Schema versions and upcasters for canonical payloads.

An old message must always decode into today's model.  Each upcaster turns a
payload of version N into version N+1 (``upcast_vN_vN+1`` as pyeventsourcing
names them); ``upcast`` chains them until the payload reaches the model's
current version.  Upcasters are pure functions on plain dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from coexistence.errors import TranslationError

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]

#: (domain, from_version) -> function producing a payload of from_version + 1.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(domain: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    def register(fn: Upcaster) -> Upcaster:
        UPCASTERS[(domain, from_version)] = fn
        return fn

    return register


@upcaster("customer", 1)
def upcast_customer_v1_v2(payload: Payload) -> Payload:
    """v1 kept the credit limit as integer cents in an implied currency (USD).

    v2 states the currency and keeps the limit as a decimal amount.
    """
    out = {k: v for k, v in payload.items() if k != "credit_limit_cents"}
    if "credit_limit_cents" in payload:
        out["credit_limit"] = str(Decimal(int(payload["credit_limit_cents"])) / 100)
    out.setdefault("currency", "USD")
    out["schema_version"] = 2
    return out


def upcast(domain: str, payload: Payload, current_version: int) -> Payload:
    """Bring ``payload`` up to ``current_version``; a missing version means 1."""
    version = int(payload.get("schema_version", 1))
    if version > current_version:
        raise TranslationError(
            domain, payload.get("key"), "schema_version", version,
            f"newer than this build understands (current {current_version})",
        )
    while version < current_version:
        step = UPCASTERS.get((domain, version))
        if step is None:
            raise TranslationError(
                domain, payload.get("key"), "schema_version", version,
                f"no upcaster from v{version}",
            )
        payload = step(payload)
        version += 1
    return payload

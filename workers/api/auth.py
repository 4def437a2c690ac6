"""API consumers: one bearer credential each, a role and (for own-rows roles) a customer scope.

Consumers come from a JSON file named by ``COEXIST_API_CONSUMERS`` (never from
code).  The file holds no secret, only the SHA-256 of each token, so it can sit
in configuration management; the tokens are handed to the consumers (``coexist
api token`` makes one and prints the entry to add)::

    {"consumers": [
      {"name": "acme-portal", "role": "portal", "account": "10042",
       "children": ["10043", "10044"], "token_sha256": "9f86d08..."},
      {"name": "service-desk", "role": "inquiry", "token_sha256": "...",
       "rate_per_s": 50, "burst": 100}
    ]}

``rate_per_s`` and ``burst`` are the consumer's own rate limit (``workers.api.limits``);
without them the configured default applies.

``account`` is the customer account a portal user (or a trading partner) acts
for; ``children`` the accounts below it in the customer hierarchy (the ERPs keep
no hierarchy, so the consumer's configuration says it).  Idempotency keys are
scoped by ``account`` (the consumer's name for roles without one).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coexistence.policy import PolicyConfigError, Role, Scope, validate_scope


class ConsumerConfigError(ValueError):
    """The consumers file is missing, unreadable or names something wrong (says where)."""


@dataclass(frozen=True, slots=True)
class Consumer:
    name: str
    role: Role
    account: str | None
    scope: Scope
    token_sha256: str
    #: This consumer's rate limit (``workers.api.limits``); ``None``: the default.
    rate_per_s: float | None = None
    burst: int | None = None

    @property
    def idempotency_account(self) -> str:
        return self.account or f"consumer:{self.name}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "cx_" + secrets.token_urlsafe(32)


def consumer_from(entry: Mapping[str, Any], where: str) -> Consumer:
    if not isinstance(entry, Mapping):
        raise ConsumerConfigError(f"{where}: a consumer is a JSON object")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConsumerConfigError(f"{where}: field name is missing")
    where = f"{where} ({name})"
    try:
        role = Role(entry.get("role"))
    except ValueError:
        raise ConsumerConfigError(
            f"{where}: field role={entry.get('role')!r} is not one of "
            f"{', '.join(r.value for r in Role)}") from None
    digest = entry.get("token_sha256")
    if not isinstance(digest, str) or len(digest) != 64 or any(
            c not in "0123456789abcdef" for c in digest):
        raise ConsumerConfigError(f"{where}: field token_sha256 must be 64 lower-case hex "
                                  "digits (the SHA-256 of the token, never the token)")
    account = entry.get("account")
    children = entry.get("children") or []
    if account is not None and not isinstance(account, str):
        raise ConsumerConfigError(f"{where}: field account must be a customer key")
    if not isinstance(children, list) or not all(isinstance(c, str) for c in children):
        raise ConsumerConfigError(f"{where}: field children must be a list of customer keys")
    customers = frozenset([account, *children]) if account else None
    if children and not account:
        raise ConsumerConfigError(f"{where}: children need an account")
    try:
        scope = validate_scope(Scope(role, customers, name))
    except PolicyConfigError as exc:
        raise ConsumerConfigError(f"{where}: {exc}") from None
    rate = entry.get("rate_per_s")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)
                             or not 0 < rate <= 1e9):
        raise ConsumerConfigError(f"{where}: field rate_per_s must be a number of requests "
                                  f"per second above 0, got {rate!r}")
    burst = entry.get("burst")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int)
                              or not 1 <= burst <= 1e9):
        raise ConsumerConfigError(f"{where}: field burst must be a whole number of requests, "
                                  f"at least 1, got {burst!r}")
    return Consumer(name, role, account, scope, digest,
                    float(rate) if rate is not None else None, burst)


#: Distinct valid ``Authorization`` values remembered per ``Consumers`` (each consumer has
#: one token, so this only bounds variants such as ``bearer`` in another case).
HEADER_CACHE_MAX = 4096


class Consumers:
    """Looks a bearer token up (by its hash) among the configured consumers."""

    def __init__(self, consumers: Iterable[Consumer]) -> None:
        self._by_hash: dict[str, Consumer] = {}
        #: ``Authorization`` header values already authenticated -> their consumer (valid
        #: credentials only, at most ``HEADER_CACHE_MAX``): the warm path's per-request
        #: SHA-256 and parsing were 8 % of its CPU.  Consumers are fixed for the life of
        #: the object, so a kept value always maps to what ``authenticate`` would give.
        self._by_header: dict[bytes, Consumer] = {}
        for c in consumers:
            if c.token_sha256 in self._by_hash:
                raise ConsumerConfigError(f"consumers {self._by_hash[c.token_sha256].name} and "
                                          f"{c.name} share a token")
            self._by_hash[c.token_sha256] = c

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate_header(self, authorization: bytes | None) -> Consumer | None:
        """``authenticate`` of a raw header value, remembering valid ones."""
        if authorization is None:
            return None
        consumer = self._by_header.get(authorization)
        if consumer is None:
            consumer = self.authenticate(authorization.decode("latin-1"))
            if consumer is not None and len(self._by_header) < HEADER_CACHE_MAX:
                self._by_header[authorization] = consumer
        return consumer

    def authenticate(self, authorization: str | None) -> Consumer | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self._by_hash.get(token_hash(token.strip()))

    @classmethod
    def from_json(cls, data: Any, where: str = "consumers") -> Consumers:
        if not isinstance(data, Mapping) or not isinstance(data.get("consumers"), list):
            raise ConsumerConfigError(f"{where}: expected {{\"consumers\": [...]}}")
        return cls(consumer_from(e, f"{where}: consumers[{i}]")
                   for i, e in enumerate(data["consumers"]))

    @classmethod
    def from_file(cls, path: str | Path | None) -> Consumers:
        if not path:
            raise ConsumerConfigError(
                "COEXIST_API_CONSUMERS is not set: name the JSON file of API consumers")
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConsumerConfigError(f"COEXIST_API_CONSUMERS {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConsumerConfigError(f"COEXIST_API_CONSUMERS {path}: not JSON: {exc}") from None
        return cls.from_json(data, str(path))

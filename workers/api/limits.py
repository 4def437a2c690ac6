"""Per-consumer rate limits of the governed API: one token bucket per credential.

Each consumer (``workers.api.auth.Consumer``) has a budget: ``rate_per_s`` requests per
second and ``burst`` saved up, from its entry in the consumers file, else
``COEXIST_API_RATE_PER_S`` / ``COEXIST_API_RATE_BURST``, else ``DEFAULT_RATE_PER_S`` /
``DEFAULT_BURST``.  Every request that carries a valid credential draws one token from
that consumer's bucket before anything else runs (the warm path included), so one
consumer's burst only ever empties its own bucket.

* With ``COEXIST_REDIS_URL`` the bucket is in Redis under
  ``{prefix}ratelimit:api:{consumer}`` (``workers.ratelimit``'s Lua script, on the Redis
  server's clock), so every API process draws from the same one.  When Redis does not
  answer, the draw is taken from this process's own bucket for that consumer (the limit
  then holds per process, not fleet-wide), counted in
  ``coexist_api_ratelimit_fallback_total`` and logged; Redis is tried again after
  ``REDIS_RETRY_S``.  Availability of the API does not depend on Redis.
* Without Redis the buckets live in the process.

Over budget: ``429`` with a ``Problem`` body (code ``rate_limited``), ``Retry-After``
(whole seconds until a token is there) and the ``RateLimit-Policy`` / ``RateLimit`` fields
of draft-ietf-httpapi-ratelimit-headers (``"consumer";q=<burst>;w=<seconds to refill>``,
``"consumer";r=<tokens left>;t=<seconds>``), which every admitted answer carries too.
Counted per consumer in ``coexist_api_requests_total{consumer, outcome}``.

Requests without a valid credential draw from no bucket (they are answered 401).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
import time
from dataclasses import dataclass

from prometheus_client import Counter

from workers.api.auth import Consumer, Consumers
from workers.api.counting import LoopCounter
from workers.api.ids import new_correlation_id
from workers.api.schemas import Problem
from workers.ratelimit import AsyncRedisTokenBucket, LocalTokenBucket, Taken

log = logging.getLogger(__name__)

#: Requests per second a consumer may make unless configured otherwise.
DEFAULT_RATE_PER_S = 20.0
#: Requests a consumer may save up and send at once unless configured otherwise.
DEFAULT_BURST = 40
#: Seconds Redis is left alone after it failed to answer a draw.
REDIS_RETRY_S = 5.0
#: Socket timeout of a draw in Redis: a slow Redis costs a request at most this.
REDIS_TIMEOUT_S = 0.25
#: The quota policy's name in the RateLimit fields.
POLICY = "consumer"
_POLICY_NAME = POLICY.encode()

REQUESTS = LoopCounter("coexist_api_requests_total",
                   "Requests of the governed API with a valid credential, by consumer and "
                   "outcome (admitted, or throttled: 429 over the consumer's budget)",
                   ["consumer", "outcome"])
FALLBACKS = Counter("coexist_api_ratelimit_fallback_total",
                    "Rate-limit draws taken from the process's own bucket because Redis did "
                    "not answer")


@functools.lru_cache(maxsize=256)
def _policy(burst: int, window_s: int) -> bytes:
    return f'"{POLICY}";q={burst};w={window_s}'.encode()


@dataclass(frozen=True, slots=True)
class Budget:
    rate_per_s: float
    burst: int

    @property
    def window_s(self) -> int:
        """Seconds an empty bucket takes to fill (the policy's window)."""
        return max(1, math.ceil(self.burst / self.rate_per_s))

    def policy(self) -> bytes:
        return _policy(self.burst, self.window_s)


class Verdict:
    """One request's draw: its consumer, the budget it drew from and what it got.

    A plain slotted class, not a frozen dataclass: it is made on every request, and a
    frozen dataclass's ``__init__`` (``object.__setattr__`` per field) cost more than the
    draw itself."""

    __slots__ = ("consumer", "budget", "wait_s", "tokens", "allowed", "_policy")

    def __init__(self, consumer: Consumer, budget: Budget, taken: tuple[float, float],
                 policy: bytes | None = None) -> None:
        self.consumer = consumer
        self.budget = budget
        self.wait_s, self.tokens = taken
        self.allowed = self.wait_s <= 0
        self._policy = policy if policy is not None else budget.policy()

    @property
    def taken(self) -> Taken:
        return Taken(self.wait_s, self.tokens)

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.wait_s))

    def headers(self) -> list[tuple[bytes, bytes]]:
        wait_s = self.wait_s
        tokens = self.tokens
        budget = self.budget
        if wait_s <= 0:
            reset = math.ceil((budget.burst - tokens) / budget.rate_per_s)
        else:
            reset = math.ceil(wait_s)
        remaining = int(tokens) if tokens > 0 else 0  # max(0, floor(tokens)), cheaper
        return [(b"ratelimit-policy", self._policy),
                (b"ratelimit", b'"%b";r=%d;t=%d' % (_POLICY_NAME, remaining, reset))]


class _Bucket(LocalTokenBucket):
    """``LocalTokenBucket`` with the one-token draw of every request as a plain tuple
    (``take()`` builds a ``Taken`` and checks ``n``: a third of the draw's cost)."""

    def take1(self) -> tuple[float, float]:
        """``tuple(self.take(1))``: the same arithmetic, under the same lock."""
        with self._lock:
            now = self.clock()
            tokens = self._tokens + (now - self._at) * self.rate_per_s
            if tokens > self.burst:
                tokens = self.burst
            self._at = now
            if tokens >= 1:
                self._tokens = tokens = tokens - 1
                return 0.0, tokens
            self._tokens = tokens
            return (1 - tokens) / self.rate_per_s, tokens


class _Held:
    """What a consumer's draw needs, worked out once: its budget and policy field, its
    bucket in this process, its two counters (bound ``hit`` methods)."""

    __slots__ = ("consumer", "budget", "policy", "bucket", "admitted", "throttled")

    def __init__(self, consumer: Consumer, budget: Budget, bucket: _Bucket) -> None:
        self.consumer = consumer
        self.budget = budget
        self.policy = budget.policy()
        self.bucket = bucket
        self.admitted = REQUESTS.labels(consumer.name, "admitted").hit
        self.throttled = REQUESTS.labels(consumer.name, "throttled").hit


class ConsumerLimits:
    """The buckets of every consumer; ``draw`` (in this process) or ``await take``
    (Redis when configured) before serving a request."""

    def __init__(self, consumers: Consumers, default: Budget, *, redis_url: str | None = None,
                 prefix: str = "coexist:", clock=time.monotonic) -> None:
        self.consumers = consumers
        self.default = default
        self.redis_url = redis_url
        self.prefix = prefix
        #: The clock of the buckets in this process (made at a consumer's first draw).
        self.clock = clock
        self._local: dict[str, _Bucket] = {}
        self._redis: dict[int, tuple[asyncio.AbstractEventLoop, object,
                                     dict[str, AsyncRedisTokenBucket]]] = {}
        self._redis_down_until = 0.0
        #: Per consumer name: what its draw needs (``_Held``), not worked out per request.
        self._held: dict[str, _Held] = {}

    @property
    def local(self) -> bool:
        """Whether the buckets are this process's (no Redis): ``draw`` then needs no
        ``await``."""
        return not self.redis_url

    def budget_of(self, consumer: Consumer) -> Budget:
        return Budget(consumer.rate_per_s or self.default.rate_per_s,
                      consumer.burst or self.default.burst)

    def consumer_of(self, scope) -> Consumer | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return self.consumer_for(value)
        return None

    def consumer_for(self, authorization: bytes | None) -> Consumer | None:
        """The consumer of an ``Authorization`` header's value (``None``: no valid one)."""
        if authorization is None:
            return None
        return self.consumers.authenticate_header(authorization)

    def _hold(self, consumer: Consumer) -> _Held:
        held = self._held.get(consumer.name)
        if held is None or held.consumer is not consumer:
            budget = self.budget_of(consumer)
            bucket = self._local.get(consumer.name)
            if bucket is None or (bucket.rate_per_s, bucket.burst) != (budget.rate_per_s,
                                                                        budget.burst):
                bucket = self._local[consumer.name] = _Bucket(
                    budget.rate_per_s, budget.burst, clock=self.clock)
            held = self._held[consumer.name] = _Held(consumer, budget, bucket)
        return held

    def _redis_bucket(self, consumer: Consumer, budget: Budget) -> AsyncRedisTokenBucket:
        loop = asyncio.get_running_loop()
        held = self._redis.get(id(loop))
        if held is None or held[0] is not loop:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(
                self.redis_url, socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S)
            held = self._redis[id(loop)] = (loop, client, {})
        buckets = held[2]
        bucket = buckets.get(consumer.name)
        if bucket is None or (bucket.rate_per_s, bucket.burst) != (budget.rate_per_s,
                                                                    budget.burst):
            bucket = buckets[consumer.name] = AsyncRedisTokenBucket(
                held[1], f"api:{consumer.name}", budget.rate_per_s, budget.burst,
                prefix=self.prefix)
        return bucket

    def draw(self, consumer: Consumer) -> Verdict:
        """One token from the consumer's bucket in this process (``take`` without Redis,
        and without a coroutine: this runs on every request)."""
        held = self._held.get(consumer.name)
        if held is None or held.consumer is not consumer:
            held = self._hold(consumer)
        verdict = Verdict(consumer, held.budget, held.bucket.take1(), held.policy)
        if verdict.allowed:
            held.admitted()
        else:
            held.throttled()
        return verdict

    async def take(self, consumer: Consumer) -> Verdict:
        """One token from the consumer's bucket: in Redis when configured (this process's
        own while Redis does not answer), else ``draw``."""
        if not self.redis_url:
            return self.draw(consumer)
        held = self._hold(consumer)
        taken = None
        if time.monotonic() >= self._redis_down_until:
            try:
                taken = await self._redis_bucket(consumer, held.budget).take()
            except Exception as exc:  # noqa: BLE001 - any Redis failure: limit locally
                self._redis_down_until = time.monotonic() + REDIS_RETRY_S
                log.warning("rate limits: Redis did not answer (%s); limiting in this "
                            "process for %.0f s", type(exc).__name__, REDIS_RETRY_S)
        if taken is None:
            FALLBACKS.inc()
            taken = held.bucket.take1()
        verdict = Verdict(consumer, held.budget, taken, held.policy)
        if verdict.allowed:
            held.admitted()
        else:
            held.throttled()
        return verdict

    async def refuse(self, verdict: Verdict, scope, send) -> None:
        """The 429 problem, with the correlation id like every answer."""
        cid = correlation_of(scope)
        b = verdict.budget
        body = Problem(
            type="/problems/rate_limited", title="rate limited", status=429,
            code="rate_limited", correlation_id=cid,
            detail=f"consumer {verdict.consumer.name} is over its budget of "
                   f"{b.rate_per_s:g} requests/s (burst {b.burst}); retry after "
                   f"{verdict.retry_after_s} s").model_dump()
        raw = json.dumps(body, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-length", str(len(raw)).encode()),
            (b"content-type", b"application/problem+json"),
            (b"retry-after", str(verdict.retry_after_s).encode()),
            *verdict.headers(), (b"x-correlation-id", cid.encode())]})
        await send({"type": "http.response.body", "body": raw})

    async def aclose(self) -> None:
        for _loop, client, _ in self._redis.values():
            await client.aclose()  # type: ignore[attr-defined]
        self._redis.clear()


def with_headers(send, headers: list[tuple[bytes, bytes]]):
    """``send`` that adds ``headers`` to the response start."""
    async def sending(message):
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *headers]
        await send(message)
    return sending


_CORRELATION = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def correlation_of(scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-correlation-id":
            if _CORRELATION.match(value):
                return value.decode("latin-1")
            break
    return new_correlation_id()

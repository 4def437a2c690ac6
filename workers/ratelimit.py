"""Client-side rate limits: token buckets, in-process or shared through Redis.

The cloud ERP limits each client (429 + Retry-After).  A fleet of worker
processes that each keep their own bucket would exceed it together, so with a
Redis URL configured every process draws from one bucket in Redis (a Lua script
makes refill-and-take atomic and uses the Redis server's clock, so hosts with
skewed clocks still agree).  Without Redis (the embedded single-machine
default) the bucket lives in the process.

Both expose ``try_acquire(n) -> wait_s`` (0.0 = taken) and a blocking
``acquire(n)``; ``take(n) -> Taken`` also says how many tokens are left (the API's
``RateLimit`` header).  ``AsyncRedisTokenBucket`` is the same Redis bucket for an event
loop (the governed API, ``workers.api.limits``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

__all__ = [
    "RateLimiter",
    "Taken",
    "LocalTokenBucket",
    "RedisTokenBucket",
    "AsyncRedisTokenBucket",
    "Unlimited",
    "make_rate_limiter",
]


class Taken(NamedTuple):
    """One draw: ``wait_s`` 0.0 means taken; ``tokens`` is what the bucket holds after it."""

    wait_s: float
    tokens: float


class RateLimiter(Protocol):
    """A token bucket: ``rate_per_s`` tokens per second, at most ``burst`` saved up."""

    def try_acquire(self, n: int = 1) -> float:
        """Take ``n`` tokens and return 0.0, or take nothing and return seconds to wait."""
        ...

    def acquire(self, n: int = 1) -> None:
        """Block until ``n`` tokens were taken."""
        ...


class _Blocking:
    sleep: Callable[[float], None] = staticmethod(time.sleep)

    def try_acquire(self, n: int = 1) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def acquire(self, n: int = 1) -> None:
        while (wait_s := self.try_acquire(n)) > 0:
            self.sleep(wait_s)


class Unlimited(_Blocking):
    """No limit (the cloud ERP grants this client more than it can use)."""

    def try_acquire(self, n: int = 1) -> float:
        return 0.0


class LocalTokenBucket(_Blocking):
    """A token bucket in this process, safe across threads."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self.sleep = sleep
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def try_acquire(self, n: int = 1) -> float:
        return self.take(n).wait_s

    def take(self, n: int = 1) -> Taken:
        if n > self.burst:
            raise ValueError(f"cannot take {n} tokens from a bucket of {self.burst:g}")
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
            self._at = now
            if self._tokens >= n:
                self._tokens -= n
                return Taken(0.0, self._tokens)
            return Taken((n - self._tokens) / self.rate_per_s, self._tokens)


#: Refill and take in one atomic step, on the Redis server's clock.  Returns the
#: seconds to wait as a string (Lua numbers become integers in Redis replies).
_TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= n then tokens = tokens - n else wait = (n - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


#: The same step, returning "wait tokens" (what ``take`` reports).
_TOKEN_BUCKET_TAKE_LUA = _TOKEN_BUCKET_LUA.replace(
    "return tostring(wait)", "return tostring(wait) .. ' ' .. tostring(tokens)")


def _taken(reply) -> Taken:
    wait, tokens = (reply.decode() if isinstance(reply, bytes) else reply).split()
    return Taken(float(wait), float(tokens))


def _check(rate_per_s: float, burst: float) -> None:
    if rate_per_s <= 0 or burst < 1:
        raise ValueError(f"rate_per_s must be > 0 and burst >= 1, got {rate_per_s}, {burst}")


class RedisTokenBucket(_Blocking):
    """A token bucket in Redis under ``{prefix}ratelimit:{name}``, shared by every process."""

    def __init__(
        self,
        client,
        name: str,
        rate_per_s: float,
        burst: float,
        *,
        prefix: str = "coexist:",
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self.key = f"{prefix}ratelimit:{name}"
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.sleep = sleep
        self._script = client.register_script(_TOKEN_BUCKET_LUA)

    def try_acquire(self, n: int = 1) -> float:
        if n > self.burst:
            raise ValueError(f"cannot take {n} tokens from a bucket of {self.burst:g}")
        wait = self._script(keys=[self.key], args=[self.rate_per_s, self.burst, n])
        return float(wait)

    def take(self, n: int = 1) -> Taken:
        if n > self.burst:
            raise ValueError(f"cannot take {n} tokens from a bucket of {self.burst:g}")
        if not hasattr(self, "_take"):
            self._take = self._script.registered_client.register_script(
                _TOKEN_BUCKET_TAKE_LUA)
        return _taken(self._take(keys=[self.key], args=[self.rate_per_s, self.burst, n]))


class AsyncRedisTokenBucket:
    """``RedisTokenBucket`` for an event loop: ``await take(n)``; same key, same script, so
    processes using either draw from one bucket.  ``client`` is a ``redis.asyncio.Redis``."""

    def __init__(self, client, name: str, rate_per_s: float, burst: float, *,
                 prefix: str = "coexist:"):
        _check(rate_per_s, burst)
        self.key = f"{prefix}ratelimit:{name}"
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._script = client.register_script(_TOKEN_BUCKET_TAKE_LUA)

    async def take(self, n: int = 1) -> Taken:
        if n > self.burst:
            raise ValueError(f"cannot take {n} tokens from a bucket of {self.burst:g}")
        return _taken(await self._script(keys=[self.key],
                                         args=[self.rate_per_s, self.burst, n]))


def make_rate_limiter(
    name: str,
    rate_per_s: float | None,
    burst: float | None = None,
    *,
    redis_url: str | None = None,
    prefix: str = "coexist:",
) -> RateLimiter:
    """The limiter for ``name``: shared in Redis when ``redis_url`` is set, else local.

    ``rate_per_s`` of ``None`` or 0 means no limit; ``burst`` defaults to one
    second's worth of tokens.
    """
    if not rate_per_s:
        return Unlimited()
    burst = burst or max(rate_per_s, 1.0)
    if redis_url:
        import redis

        return RedisTokenBucket(
            redis.Redis.from_url(redis_url), name, rate_per_s, burst, prefix=prefix
        )
    return LocalTokenBucket(rate_per_s, burst)

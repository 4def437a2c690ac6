"""The Redis token bucket is one bucket for every process that names it."""

from __future__ import annotations

import time

import pytest
import redis

from workers.ratelimit import RedisTokenBucket, make_rate_limiter

pytestmark = pytest.mark.integration


def test_two_processes_share_one_bucket(redis_prefix):
    url, prefix = redis_prefix
    # Two clients stand in for two worker processes.
    a = RedisTokenBucket(redis.Redis.from_url(url), "cloud", 1, 5, prefix=prefix)
    b = RedisTokenBucket(redis.Redis.from_url(url), "cloud", 1, 5, prefix=prefix)
    granted = [bucket.try_acquire() == 0.0 for bucket in (a, b) * 4]
    assert granted.count(True) == 5, "the fleet together gets one burst, not one each"
    assert 0 < b.try_acquire() <= 1.0


def test_the_bucket_refills_on_the_redis_clock(redis_prefix):
    url, prefix = redis_prefix
    bucket = make_rate_limiter("refill", 20, 2, redis_url=url, prefix=prefix)
    assert isinstance(bucket, RedisTokenBucket)
    assert bucket.try_acquire(2) == 0.0
    wait = bucket.try_acquire()
    assert 0 < wait <= 0.05 + 1e-6
    time.sleep(wait + 0.01)
    assert bucket.try_acquire() == 0.0


def test_the_bucket_lives_under_the_configured_prefix_and_expires(redis_prefix):
    url, prefix = redis_prefix
    client = redis.Redis.from_url(url)
    RedisTokenBucket(client, "cloud", 10, 10, prefix=prefix).try_acquire()
    key = f"{prefix}ratelimit:cloud"
    assert client.exists(key)
    assert 0 < client.pttl(key) <= 2000

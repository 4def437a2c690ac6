"""The in-process token bucket, on a fake clock."""

from __future__ import annotations

import pytest

from workers.ratelimit import LocalTokenBucket, Unlimited, make_rate_limiter


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_full_bucket_grants_its_burst_at_once_then_refuses_with_the_wait():
    clock = FakeClock()
    bucket = LocalTokenBucket(10, 3, clock=clock)
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire() == pytest.approx(0.1)


def test_tokens_refill_at_the_rate_and_never_beyond_the_burst():
    clock = FakeClock()
    bucket = LocalTokenBucket(10, 3, clock=clock)
    for _ in range(3):
        bucket.try_acquire()
    clock.now += 0.25
    assert bucket.try_acquire(2) == 0.0
    assert bucket.try_acquire() == pytest.approx(0.05)
    clock.now += 60
    assert bucket.try_acquire(3) == 0.0
    assert bucket.try_acquire() > 0


def test_acquire_blocks_exactly_as_long_as_the_rate_demands():
    clock = FakeClock()
    bucket = LocalTokenBucket(4, 1, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(5):
        bucket.acquire()
    assert clock.now - start == pytest.approx(1.0)


def test_asking_for_more_than_the_burst_is_an_error_not_a_hang():
    with pytest.raises(ValueError, match="cannot take 5 tokens"):
        LocalTokenBucket(10, 4).try_acquire(5)


def test_a_bucket_needs_a_positive_rate_and_room_for_one_token():
    with pytest.raises(ValueError):
        LocalTokenBucket(0, 5)
    with pytest.raises(ValueError):
        LocalTokenBucket(5, 0.5)


def test_no_rate_means_no_limit_and_a_rate_without_redis_is_local():
    assert isinstance(make_rate_limiter("cloud", None), Unlimited)
    assert Unlimited().try_acquire(10**6) == 0.0
    local = make_rate_limiter("cloud", 50)
    assert isinstance(local, LocalTokenBucket)
    assert local.burst == 50

"""Token buckets against a fake clock: no sleeping, exact arithmetic."""

from __future__ import annotations

import pytest

from helpers import FakeClock
from sealroom.policy.ratelimit import KeyedBuckets, TokenBucket, retry_after_text


def test_burst_then_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)


def test_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1, burst=2, clock=clock)
    clock.now += 3600
    assert [bucket.take() for _ in range(3)][2] > 0


def test_clock_going_backwards_does_not_mint_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1, burst=1, clock=clock)
    bucket.take()
    clock.now -= 100
    assert bucket.take() > 0


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0.5)])
def test_invalid_bucket(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate, burst, FakeClock())


@pytest.mark.parametrize(
    ("wait", "text"), [(0.01, "retry in 1s"), (1.2, "retry in 2s"), (10.0, "retry in 10s")]
)
def test_retry_text(wait: float, text: str) -> None:
    assert retry_after_text(wait) == text


def test_keyed_buckets_are_independent_and_forget_full_ones() -> None:
    clock = FakeClock()
    buckets = KeyedBuckets(rate=1, burst=2, clock=clock, max_keys=100)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0
    assert buckets.sweep() == 2
    clock.now += 2  # both refilled: forgetting them changes nothing
    assert buckets.sweep() == 0
    assert buckets.take("a") == 0.0


def test_keyed_buckets_hard_cap_fails_closed() -> None:
    clock = FakeClock()
    buckets = KeyedBuckets(rate=0.1, burst=1, clock=clock, max_keys=3)
    for key in "abc":
        assert buckets.take(key) == 0.0
    assert buckets.take("d") > 0  # nothing can be forgotten yet: refused, not grown
    assert len(buckets) == 3
    clock.now += 10
    assert buckets.take("d") == 0.0  # the old keys refilled and were forgotten
    assert len(buckets) == 1


def test_a_key_keeps_its_state_while_not_full() -> None:
    """Reconnecting does not reset the login bucket: the key is the address."""
    clock = FakeClock()
    buckets = KeyedBuckets(rate=0.5, burst=2, clock=clock, max_keys=10)
    buckets.take("10.0.0.1")
    buckets.take("10.0.0.1")
    clock.now += 1  # half a token back
    buckets.sweep()
    assert buckets.take("10.0.0.1") > 0

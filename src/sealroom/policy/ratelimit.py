"""Token buckets with an injected clock, so policy is testable without sleeping.

A bucket holds at most ``burst`` tokens and regains ``rate`` tokens per second. Keyed buckets
(one per client address) forget a key as soon as its bucket would be full again: a full
bucket and a fresh one behave identically, so forgetting it loses nothing and memory stays
bounded by the addresses active within ``burst / rate`` seconds, with a hard cap on top.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

Clock = Callable[[], float]


class TokenBucket:
    """A single token bucket; not thread-safe (each owner serialises its own calls)."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._stamp = now

    def take(self, cost: float = 1.0) -> float:
        """Spend ``cost`` tokens: 0.0 if allowed, else the seconds until it would be."""
        self._refill(self._clock())
        if self._tokens >= cost:
            self._tokens -= cost
            return 0.0
        return (cost - self._tokens) / self.rate

    def reconfigure(self, rate: float, burst: float, now: float) -> None:
        """Change rate and burst, keeping the tokens earned so far (at most ``burst``)."""
        self._refill(now)
        self.rate = rate
        self.burst = burst
        self._tokens = min(self._tokens, burst)

    def is_full(self, now: float) -> bool:
        elapsed = max(0.0, now - self._stamp)
        return self._tokens + elapsed * self.rate >= self.burst


def retry_after_text(wait_s: float) -> str:
    """The human part of ``ERR rate-limited``; SPEC.md fixes the ``retry in Ns`` wording."""
    return f"retry in {max(1, math.ceil(wait_s))}s"


class KeyedBuckets:
    """One bucket per key (a client address), thread-safe, with bounded memory.

    When ``max_keys`` distinct keys are already tracked and none can be forgotten, a new key is
    refused outright: under an address flood we fail closed rather than grow without bound.
    """

    def __init__(self, rate: float, burst: float, clock: Clock, *, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()
        self.rejected = 0  # takes refused so far (for status and metrics)

    def take(self, key: str, cost: float = 1.0) -> float:
        """Spend from ``key``'s bucket: 0.0 if allowed, else seconds to wait."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._sweep_locked(self._clock())
                    if len(self._buckets) >= self.max_keys:
                        self.rejected += 1
                        return 1.0 / self.rate
                bucket = TokenBucket(self.rate, self.burst, self._clock)
                self._buckets[key] = bucket
            wait = bucket.take(cost)
            if wait:
                self.rejected += 1
            return wait

    def reconfigure(self, rate: float, burst: float, max_keys: int) -> None:
        """New parameters, for every key at once (a configuration reload).

        Existing buckets keep their tokens, capped at the new burst, so a reload neither
        hands out a fresh burst to everyone nor punishes anyone.
        """
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("keyed buckets need rate > 0, burst >= 1 and max_keys >= 1")
        with self._lock:
            now = self._clock()
            for bucket in self._buckets.values():
                bucket.reconfigure(rate, burst, now)
            self.rate, self.burst, self.max_keys = rate, burst, max_keys

    def sweep(self) -> int:
        """Forget buckets that have refilled; called from housekeeping. Returns keys kept."""
        with self._lock:
            self._sweep_locked(self._clock())
            return len(self._buckets)

    def _sweep_locked(self, now: float) -> None:
        full = [key for key, bucket in self._buckets.items() if bucket.is_full(now)]
        for key in full:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)

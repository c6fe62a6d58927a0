"""When to try a lost connection again: exponential backoff with full jitter.

A server restart drops every client at the same moment; without jitter they would all
come back at the same moment too, and again after each failed attempt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnection policy: exponential backoff with full jitter, bounded attempts.

    Before attempt ``n`` (from 0) the client sleeps a random time between 0 and
    ``min(max_s, initial_s * factor**n)`` (never less than a server's ``retry in Ns``), so a
    crowd of clients dropped by a restart does not come back at once.
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    max_attempts: int = 10

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < self.initial_s or self.factor < 1:
            raise ValueError("Backoff needs 0 <= initial_s <= max_s and factor >= 1")
        if self.max_attempts < 1:
            raise ValueError("Backoff needs max_attempts >= 1")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        cap = min(self.max_s, self.initial_s * self.factor ** min(attempt, 64))
        return (rng or _jitter).uniform(0.0, cap)


_jitter = random.SystemRandom()  # the default rng: no shared seed between processes

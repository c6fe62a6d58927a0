"""Who may open a connection: total and per-address caps plus a per-address bucket.

Checked in ``verify_request`` on the accepting thread, before a connection thread exists, so
a flood costs one ``accept`` and a dictionary lookup per attempt.
"""

from __future__ import annotations

import threading

from sealroom.policy.ratelimit import Clock, KeyedBuckets


class Admission:
    def __init__(
        self,
        *,
        max_connections: int,
        max_per_address: int,
        rate: float,
        burst: float,
        clock: Clock,
        max_tracked_addresses: int,
    ) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.buckets = KeyedBuckets(rate, burst, clock, max_keys=max_tracked_addresses)
        self._lock = threading.Lock()
        self._per_address: dict[str, int] = {}
        self._total = 0
        self.admitted = 0  # connections let in so far
        self.rejected: dict[str, int] = {"max_connections": 0, "per_address": 0, "rate": 0}

    @property
    def total(self) -> int:
        return self._total

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address`` if allowed; pair with :meth:`release`."""
        with self._lock:
            if self._total >= self.max_connections:
                self.rejected["max_connections"] += 1
                return False
            current = self._per_address.get(address, 0)
            if current >= self.max_per_address:
                self.rejected["per_address"] += 1
                return False
            if self.buckets.take(address):
                self.rejected["rate"] += 1
                return False
            self._per_address[address] = current + 1
            self._total += 1
            self.admitted += 1
            return True

    def reconfigure(
        self,
        *,
        max_connections: int,
        max_per_address: int,
        rate: float,
        burst: float,
        max_tracked_addresses: int,
    ) -> None:
        """New caps and bucket parameters (a configuration reload).

        Connections already open stay open even above a lowered cap; the caps only decide
        who comes in next.
        """
        with self._lock:
            self.max_connections = max_connections
            self.max_per_address = max_per_address
        self.buckets.reconfigure(rate, burst, max_tracked_addresses)

    def release(self, address: str) -> None:
        with self._lock:
            remaining = self._per_address[address] - 1
            if remaining:
                self._per_address[address] = remaining
            else:
                del self._per_address[address]
            self._total -= 1

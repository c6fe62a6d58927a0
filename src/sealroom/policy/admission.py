"""Who may open a connection: total and per-address caps plus a per-address bucket.

Checked in ``verify_request`` on the accepting thread, before a connection thread exists, so
a flood costs one ``accept`` and a dictionary lookup per attempt.

A connection from a trusted load balancer is the exception: its client's address comes
later, in the PROXY protocol header. It is admitted against the total cap alone
(``admit(None)``), and against the per-address cap and bucket once the header names the
client (:meth:`Admission.admit_address`), so the limits see clients, not the balancer.
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
        self.admitted = 0  # connections let in so far (once their address is known)
        self.rejected: dict[str, int] = {"max_connections": 0, "per_address": 0, "rate": 0}

    @property
    def total(self) -> int:
        return self._total

    def admit(self, address: str | None) -> bool:
        """Count a new connection from ``address`` if allowed; pair with :meth:`release`.

        None: the client's address is not known yet, so only the total cap applies until
        :meth:`admit_address` names it.
        """
        with self._lock:
            if self._total >= self.max_connections:
                self.rejected["max_connections"] += 1
                return False
            if address is not None and not self._admit_address(address):
                return False
            self._total += 1
            return True

    def admit_address(self, address: str) -> bool:
        """Name the client of a connection admitted as None: its per-address cap and bucket.

        Refused or not, the connection still counts in the total: release it with None if
        this returns False, and with ``address`` if it returns True.
        """
        with self._lock:
            return self._admit_address(address)

    def _admit_address(self, address: str) -> bool:
        current = self._per_address.get(address, 0)
        if current >= self.max_per_address:
            self.rejected["per_address"] += 1
            return False
        if self.buckets.take(address):
            self.rejected["rate"] += 1
            return False
        self._per_address[address] = current + 1
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

    def release(self, address: str | None) -> None:
        """A connection admitted (and named, unless ``address`` is None) has closed."""
        with self._lock:
            if address is not None:
                remaining = self._per_address[address] - 1
                if remaining:
                    self._per_address[address] = remaining
                else:
                    del self._per_address[address]
            self._total -= 1

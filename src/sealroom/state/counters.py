"""Event counters for status and metrics: plain integers, cheap enough for hot paths.

Each counter is bumped with ``+=`` under the GIL, without a lock. Two threads bumping the
same counter at the same instant can, rarely, lose one increment; for monitoring that is a
fair price for never adding a lock to the path of a message.
"""

from __future__ import annotations


class Counters:
    """What happened since the server started (never reset; Prometheus counters)."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "closed",
        "logins_failed",
        "logins_ok",
        "messages_private",
        "messages_rate_limited",
        "messages_room",
    )

    def __init__(self) -> None:
        self.logins_ok = 0
        self.logins_failed = 0
        self.messages_room = 0  # room messages accepted from clients
        self.messages_private = 0  # private messages accepted from clients
        self.messages_rate_limited = 0  # requests refused by a session's message bucket
        self.bytes_received = 0  # application bytes, after TLS
        self.bytes_sent = 0
        # Connections closed, by the first word of their BYE reason ("peer": closed by the
        # client). The words come from the code, not from clients, so the keys are bounded.
        self.closed: dict[str, int] = {}

    def count_close(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1

"""The cluster's real-time plane, as a session sees it: a port, with no I/O of its own.

In a cluster every change to who is in which room, and every room message, private message,
kick and wall, is an entry in one ordered log that every node applies to its own
:class:`~sealroom.state.hub.Hub` (a replica). A session does not change the hub itself: it asks
the bus, and the bus's reader applies the change, on this node and every other, in the log's
order. So every member on every node sees one order, and ``JOIN``/``PART`` are said once.

Every method but :meth:`Bus.leave` and :meth:`Bus.say_later` blocks (a round trip to the
engine, batched with other sessions' requests): sessions call them only inside an effect's
``work``, on :attr:`~sealroom.session.effects.Pool.BUS`. Room messages, the one request a
session sends many of, are handed over without blocking (``Pool.LATER``). A bus that
cannot reach its engine answers ``ProtocolError(server-busy)`` within its deadline; it
never hangs a session.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from sealroom.core.model import RoomRecord
from sealroom.session.effects import Later
from sealroom.state.hub import Admit, Member


class Bus(Protocol):
    def login(
        self, member: Member, limit: int, room: str | None, reply: bytes, admit: Admit
    ) -> bool | None:
        """Count ``member`` online and enter ``room`` (None: no room) in one step of the
        order, not two round trips. None when its user has ``limit`` sessions across the
        cluster already: then it is not counted. Else whether it is in ``room``; a room
        that refuses it raises as :meth:`join` does, and it stays counted online."""
        ...

    def join(self, member: Member, room: str, reply: bytes, admit: Admit) -> None:
        """Enter ``room``; returns once the entry is applied here, ``reply`` queued first.
        ``admit`` judges the room as the bus's order has it then (raises to refuse)."""
        ...

    def part(self, member: Member, room: str) -> None:
        """Leave ``room``; returns once the entry is applied here."""
        ...

    def leave(self, member: Member, rooms: list[str]) -> None:
        """The session is gone: out of ``rooms`` and offline. Never blocks (it is queued)."""
        ...

    def say_later(self, member: Member, room: str, text: str) -> Later:
        """Post to ``room`` without blocking: the message id, once it is durable (stored),
        or server-busy, comes through the returned :class:`~sealroom.session.effects.Later`.
        Called on the reactor thread, which announces a turn's messages together (the
        cluster's bus: ``kick`` after each turn) rather than one at a time.
        """
        ...

    def direct(self, sender: str, recipient: str, text: str, stamp: int) -> tuple[int, bool]:
        """A private message: (id, delivered live) once durable; stored for a later login
        when the recipient has no session anywhere."""
        ...

    def online(self, name: str) -> bool:
        """Whether ``name`` has a session on any node."""
        ...

    def broadcast(self, kind: str, payload: Mapping[str, object]) -> None:
        """An event for every node (kick, wall, room, destroy): returns once it is ordered."""
        ...

    def take(self, bucket: str, key: str, rate: float, burst: float) -> float:
        """One token from the cluster's bucket ``bucket`` for ``key``: 0, or seconds to wait."""
        ...


def room_payload(record: RoomRecord) -> dict[str, object]:
    """A room record as a ``room`` event carries it to the other nodes."""
    return {
        "name": record.name,
        "owner": record.owner,
        "mode": record.mode,
        "topic": record.topic,
        "created_at": record.created_at,
        "operators": sorted(record.operators),
        "invited": sorted(record.invited),
        "banned": sorted(record.banned),
        "version": record.version,
    }

"""Rooms, sessions and fan-out: the in-memory heart of the server, shared by all threads.

The hub never touches a socket. Delivering a message means encoding its line once and
appending that one ``bytes`` object to each recipient's :class:`Outbox`; the recipients' own
threads write it. One lock guards the maps; it is held only for dictionary work and queue
appends, never for I/O.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.protocol import encode_line
from sealroom.state.outbox import Outbox


@dataclass(eq=False, slots=True)
class Member:
    """One logged-in session as the hub sees it (identity-hashed: two sessions never equal)."""

    name: str
    outbox: Outbox
    is_admin: bool = False
    rooms: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Room:
    name: str
    members: dict[Member, None] = field(default_factory=dict)  # an insertion-ordered set
    sessions_per_name: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HubLimits:
    max_rooms: int
    max_rooms_per_session: int
    max_room_members: int
    allow_create: bool
    default_room: str


class Hub:
    def __init__(self, limits: HubLimits, next_id: Callable[[], int] | None = None) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._rooms: dict[str, Room] = {}
        self._sessions: dict[str, list[Member]] = {}
        counter = itertools.count(1)
        self._next_id = next_id or (lambda: next(counter))
        # MSG, DM and WALL lines queued to recipients, and their bytes: counted once per
        # fan-out, under the lock the fan-out holds anyway (for status and metrics).
        self.deliveries = 0
        self.delivered_bytes = 0

    # -- sessions ---------------------------------------------------------------------------

    def attach(self, member: Member) -> None:
        with self._lock:
            self._sessions.setdefault(member.name, []).append(member)

    def detach(self, member: Member) -> None:
        """Remove a session that is going away, leaving all its rooms."""
        with self._lock:
            for room in list(member.rooms):
                self._part_locked(member, room)
            sessions = self._sessions.get(member.name, [])
            if member in sessions:
                sessions.remove(member)
            if not sessions:
                self._sessions.pop(member.name, None)

    def is_online(self, name: str) -> bool:
        return name in self._sessions

    def online_names(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def sessions_of(self, name: str) -> list[Member]:
        with self._lock:
            return list(self._sessions.get(name, ()))

    def rooms_of(self, member: Member) -> list[str]:
        """The rooms ``member`` is in, sorted (read under the lock that changes them)."""
        with self._lock:
            return sorted(member.rooms)

    def counts(self) -> tuple[int, int]:
        """(logged-in sessions, rooms) for status lines."""
        with self._lock:
            return sum(len(s) for s in self._sessions.values()), len(self._rooms)

    def disconnect(self, name: str, reason: str) -> int:
        """Close every session of ``name`` with ``BYE reason``; returns how many."""
        with self._lock:
            sessions = list(self._sessions.get(name, ()))
        for member in sessions:
            member.outbox.close(reason)
        return len(sessions)

    def close_all(self, reason: str) -> None:
        with self._lock:
            members = [m for sessions in self._sessions.values() for m in sessions]
        for member in members:
            member.outbox.close(reason)

    # -- rooms ------------------------------------------------------------------------------

    def join(self, member: Member, room_name: str, reply: bytes) -> None:
        """Join ``room_name``, queueing ``reply`` before any event from the room can follow it."""
        with self._lock:
            room = self._rooms.get(room_name)
            if room_name not in member.rooms:
                room = self._admit_locked(member, room_name, room)
                room.members[member] = None
                member.rooms.add(room_name)
                count = room.sessions_per_name.get(member.name, 0) + 1
                room.sessions_per_name[member.name] = count
                if count == 1:
                    self._send_locked(room, encode_line("JOIN", room_name, member.name), member)
            member.outbox.push(reply, wake=False)

    def _admit_locked(self, member: Member, room_name: str, room: Room | None) -> Room:
        limits = self.limits
        if len(member.rooms) >= limits.max_rooms_per_session:
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                f"a session may be in at most {limits.max_rooms_per_session} rooms",
            )
        if room is None:
            if not limits.allow_create and room_name != limits.default_room:
                raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"{room_name} does not exist")
            if len(self._rooms) >= limits.max_rooms:
                raise ProtocolError(ErrorCode.SERVER_BUSY, "too many rooms on this server")
            room = self._rooms[room_name] = Room(room_name)
        elif len(room.members) >= limits.max_room_members:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{room_name} is full")
        return room

    def part(self, member: Member, room_name: str) -> None:
        with self._lock:
            if room_name not in member.rooms:
                raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"you are not in {room_name}")
            self._part_locked(member, room_name)

    def _part_locked(self, member: Member, room_name: str) -> None:
        room = self._rooms[room_name]
        del room.members[member]
        member.rooms.discard(room_name)
        remaining = room.sessions_per_name[member.name] - 1
        if remaining:
            room.sessions_per_name[member.name] = remaining
        else:
            del room.sessions_per_name[member.name]
            self._send_locked(room, encode_line("PART", room_name, member.name), member)
        if not room.members:
            del self._rooms[room_name]

    def who(self, room_name: str) -> list[str]:
        with self._lock:
            room = self._rooms.get(room_name)
            if room is None:
                raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"{room_name} does not exist")
            return sorted(room.sessions_per_name)

    # -- messages ---------------------------------------------------------------------------

    def say(self, member: Member, room_name: str, text: str) -> int:
        """Relay ``text`` to the room's other sessions; returns the message id.

        A session need not be in an existing room to post to it (as on IRC without +n):
        ``sealroom send`` posts without a JOIN and a PART around every message.
        """
        line = encode_line("MSG", room_name, member.name, text)
        with self._lock:
            room = self._rooms.get(room_name)
            if room is None:
                raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"{room_name} does not exist")
            message_id = self._next_id()
            self._send_locked(room, line, member)
            self._count_locked(len(room.members) - 1, line)
        return message_id

    def direct(self, sender: str, recipient: str, text: str) -> tuple[int, int]:
        """Deliver a private message to every live session of ``recipient``.

        Returns (message id, sessions reached); 0 reached means the recipient is offline.
        """
        line = encode_line("DM", sender, text)
        with self._lock:
            message_id = self._next_id()
            sessions = self._sessions.get(recipient, ())
            for target in sessions:
                target.outbox.push(line)
            self._count_locked(len(sessions), line)
            return message_id, len(sessions)

    def wall(self, sender: str, text: str) -> int:
        line = encode_line("WALL", sender, text)
        with self._lock:
            members = list(self._all_members_locked())
            self._count_locked(len(members), line)
        for target in members:
            target.outbox.push(line)
        return len(members)

    def _count_locked(self, recipients: int, line: bytes) -> None:
        self.deliveries += recipients
        self.delivered_bytes += recipients * len(line)

    def _all_members_locked(self) -> Iterator[Member]:
        for sessions in self._sessions.values():
            yield from sessions

    @staticmethod
    def _send_locked(room: Room, line: bytes, sender: Member | None) -> None:
        for target in room.members:
            if target is not sender:
                target.outbox.push(line)

"""Rooms, sessions and fan-out: the in-memory heart of the server, shared by all threads.

The hub never touches a socket. Delivering a message means encoding its line once and
appending that one ``bytes`` object to each recipient's :class:`Outbox`; the recipients' own
threads write it. One lock guards the maps; it is held only for dictionary work and queue
appends, never for I/O.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.model import Mode, RoomRecord, RoomView
from sealroom.core.protocol import encode_line
from sealroom.state.outbox import Outbox

_serials = itertools.count(1)


@dataclass(eq=False, slots=True)
class Member:
    """One logged-in session as the hub sees it (identity-hashed: two sessions never equal)."""

    name: str
    outbox: Outbox
    is_admin: bool = False
    rooms: set[str] = field(default_factory=set)
    stamp: int = 0  # the account record this session logged in as (``Account.stamp``)
    # Unique in this process: how the cluster's bus names this session in its events.
    serial: int = field(default_factory=lambda: next(_serials))
    # Run on the session's own thread when stored private messages may be waiting for it
    # (a cluster's other node stored one as this session logged in).
    on_mail: Callable[[], None] | None = None


@dataclass(slots=True)
class Room:
    """A room: its settings (as stored) and who is in it now. It exists, empty or not,
    until it is destroyed."""

    name: str
    members: dict[Member, None] = field(default_factory=dict)  # an insertion-ordered set
    sessions_per_name: dict[str, int] = field(default_factory=dict)
    owner: str | None = None
    mode: Mode = Mode.OPEN
    topic: str = ""
    operators: set[str] = field(default_factory=set)
    invited: set[str] = field(default_factory=set)
    banned: set[str] = field(default_factory=set)
    version: int = 0  # of the stored record these settings come from

    @classmethod
    def from_record(cls, record: RoomRecord) -> Room:
        return cls(
            record.name,
            owner=record.owner,
            mode=Mode(record.mode),
            topic=record.topic,
            operators=set(record.operators),
            invited=set(record.invited),
            banned=set(record.banned),
            version=record.version,
        )

    def view(self) -> RoomView:
        """A copy for the policy to judge, consistent as of the moment it is made."""
        return RoomView(
            owner=self.owner,
            mode=self.mode,
            operators=frozenset(self.operators),
            invited=frozenset(self.invited),
            banned=frozenset(self.banned),
            members=frozenset(self.sessions_per_name),
        )


# FROM in BANNED and DESTROYED when no session made the change (`sealroom room …` did): one
# word, as the line's grammar needs, and never a user name.
OPERATOR = "*"

# What a join asks of the room, judged under the hub's lock: raises ProtocolError to refuse.
Admit = Callable[[RoomView], None]


@dataclass(frozen=True, slots=True)
class HubLimits:
    max_rooms: int
    max_rooms_per_session: int
    max_room_members: int
    allow_create: bool
    default_room: str
    max_created_per_user: int = 50


class Hub:
    """The rooms and sessions of one server, or, with ``replica``, one node's copy of them.

    A replica's local sessions enter and leave rooms only as the cluster's bus says (the
    ``*_replica`` methods, called in the bus's one order by its reader), and who is in a
    room counts the sessions of every node: no node ever says ``JOIN`` or ``PART`` from its
    own view, so every node says the same ones.
    """

    def __init__(
        self,
        limits: HubLimits,
        next_id: Callable[[], int] | None = None,
        *,
        replica: bool = False,
    ) -> None:
        self.limits = limits
        self.replica = replica
        # A replica's sessions that a ban or a destroy put out of a room: the bus must hear
        # of each (called under the lock; it only queues).
        self.on_leave: Callable[[Member, str], None] | None = None
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
                if self.replica:  # the bus says PART, once every node has applied it
                    self._leave_locked(member, room)
                else:
                    self._part_locked(member, room)
            sessions = self._sessions.get(member.name, [])
            if member in sessions:
                sessions.remove(member)
            if not sessions:
                self._sessions.pop(member.name, None)

    def is_online(self, name: str) -> bool:
        return name in self._sessions

    def session_count(self, name: str) -> int:
        with self._lock:
            return len(self._sessions.get(name, ()))

    def sessions_of(self, name: str) -> list[Member]:
        with self._lock:
            return list(self._sessions.get(name, ()))

    def disconnect_stale(self, name: str, stamp: int | None, reason: str) -> int:
        """Close the sessions of ``name`` that belong to another record than ``stamp``
        (None: every session); returns how many."""
        stale = [m for m in self.sessions_of(name) if stamp is None or m.stamp != stamp]
        for member in stale:
            member.outbox.close(reason)
        return len(stale)

    def online_names(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

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

    def join(
        self, member: Member, room_name: str, reply: bytes, admit: Admit | None = None
    ) -> None:
        """Join ``room_name``, queueing ``reply`` before any event from the room can follow it.

        ``admit`` judges the room's settings under the lock, so that no ban or mode change
        can slip between the check and the join. A missing room is ``no-such-room``: rooms
        are created by :meth:`apply`, once stored.
        """
        with self._lock:
            room = self._rooms.get(room_name)
            if room is None:
                raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"{room_name} does not exist")
            if room_name not in member.rooms:
                self._admit_locked(member, room)
                if admit is not None:
                    admit(room.view())
                room.members[member] = None
                member.rooms.add(room_name)
                count = room.sessions_per_name.get(member.name, 0) + 1
                room.sessions_per_name[member.name] = count
                if count == 1:
                    self._send_locked(room, encode_line("JOIN", room_name, member.name), member)
            member.outbox.push(reply, wake=False)

    def check_join(self, member: Member, room_name: str, admit: Admit) -> None:
        """Whether ``member`` may join now, as :meth:`join` judges, without joining (a
        replica's join is ordered by the bus); raises ProtocolError if not."""
        with self._lock:
            room = self._rooms.get(room_name)
            if room is None:
                raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"{room_name} does not exist")
            self._admit_locked(member, room)
            admit(room.view())

    def _admit_locked(self, member: Member, room: Room) -> None:
        limits = self.limits
        if len(member.rooms) >= limits.max_rooms_per_session:
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                f"a session may be in at most {limits.max_rooms_per_session} rooms",
            )
        # A replica counts every node's sessions in the room (as the bus last told it).
        present = sum(room.sessions_per_name.values()) if self.replica else len(room.members)
        if present >= limits.max_room_members:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{room.name} is full")

    def may_create(self, member: Member) -> None:
        """Whether ``member`` may create (and then join) one more room now; raises
        ProtocolError if not. The store decides the race for the name."""
        limits = self.limits
        name = member.name
        with self._lock:
            if len(member.rooms) >= limits.max_rooms_per_session:
                raise ProtocolError(
                    ErrorCode.FORBIDDEN,
                    f"a session may be in at most {limits.max_rooms_per_session} rooms",
                )
            if not (limits.allow_create or member.is_admin):
                raise ProtocolError(ErrorCode.NO_SUCH_ROOM, "rooms are made by admins here")
            if len(self._rooms) >= limits.max_rooms:
                raise ProtocolError(ErrorCode.SERVER_BUSY, "too many rooms on this server")
            owned = sum(1 for room in self._rooms.values() if room.owner == name)
            if owned >= limits.max_created_per_user:
                raise ProtocolError(
                    ErrorCode.FORBIDDEN,
                    f"you have {owned} rooms; at most {limits.max_created_per_user} at once",
                )

    def apply(self, record: RoomRecord, *, by: str = OPERATOR, reason: str = "") -> None:
        """Take a room's stored settings, unless the hub already has the same or newer ones
        (a poll can race a change). Banned users still in the room leave it at once: their
        sessions get ``BANNED #ROOM BY REASON``, the others ``PART``."""
        with self._lock:
            room = self._rooms.get(record.name)
            if room is None:
                self._rooms[record.name] = Room.from_record(record)
                return
            if record.version <= room.version:
                return
            room.owner, room.mode, room.topic = record.owner, Mode(record.mode), record.topic
            room.operators = set(record.operators)
            room.invited = set(record.invited)
            room.banned = set(record.banned)
            room.version = record.version
            for name in [n for n in room.sessions_per_name if n in room.banned]:
                self._evict_locked(room, name, by, reason)

    def load_rooms(self, records: list[RoomRecord], gone: Sequence[str] = ()) -> None:
        """Bring the hub in line with the store (at start, and when `sealroom room …`
        changed rooms); ``gone``: rooms the store no longer has (confirmed by the caller)."""
        for record in records:
            self.apply(record)
        for name in gone:
            self.destroy(name, OPERATOR)

    def missing(self, records: list[RoomRecord]) -> list[str]:
        """Rooms the hub knows that ``records`` lack (to confirm before calling them gone)."""
        stored = {record.name for record in records}
        with self._lock:
            return [name for name in self._rooms if name not in stored]

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

    def view(self, room_name: str) -> RoomView:
        """The room's settings and members, for the policy; ``no-such-room`` if missing."""
        with self._lock:
            room = self._rooms.get(room_name)
            if room is None:
                raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"{room_name} does not exist")
            return room.view()

    def topic(self, room_name: str) -> str:
        with self._lock:
            room = self._rooms.get(room_name)
            return "" if room is None else room.topic

    def who(self, room_name: str) -> list[str]:
        with self._lock:
            room = self._rooms.get(room_name)
            if room is None:
                raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"{room_name} does not exist")
            return sorted(room.sessions_per_name)

    def rooms(self) -> list[tuple[str, RoomView, str]]:
        """Every room: (name, view, topic), sorted by name (for ``/list``)."""
        with self._lock:
            return [(n, r.view(), r.topic) for n, r in sorted(self._rooms.items())]

    # -- room events ------------------------------------------------------------------------

    def announce(self, room_name: str, line: bytes) -> None:
        """To every session in the room (the one that made the change included)."""
        with self._lock:
            room = self._rooms.get(room_name)
            if room is not None:
                self._send_locked(room, line, None)

    def notify(self, name: str, line: bytes) -> None:
        """To every session of user ``name``."""
        with self._lock:
            for target in self._sessions.get(name, ()):
                target.outbox.push(line)

    def _evict_locked(self, room: Room, name: str, by: str, reason: str) -> None:
        # An empty REASON leaves no trailing space, as an empty TOPIC does in OK join.
        line = encode_line("BANNED", room.name, by, *([reason] if reason else []))
        leaving = [m for m in room.members if m.name == name]
        for member in leaving:
            del room.members[member]
            member.rooms.discard(room.name)
            member.outbox.push(line)
            if self.on_leave is not None:
                self.on_leave(member, room.name)
        if leaving or (self.replica and name in room.sessions_per_name):
            room.sessions_per_name.pop(name, None)
            self._send_locked(room, encode_line("PART", room.name, name), None)

    def destroy(self, room_name: str, by: str) -> None:
        with self._lock:
            room = self._rooms.get(room_name)
            if room is not None:
                self._destroy_locked(room, by)

    def _destroy_locked(self, room: Room, by: str) -> None:
        """Everyone in it is told and is out of it (no PART follows); the name is free."""
        line = encode_line("DESTROYED", room.name, by)
        for member in room.members:
            member.rooms.discard(room.name)
            member.outbox.push(line)
            if self.on_leave is not None:
                self.on_leave(member, room.name)
        del self._rooms[room.name]

    # -- a replica: what the cluster's bus says, applied in its one order --------------------

    def enter_replica(
        self, member: Member, room_name: str, reply: bytes, admit: Admit | None = None
    ) -> bool:
        """A local session's join, as the bus ordered it: from here on it gets the room's
        messages, and ``reply`` comes before any of them. False: the room is gone.

        The limits, and ``admit``, judge the room as it is at this point of the bus's order
        (a ban, a mode change or other joins ordered before refuse it): ProtocolError.
        """
        with self._lock:
            room = self._rooms.get(room_name)
            if room is None or member.outbox.closing is not None:
                return False
            self._admit_locked(member, room)  # full by now, in the bus's order?
            if admit is not None:
                admit(room.view())
            room.members[member] = None
            member.rooms.add(room_name)
            member.outbox.push(reply)
            return True

    def leave_replica(self, member: Member, room_name: str) -> None:
        """A local session leaves at once (its PART, if any, comes with the bus's count)."""
        with self._lock:
            if room_name in member.rooms:
                self._leave_locked(member, room_name)

    def _leave_locked(self, member: Member, room_name: str) -> None:
        member.rooms.discard(room_name)
        room = self._rooms.get(room_name)
        if room is not None:
            room.members.pop(member, None)

    def presence(self, room_name: str, name: str, total: int, *, quiet: bool = False) -> None:
        """``name`` has ``total`` sessions in the room across the cluster now: the first
        one says ``JOIN``, the last one gone says ``PART`` (to this node's members).
        ``quiet``: a ban or destroy already said so on every node."""
        with self._lock:
            room = self._rooms.get(room_name)
            if room is None:
                return
            before = room.sessions_per_name.get(name, 0)
            if quiet and (before == 0 or name in room.banned):
                room.sessions_per_name.pop(name, None)
                return
            if total > 0:
                room.sessions_per_name[name] = total
            else:
                room.sessions_per_name.pop(name, None)
            if quiet:
                return
            if before == 0 and total > 0:
                line = encode_line("JOIN", room_name, name)
                for target in room.members:
                    if target.name != name:
                        target.outbox.push(line)
            elif before > 0 and total <= 0:
                # Never to the user's own sessions still here: a node declared dead (it was
                # paused) hears its users' PARTs before it closes their sessions.
                line = encode_line("PART", room_name, name)
                for target in room.members:
                    if target.name != name:
                        target.outbox.push(line)

    def load_presence(self, totals: dict[tuple[str, str], int]) -> None:
        """Who is where across the cluster, from a snapshot: replaces what was known."""
        with self._lock:
            for each in self._rooms.values():
                each.sessions_per_name.clear()
            for (room_name, name), total in totals.items():
                room = self._rooms.get(room_name)
                if room is not None and total > 0:
                    room.sessions_per_name[name] = total

    def relay_many(self, messages: Sequence[tuple[str, bytes, int]]) -> None:
        """Room messages from the bus, in its order: (room, line, the sender's serial when
        the sender is ours, else 0), each to the room's members here but its sender. The
        lock is taken once, and each member gets its lines as one chunk, pushed (and woken)
        once -- not once per line. The caller bounds the chunk's size."""
        pending: dict[Member, list[bytes]] = {}
        with self._lock:
            rooms = self._rooms
            start, end = 0, len(messages)
            while start < end:  # a run of messages to one room: its members looked up once
                room_name = messages[start][0]
                stop = start + 1
                while stop < end and messages[stop][0] == room_name:
                    stop += 1
                room = rooms.get(room_name)
                if room is not None:
                    self._relay_run_locked(room, messages[start:stop], pending)
                start = stop
            for target, lines in pending.items():
                target.outbox.push(lines[0] if len(lines) == 1 else b"".join(lines))

    def _relay_run_locked(
        self,
        room: Room,
        run: Sequence[tuple[str, bytes, int]],
        pending: dict[Member, list[bytes]],
    ) -> None:
        """Queue in ``pending`` a run of messages to ``room``: one joined chunk, shared by
        every member but the senders (each of which gets the others' lines only)."""
        lines = [line for _, line, _ in run]
        chunk = lines[0] if len(lines) == 1 else b"".join(lines)
        skips = {skip for _, _, skip in run if skip}
        count = 0
        for target in room.members:
            mine = chunk
            if target.serial in skips:  # its own messages are not sent back to it
                own = [line for _, line, skip in run if skip != target.serial]
                count += len(own)
                if not own:
                    continue
                mine = b"".join(own)
            else:
                count += len(lines)
            self.delivered_bytes += len(mine)
            queued = pending.get(target)
            if queued is None:
                pending[target] = [mine]
            else:
                queued.append(mine)
        self.deliveries += count

    def mail(self, name: str) -> None:
        """Stored private messages may wait for ``name``: its sessions look (each on its own
        thread, through an empty push whose receipt runs there)."""
        with self._lock:
            for target in self._sessions.get(name, ()):
                if target.on_mail is not None:
                    target.outbox.push(b"", on_sent=target.on_mail)

    def direct_replica(
        self, recipient: str, line: bytes, stamp: int, on_sent: Callable[[], None]
    ) -> int:
        """A private message from the bus to this node's sessions of ``recipient``;
        ``on_sent`` runs (on the session's thread) once a session has written it."""
        with self._lock:
            sessions = [s for s in self._sessions.get(recipient, ()) if s.stamp == stamp]
            for target in sessions:
                target.outbox.push(line, on_sent=on_sent)
            self._count_locked(len(sessions), line)
            return len(sessions)

    # -- messages ---------------------------------------------------------------------------

    def say(self, member: Member, room_name: str, text: str, admit: Admit | None = None) -> int:
        """Relay ``text`` to the room's other sessions; returns the message id.

        A session outside the room may post to it if ``admit`` lets it (it may join): so
        ``sealroom send`` posts without a JOIN and a PART around every message. Without
        ``admit``, only members may.
        """
        line = encode_line("MSG", room_name, member.name, text)
        with self._lock:
            room = self._rooms.get(room_name)
            if room is None:
                raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"{room_name} does not exist")
            if room_name not in member.rooms:
                if admit is None:
                    raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"you are not in {room_name}")
                admit(room.view())  # an outsider may post where it may join, never elsewhere
            message_id = self._next_id()
            self._send_locked(room, line, member)
            self._count_locked(len(room.members) - 1, line)
        return message_id

    def direct(
        self, sender: str, recipient: str, text: str, stamp: int | None = None
    ) -> tuple[int, int]:
        """Deliver a private message to every live session of ``recipient`` (with ``stamp``:
        only those of that account record, never a removed namesake's).

        Returns (message id, sessions reached); 0 reached means the recipient is offline.
        """
        line = encode_line("DM", sender, text)
        with self._lock:
            message_id = self._next_id()
            sessions = [
                s for s in self._sessions.get(recipient, ()) if stamp is None or s.stamp == stamp
            ]
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

"""The server's side of the wire grammar (SPEC.md section 1) as typed values.

Each line a server sends is one of these: the greeting (:class:`Hello`), a final reply
(:class:`Reply` for ``OK``, :class:`ErrorReply` for ``ERR``), an :data:`Event`, or a data
line that only a reply carries (``ROOM``: :class:`RoomListing`, from :func:`parse_room`).
Parsing is pure and total: a line this client does not understand parses to None rather than
raising, because a newer server may add words and the connection must survive them. Whether a
line is data of a reply or an event of its own depends on what came before it, so that is the
business of :mod:`sealroom.client.protocol`, not of this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeAlias

from sealroom.core.errors import ErrorCode

__all__ = [
    "Banned",
    "Bye",
    "Destroyed",
    "ErrorReply",
    "Event",
    "Hello",
    "History",
    "Info",
    "Invited",
    "Joined",
    "Message",
    "ModeChanged",
    "Parted",
    "PrivateMessage",
    "Reconnected",
    "Reply",
    "RoomListing",
    "ServerEvent",
    "ServerLine",
    "TopicChanged",
    "Wall",
    "parse_event",
    "parse_line",
    "parse_room",
]


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """``MSG #ROOM FROM TEXT``: someone said TEXT in a room you are in."""

    room: str
    sender: str
    text: str


@dataclass(frozen=True, slots=True)
class PrivateMessage:
    """``DM FROM TEXT``: a private message to you."""

    sender: str
    text: str


@dataclass(frozen=True, slots=True)
class Joined:
    """``JOIN #ROOM NAME``: a user's first session joined a room you are in."""

    room: str
    user: str


@dataclass(frozen=True, slots=True)
class Parted:
    """``PART #ROOM NAME``: a user's last session left a room you are in."""

    room: str
    user: str


@dataclass(frozen=True, slots=True)
class Wall:
    """``WALL FROM TEXT``: an administrator's announcement to everyone."""

    sender: str
    text: str


@dataclass(frozen=True, slots=True)
class Info:
    """``INFO TEXT``: a notice from the server."""

    text: str


@dataclass(frozen=True, slots=True)
class History:
    """``HIST TARGET ID TIME FROM TEXT``: a stored message.

    :meth:`Client.history` returns these; as an event, one is a private message stored for
    you while you were away (``target`` is then your own name).
    """

    target: str
    id: int
    time: datetime
    sender: str
    text: str


@dataclass(frozen=True, slots=True)
class TopicChanged:
    """``TOPIC #ROOM FROM TEXT``: an operator of a room you are in set its topic."""

    room: str
    by: str
    topic: str


@dataclass(frozen=True, slots=True)
class ModeChanged:
    """``MODE #ROOM FROM MODE``: an operator of a room you are in made it ``open`` or
    ``private`` (kept as text: a newer server may name other modes)."""

    room: str
    by: str
    mode: str


@dataclass(frozen=True, slots=True)
class Invited:
    """``INVITE #ROOM FROM``: you may now join the private room ``room``."""

    room: str
    by: str


@dataclass(frozen=True, slots=True)
class Banned:
    """``BANNED #ROOM FROM REASON``: you were banned from ``room`` and are out of it."""

    room: str
    by: str
    reason: str


@dataclass(frozen=True, slots=True)
class Destroyed:
    """``DESTROYED #ROOM FROM``: ``room`` was destroyed and you are out of it."""

    room: str
    by: str


@dataclass(frozen=True, slots=True)
class Bye:
    """The connection ended: the server's ``BYE REASON``, or ``connection-lost``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reconnected:
    """Automatic reconnection succeeded; ``rooms`` are the rooms joined again.

    No server line carries this: the blocking client reports its own reconnection in the
    same stream, so a reader sees the gap between a :class:`Bye` and the next message.
    """

    rooms: tuple[str, ...]


# What a server line can carry; Event adds what the blocking client reports itself.
ServerEvent: TypeAlias = (
    Message
    | PrivateMessage
    | Joined
    | Parted
    | Wall
    | Info
    | History
    | TopicChanged
    | ModeChanged
    | Invited
    | Banned
    | Destroyed
    | Bye
)
Event: TypeAlias = ServerEvent | Reconnected


# -- data lines that are never events ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoomListing:
    """``ROOM #ROOM MEMBERS MODE TOPIC``: one room of a ``/list`` reply.

    Only ever a data line, never an event: :meth:`Client.joinable_rooms` returns these.
    ``members`` is how many users are in the room now; ``topic`` may be empty.
    """

    room: str
    members: int
    mode: str
    topic: str


# -- the greeting and final replies --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """``HELLO sealroom VERSION NAME …``: the greeting, the first line of every connection.

    ``version`` stays text: a server speaking a version this client cannot parse as a
    number must still be named in the error.
    """

    version: str
    server_name: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A final ``OK`` reply: its verb, the rest of its line, and the data lines before it."""

    verb: str
    args: str
    data: tuple[str, ...] = ()

    @property
    def fields(self) -> list[str]:
        # Split at spaces, as the server writes them: str.split() would also split at
        # U+2028, NEL and other whitespace that a hostile server could slip into a field.
        return [field for field in self.args.split(" ") if field]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A final ``ERR CODE TEXT`` reply: the server refused the request.

    The code stays text as it came: an unknown code still ends the request it answers
    (the connection stays in step), and :attr:`code` is None for it.
    """

    code_text: str
    text: str

    @property
    def code(self) -> ErrorCode | None:
        try:
            return ErrorCode(self.code_text)
        except ValueError:
            return None


ServerLine: TypeAlias = Hello | Reply | ErrorReply | ServerEvent


# -- parsing -------------------------------------------------------------------------------------


def parse_line(line: str) -> ServerLine | None:
    """What one server line says; None for unknown words and malformed lines."""
    word, _, rest = line.partition(" ")
    if word == "OK":
        verb, _, args = rest.partition(" ")
        return Reply(verb, args)
    if word == "ERR":
        code_text, _, text = rest.partition(" ")
        return ErrorReply(code_text, text)
    if word == "HELLO":
        fields = line.split(" ", 4)
        if len(fields) < 4 or fields[1] != "sealroom":
            return None
        return Hello(fields[2], fields[3])
    return parse_event(line)


def parse_event(line: str) -> ServerEvent | None:
    """The event a server line carries; None for replies, unknown words and malformed lines."""
    word, _, rest = line.partition(" ")
    if word in ("MSG", "HIST"):
        fields = rest.split(" ", 2 if word == "MSG" else 4)
        if word == "MSG" and len(fields) == 3:
            return Message(fields[0], fields[1], fields[2])
        if word == "HIST" and len(fields) == 5:
            return _history(fields)
        return None
    if word in ("DM", "WALL"):
        sender, sep, text = rest.partition(" ")
        if not sep:
            return None
        return PrivateMessage(sender, text) if word == "DM" else Wall(sender, text)
    if word in ("JOIN", "PART"):
        room, sep, name = rest.partition(" ")
        if not sep or " " in name:
            return None
        return Joined(room, name) if word == "JOIN" else Parted(room, name)
    if word in ("TOPIC", "MODE", "BANNED"):
        return _room_change(word, rest)
    if word in ("INVITE", "DESTROYED"):
        # FROM is the last field: the rest of the line.
        room, sep, by = rest.partition(" ")
        if not sep:
            return None
        return Invited(room, by) if word == "INVITE" else Destroyed(room, by)
    if word == "INFO":
        return Info(rest)
    if word == "BYE":
        return Bye(rest)
    return None


def parse_room(line: str) -> RoomListing | None:
    """A ``ROOM`` data line of a ``/list`` reply; None for anything else or a malformed one."""
    word, _, rest = line.partition(" ")
    fields = rest.split(" ", 3)
    if word != "ROOM" or len(fields) < 3:
        return None
    room, members, mode = fields[:3]
    if not (members.isascii() and members.isdigit()):
        return None
    return RoomListing(room, int(members), mode, fields[3] if len(fields) == 4 else "")


def _room_change(word: str, rest: str) -> TopicChanged | ModeChanged | Banned | None:
    """``TOPIC``, ``MODE`` and ``BANNED``: #ROOM FROM, then the rest of the line (which a
    server may leave out when it is empty: an unexplained ban)."""
    fields = rest.split(" ", 2)
    if len(fields) < 2:
        return None
    room, by = fields[:2]
    last = fields[2] if len(fields) == 3 else ""
    if word == "TOPIC":
        return TopicChanged(room, by, last)
    if word == "MODE":
        return ModeChanged(room, by, last) if last else None
    return Banned(room, by, last)


def _history(fields: list[str]) -> History | None:
    target, id_text, time_text, sender, text = fields
    if not (id_text.isascii() and id_text.isdigit()):
        return None
    try:
        when = datetime.fromisoformat(time_text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return History(target, int(id_text), when, sender, text)

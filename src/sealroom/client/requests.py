"""The requests of protocol version 1 as typed methods: arguments checked, replies parsed.

This is the half of :class:`~sealroom.client.Client` that speaks the protocol's verbs; the
other half (:mod:`sealroom.client.blocking`) owns the socket, the events, keep-alives and
reconnecting. A verb checks its arguments before anything is sent, so a bad one never costs
a round trip or reaches the server, and turns the ``OK`` reply into a Python value.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Final

from sealroom.client.backoff import Backoff
from sealroom.client.credentials import Secret, Token
from sealroom.client.errors import (
    InvalidArgument,
    ProtocolViolation,
    RequestError,
    SealroomError,
)
from sealroom.client.events import (
    ErrorReply,
    Event,
    History,
    Reply,
    RoomListing,
    parse_event,
    parse_room,
)
from sealroom.core.text import escape_for_log, has_forbidden_chars, room_name, user_name

# Requests whose replies change what the client tracks; request() refuses them.
_TRACKED_VERBS: Final = frozenset({"login", "resume", "join", "part", "quit", "passwd", "token"})
# The words of data lines a raw request() may collect before its reply.
_DATA_WORDS: Final = ("INFO", "HIST", "ROOM")
ROOM_MODES: Final = ("open", "private")


class Requests:
    """The verbs. The transport (:class:`~sealroom.client.blocking.Client`) provides the
    state and the request machinery declared below."""

    _rooms: dict[str, None]
    _topics: dict[str, str]
    _current: str | None
    _token: Token | None
    _password: Secret | None
    _backoff: Backoff | None

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def _request(
        self,
        line: str,
        expect: str | None,
        data: tuple[str, ...] = (),
        *,
        counted: bool = False,
    ) -> Reply:
        raise NotImplementedError

    def _logged_in(self, reply: Reply, password: str | None) -> None:
        raise NotImplementedError

    def _left(self, room: str) -> None:
        raise NotImplementedError

    def _queue(self, event: Event) -> None:
        raise NotImplementedError

    def _fetch_token(self) -> None:
        raise NotImplementedError

    def login(self, name: str, password: str) -> None:
        """Log in; afterwards the session is in the server's default room."""
        canonical = _name(name)
        secret = checked_text(password, "password")
        with self._guard():
            reply = self._request(f"/login {canonical} {secret}", "login")
            self._logged_in(reply, password=secret)

    def resume(self, name: str, token: str | Token) -> None:
        """Log in with a resume token from :meth:`token` instead of the password."""
        canonical = _name(name)
        value = checked_text(token.value if isinstance(token, Token) else token, "token")
        if " " in value:
            raise InvalidArgument("a resume token holds no spaces")
        with self._guard():
            reply = self._request(f"/resume {canonical} {value}", "login")
            if isinstance(token, Token):
                self._token = token
            else:
                self._token = Token(value, None)
            self._logged_in(reply, password=None)

    def token(self) -> Token:
        """A resume token for this account; reconnecting uses it too."""
        with self._guard():
            reply = self._request("/token", "token")
            token = parse_token(reply)
            self._token = token
            return token

    def join(self, room: str) -> str:
        """Join (and create, if allowed) ``room``; it becomes the current room.

        Returns the room's canonical name; its topic, which the reply carries, is then in
        :attr:`topics`.
        """
        canonical = _room(room)
        with self._guard():
            reply = self._request(f"/join {canonical}", "join")
            named, _, topic = reply.args.partition(" ")
            joined = named or canonical
            self._rooms.pop(joined, None)
            self._rooms[joined] = None
            self._topics[joined] = topic
            self._current = joined
            return joined

    def part(self, room: str | None = None) -> str:
        """Leave ``room`` (default: the current room); returns the room left."""
        line = "/part" if room is None else f"/part {_room(room)}"
        with self._guard():
            reply = self._request(line, "part")
            left = reply.fields[0] if reply.fields else (room or "")
            self._left(left)
            return left

    def say(self, text: str, room: str | None = None) -> int:
        """Send ``text`` to ``room`` (default: the current room); returns the message ID."""
        body = _message(text)
        if room is None:
            # A plain line goes to the current room; one that starts with / is doubled.
            line = "/" + body if body.startswith("/") else body
        else:
            line = f"/say {_room(room)} {body}"
        with self._guard():
            return _message_id(self._request(line, "say"))

    def msg(self, name: str, text: str) -> int:
        """A private message to ``name`` (stored if they are offline); returns its ID."""
        line = f"/msg {_name(name)} {_message(text)}"
        with self._guard():
            return _message_id(self._request(line, "msg"))

    def who(self, room: str | None = None) -> list[str]:
        """The members of ``room`` (default: the current room), sorted."""
        line = "/who" if room is None else f"/who {_room(room)}"
        with self._guard():
            return self._request(line, "who").fields[1:]

    def list_rooms(self) -> list[str]:
        """The rooms the server says this session is in (``/rooms``).

        The rooms one may join are :meth:`joinable_rooms` (``/list``).
        """
        with self._guard():
            return self._request("/rooms", "rooms").fields

    def joinable_rooms(self) -> list[RoomListing]:
        """The rooms this account may join (``/list``), sorted by name.

        A server that shows only its first ``rooms.list_max`` rooms says so in an ``INFO``
        line, which is handed out as an :class:`~sealroom.client.events.Info` event.
        """
        with self._guard():
            reply = self._request("/list", "list", data=("ROOM", "INFO"))
            rooms: list[RoomListing] = []
            for line in reply.data:
                listing = parse_room(line)
                if listing is not None:
                    rooms.append(listing)
                elif (event := parse_event(line)) is not None:
                    self._queue(event)
            return rooms

    def topic(self, room: str, text: str | None = None) -> str:
        """The topic of ``room``; with ``text``, set it first (operators). Returns the topic.

        The protocol cannot set an empty topic (``/topic #ROOM`` alone asks for it), so an
        empty ``text`` is refused here rather than sent as a question.
        """
        canonical = _room(room)
        line = f"/topic {canonical}"
        if text is not None:
            if not checked_text(text, "topic").strip():
                raise InvalidArgument("a topic cannot be set to nothing")
            line += f" {text}"
        with self._guard():
            named, _, topic = self._request(line, "topic").args.partition(" ")
            if (named or canonical) in self._rooms:
                self._topics[named or canonical] = topic
            return topic

    def mode(self, room: str, mode: str) -> str:
        """Operators: make ``room`` ``open`` (anyone not banned may join) or ``private``
        (only operators and invited users; its present members count as invited)."""
        wanted = mode.lower()
        if wanted not in ROOM_MODES:
            raise InvalidArgument(f"a mode is {' or '.join(ROOM_MODES)}")
        line = f"/mode {_room(room)} {wanted}"
        with self._guard():
            fields = self._request(line, "mode").fields
            return fields[1] if len(fields) > 1 else wanted

    def invite(self, name: str, room: str) -> None:
        """Operators: let ``name`` into ``room`` while it is private."""
        self._moderate("invite", name, room)

    def ban(self, name: str, room: str, reason: str | None = None) -> None:
        """Operators: take every session of ``name`` out of ``room`` and keep ``name`` out."""
        self._moderate("ban", name, room, reason)

    def unban(self, name: str, room: str) -> None:
        """Operators: lift a ban (it does not invite)."""
        self._moderate("unban", name, room)

    def op(self, name: str, room: str) -> None:
        """The owner (or an admin): make ``name`` an operator of ``room``."""
        self._moderate("op", name, room)

    def deop(self, name: str, room: str) -> None:
        """The owner (or an admin): ``name`` is an operator of ``room`` no more."""
        self._moderate("deop", name, room)

    def destroy(self, room: str) -> None:
        """The owner (or an admin): delete ``room``, its settings and its history."""
        canonical = _room(room)
        with self._guard():
            self._request(f"/destroy {canonical}", "destroy")
            self._left(canonical)  # the DESTROYED event has done it if this session was in it

    def _moderate(self, verb: str, name: str, room: str, reason: str | None = None) -> None:
        line = f"/{verb} {_name(name)} {_room(room)}"
        if reason:
            line += f" {checked_text(reason, 'reason')}"
        with self._guard():
            self._request(line, verb)

    def history(self, target: str, count: int | None = None) -> list[History]:
        """The last ``count`` stored messages of a room or of your conversation with a user.

        Oldest first. Servers without ``/history`` raise :class:`RequestError`
        (``bad-command``).
        """
        canonical = _room(target) if target.startswith("#") else _name(target)
        if count is not None and count < 1:
            raise InvalidArgument("count must be positive")
        line = f"/history {canonical}" + (f" {count}" if count is not None else "")
        with self._guard():
            # Stored private messages (HIST lines too) may come right before the reply's own
            # lines; the protocol keeps only the last COUNT as the reply's.
            reply = self._request(line, "history", data=("HIST",), counted=True)
            fields = reply.fields
            if len(fields) < 2 or not (fields[1].isascii() and fields[1].isdigit()):
                raise ProtocolViolation("no count in OK history")
        entries = [parse_event(data) for data in reply.data]
        return [entry for entry in entries if isinstance(entry, History)]

    def passwd(self, old: str, new: str) -> None:
        """Change your password (the protocol cannot carry an old password with spaces)."""
        old_secret, new_secret = checked_text(old, "password"), checked_text(new, "password")
        if " " in old_secret:
            raise InvalidArgument("the protocol cannot carry an old password with spaces")
        with self._guard():
            self._request(f"/passwd {old_secret} {new_secret}", "passwd")
            # A password change revokes resume tokens.
            self._token = None
            if self._password is not None:
                self._password = Secret(new_secret)
            if self._backoff is not None:
                self._fetch_token()

    def ping(self, token: str | None = None) -> str:
        """A liveness check; returns the token the server echoed."""
        line = "/ping" + (f" {checked_text(token, 'token')}" if token else "")
        with self._guard():
            return self._request(line, "ping").args

    def help(self) -> list[str]:
        """The server's ``INFO`` lines for ``/help``."""
        with self._guard():
            reply = self._request("/help", "help", data=("INFO",))
        return [line.partition(" ")[2] for line in reply.data]

    def kick(self, name: str, reason: str | None = None) -> None:
        """Admins: disconnect every session of ``name``."""
        line = f"/kick {_name(name)}" + (f" {checked_text(reason, 'reason')}" if reason else "")
        with self._guard():
            self._request(line, "kick")

    def wall(self, text: str) -> None:
        """Admins: an announcement to every logged-in session."""
        with self._guard():
            self._request(f"/wall {_message(text)}", "wall")

    def request(self, line: str) -> Reply:
        """Send one raw request line and return its final reply (data lines included).

        For requests this class has no method for. Requests whose effects the client tracks
        (login, resume, join, part, quit, passwd, token) must use their methods.
        """
        checked_text(line, "request")
        if not line:
            raise InvalidArgument("empty request")
        if line.startswith("/") and not line.startswith("//"):
            verb = line[1:].partition(" ")[0].lower()
            if verb in _TRACKED_VERBS:
                raise InvalidArgument(f"use the {verb}() method for /{verb}")
        with self._guard():
            return self._request(line, None, data=_DATA_WORDS)


# -- helpers ------------------------------------------------------------------------------------


def checked_text(value: str, what: str) -> str:
    """``value`` if it can travel in one line; InvalidArgument otherwise (nothing is sent)."""
    if has_forbidden_chars(value):
        raise InvalidArgument(f"a {what} may not hold line breaks or control characters")
    return value


def _message(text: str) -> str:
    checked_text(text, "message")
    if not text.strip():
        raise InvalidArgument("empty message")
    return text


def _name(raw: str) -> str:
    name = user_name(raw)
    if name is None:
        raise InvalidArgument(f"{escape_for_log(raw)!r} is not a user name ([a-z0-9_.-])")
    return name


def _room(raw: str) -> str:
    name = room_name(raw)
    if name is None:
        raise InvalidArgument(f"{escape_for_log(raw)!r} is not a room (# then [a-z0-9_-])")
    return name


def _message_id(reply: Reply) -> int:
    fields = reply.fields
    if len(fields) < 2 or not (fields[-1].isascii() and fields[-1].isdigit()):
        raise ProtocolViolation(f"no message ID in OK {reply.verb}")
    return int(fields[-1])


def parse_token(reply: Reply) -> Token:
    fields = reply.fields
    if not fields:
        raise ProtocolViolation("OK token without a token")
    expires: datetime | None = None
    if len(fields) > 1:
        with contextlib.suppress(ValueError):
            expires = datetime.fromisoformat(fields[1])
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
    return Token(fields[0], expires)


def request_error(reply: ErrorReply) -> SealroomError:
    """The exception for an ``ERR``; an unknown code still answered its request, so the
    connection stays in step and is kept."""
    code = reply.code
    if code is None:
        shown = escape_for_log(reply.code_text[:40])
        return ProtocolViolation(f"unknown error code {shown}: {escape_for_log(reply.text)}")
    return RequestError(code, reply.text)

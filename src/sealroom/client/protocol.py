"""The client side of the protocol without I/O (h11's model): bytes in, events out.

A :class:`ClientProtocol` touches no socket, clock or thread. The caller hands it the bytes it
received (:meth:`~ClientProtocol.receive_data`) and takes out what they meant
(:meth:`~ClientProtocol.next_event`); it asks for the bytes of a request
(:meth:`~ClientProtocol.send_request`) and writes them itself. That keeps the one hard part
of a Sealroom client -- telling a reply from an event -- testable with byte strings, and
usable under any I/O model: :mod:`sealroom.client.blocking` drives it over a blocking TLS
socket.

Replies are told from events by order alone. The server answers requests in order and never
puts an event between a reply's data lines (``INFO``, ``HIST``, ``ROOM``) and its final line,
so data lines count as the reply's only when its final line follows them directly; a run of
them broken by anything else was events. For ``/history`` the count in ``OK history TARGET COUNT``
settles the rest: stored private messages (``HIST`` lines too) delivered just before the
reply are events, and only the last COUNT lines are the reply's. Keepalive pings are
awaited like any request, and their replies, which come first, are consumed here.

As in h11, :meth:`~ClientProtocol.next_event` raises only :class:`RemoteProtocolError` (the
server broke the protocol and the connection cannot go on); any other exception is a bug.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from sealroom import PROTOCOL_VERSION
from sealroom.client.events import (
    Bye,
    ErrorReply,
    Hello,
    Reply,
    ServerLine,
    parse_event,
    parse_line,
)
from sealroom.core.protocol import Framing, LineBuffer
from sealroom.core.text import escape_for_log

__all__ = [
    "DEFAULT_MAX_DATA_LINES",
    "DEFAULT_MAX_LINE_BYTES",
    "KEEPALIVE_REQUEST",
    "BadGreeting",
    "ClientProtocol",
    "LineTooLong",
    "RemoteProtocolError",
    "State",
]

log = logging.getLogger("sealroom.client")

# Server lines carry at most the server's max_line_bytes of text plus a short prefix; a
# line longer than this is a broken or hostile server, never a message.
DEFAULT_MAX_LINE_BYTES: Final = 65536
DEFAULT_MAX_DATA_LINES: Final = 10_000
KEEPALIVE_REQUEST: Final = "/ping keepalive"


class RemoteProtocolError(Exception):
    """The server broke the protocol: what it sends next cannot be trusted."""


class LineTooLong(RemoteProtocolError):  # noqa: N818 -- names the condition
    """A line over the bound; the stream is given up rather than resynchronised."""


class BadGreeting(RemoteProtocolError):  # noqa: N818 -- names the condition
    """The first line was not ``HELLO sealroom VERSION NAME`` in a version we speak.

    ``version`` is the version the server named, or None when it is no Sealroom server.
    """

    def __init__(self, greeting: str, version: str | None = None) -> None:
        super().__init__(f"bad greeting: {escape_for_log(greeting[:80])}")
        self.greeting = greeting
        self.version = version


class State(enum.Enum):
    """Where the connection is, as far as the server's lines go."""

    GREETING = "greeting"  # nothing but HELLO is valid yet
    OPEN = "open"
    CLOSED = "closed"  # after BYE or a protocol error: nothing more is read


@dataclass(frozen=True, slots=True)
class _Awaited:
    """What is known about the reply a sent request still waits for.

    The request's own text is not kept: it may hold a password or a resume token.
    """

    verb: str | None  # the verb of the OK that answers it; None: any verb
    data: frozenset[str]  # the words of the data lines its reply may carry
    counted: bool  # OK VERB TARGET COUNT: only the last COUNT data lines are the reply's
    keepalive: bool  # its reply is consumed here, never handed out


class ClientProtocol:
    """One connection's client protocol: server bytes in, typed lines out, requests out.

    :meth:`next_event` returns, in order: the :class:`~sealroom.client.events.Hello`, then
    :data:`~sealroom.client.events.Event` values, and a :class:`~sealroom.client.events.Reply`
    or :class:`~sealroom.client.events.ErrorReply` for each request sent (keepalives
    excepted), with the reply's data lines attached. None means it needs more bytes.

    Bounded: a line over ``max_line_bytes`` is a :class:`LineTooLong`, a reply with more than
    ``max_data_lines`` data lines a :class:`RemoteProtocolError`. What it buffers beyond that
    is what the caller fed it and has not taken out yet.
    """

    def __init__(
        self,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_data_lines: int = DEFAULT_MAX_DATA_LINES,
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_data_lines = max_data_lines
        self.state = State.GREETING
        self._framer = LineBuffer(max_line_bytes)
        self._lines: deque[bytes | Framing] = deque()  # framed, not yet interpreted
        self._ready: deque[ServerLine] = deque()  # interpreted, not yet taken out
        self._awaited: deque[_Awaited] = deque()  # sent requests, oldest first
        self._data: list[str] = []  # data lines that may belong to the next reply

    def __repr__(self) -> str:
        return f"<ClientProtocol {self.state.value} awaiting={len(self._awaited)}>"

    # -- requests out -------------------------------------------------------------------------

    def send_request(
        self,
        line: str,
        *,
        expect: str | None = None,
        data: tuple[str, ...] = (),
        counted: bool = False,
    ) -> bytes:
        """The bytes of request ``line``, whose reply is to be ``OK expect`` (any verb: None).

        ``data`` names the words of the data lines the reply may carry (``INFO``, ``HIST``,
        ``ROOM``);
        ``counted`` says its second field counts them (``OK history TARGET COUNT``).
        """
        if "\n" in line or "\r" in line:
            # One request is one line: a second one would be answered by a reply nobody awaits.
            raise ValueError("a request is a single line")
        self._awaited.append(_Awaited(expect, frozenset(data), counted, keepalive=False))
        return line.encode("utf-8") + b"\n"

    def send_keepalive(self) -> bytes:
        """The bytes of a ``/ping`` whose reply only proves the server is alive."""
        self._awaited.append(_Awaited("ping", frozenset(), counted=False, keepalive=True))
        return KEEPALIVE_REQUEST.encode("ascii") + b"\n"

    @property
    def keepalives_unanswered(self) -> int:
        return sum(1 for awaited in self._awaited if awaited.keepalive)

    # -- bytes in, lines out -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the server; :meth:`next_event` then says what they meant."""
        self._framer.feed(data)
        while (item := self._framer.next_event()) is not None:
            if item != b"":  # empty lines carry nothing; skipping them keeps has_buffered exact
                self._lines.append(item)

    @property
    def has_buffered(self) -> bool:
        """Whether :meth:`next_event` has complete lines to work on without more bytes.

        A caller that waits on the socket with ``select`` must ask this first: lines already
        received are invisible to ``select``.
        """
        return bool(self._ready or self._lines)

    def next_event(self) -> ServerLine | None:
        """The next thing the server said, or None until more bytes arrive."""
        while not self._ready:
            if self.state is State.CLOSED:
                return None
            line = self._next_line()
            if line is None:
                return None
            try:
                self._interpret(line)
            except RemoteProtocolError:
                self._close()
                raise
        return self._ready.popleft()

    def _next_line(self) -> str | None:
        if not self._lines:
            return None
        item = self._lines.popleft()
        if item is Framing.LINE_TOO_LONG:
            self._close()
            raise LineTooLong(f"the server sent a line over {self.max_line_bytes} bytes")
        assert isinstance(item, bytes)  # the framer's only other output  # noqa: S101
        # Server text is shown, not trusted: undecodable bytes become U+FFFD, not an error.
        return item.decode("utf-8", errors="replace")

    # -- what a line means here ----------------------------------------------------------------

    def _interpret(self, line: str) -> None:
        item = parse_line(line)
        if self.state is State.GREETING:
            if not isinstance(item, Hello):
                raise BadGreeting(line)
            if item.version != str(PROTOCOL_VERSION):
                raise BadGreeting(line, item.version)
            self.state = State.OPEN
            self._ready.append(item)
            return
        if isinstance(item, Reply | ErrorReply):
            self._final(item)
            return
        if isinstance(item, Bye):
            self._flush_data()
            self._ready.append(Bye(item.reason or "bye"))
            self._close()
            return
        awaited = self._user_request()
        if awaited is not None and line.partition(" ")[0] in awaited.data:
            if len(self._data) >= self.max_data_lines:
                raise RemoteProtocolError("too many data lines for one reply")
            self._data.append(line)
            return
        # Anything else ends a run of data lines, which were therefore events.
        self._flush_data()
        event = parse_event(line)
        if event is None:
            log.debug("ignoring a line from the server: %s", escape_for_log(line[:200]))
        else:
            self._ready.append(event)

    def _user_request(self) -> _Awaited | None:
        """The request a data line may belong to: the first one that is not a keepalive.

        Keepalives are only sent while no other request waits, so their replies come first.
        """
        return next((awaited for awaited in self._awaited if not awaited.keepalive), None)

    def _final(self, reply: Reply | ErrorReply) -> None:
        if not self._awaited:
            raise RemoteProtocolError("a reply to no request")
        awaited = self._awaited.popleft()
        if awaited.keepalive:
            return  # a keepalive's reply; it does not end a run of the next reply's data lines
        if isinstance(reply, ErrorReply):
            self._flush_data()  # an ERR has no data lines: these were events
            self._ready.append(reply)
            return
        if awaited.verb is not None and reply.verb != awaited.verb:
            raise RemoteProtocolError(
                f"expected OK {awaited.verb}, got OK {escape_for_log(reply.verb)}"
            )
        data, self._data = tuple(self._data), []
        if awaited.counted:
            data = self._counted(reply, data)
        self._ready.append(replace(reply, data=data))

    def _counted(self, reply: Reply, data: tuple[str, ...]) -> tuple[str, ...]:
        """The reply's own data lines; the ones before them become events.

        Without a readable count the data is left whole, for the caller to refuse the reply.
        """
        fields = reply.fields
        if len(fields) < 2 or not (fields[1].isascii() and fields[1].isdigit()):
            return data
        count = int(fields[1])
        if count > len(data):
            raise RemoteProtocolError(f"OK {reply.verb} counts more lines than came")
        split = len(data) - count
        self._events_from(data[:split])
        return data[split:]

    def _flush_data(self) -> None:
        self._events_from(self._data)
        self._data = []

    def _events_from(self, lines: Iterable[str]) -> None:
        for line in lines:
            event = parse_event(line)
            if event is not None:
                self._ready.append(event)

    def _close(self) -> None:
        self.state = State.CLOSED
        self._lines.clear()
        self._awaited.clear()
        self._data = []

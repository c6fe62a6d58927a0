"""One web client's connection: TLS, then HTTP/1.1 (h11), then a WebSocket (wsproto).

A :class:`WebConnection` is a :class:`~sealroom.net.connection.Connection`, driven by the same
reactor thread that owns every socket, with the same outbox, worker pools and deadlines. What
differs is what is spoken after the TLS handshake, so that is all it overrides:

- :meth:`_open_session` (the hook the TLS handshake ends in) enters the HTTP phase; the
  page and its files are answered there, and the session begins only at the upgrade to a
  WebSocket, with the very same ``Session`` the TLS port uses (validator, authentication,
  rate limits, outbox bound, slow-consumer rule, login and idle timeouts).
- :meth:`on_event` and :meth:`on_tick` run the HTTP phase (a request must arrive whole
  within ``limits.handshake_timeout_s``), and hand over to the base class after it.
- :meth:`read`, :meth:`flush` and :meth:`close_notify` put the session's lines into
  WebSocket text messages and take them out: one message, one line.

h11 and wsproto parse and frame; nothing here writes HTTP or WebSocket framing by hand.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import ssl
import time

import h11
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from sealroom.core.text import escape_for_log
from sealroom.net.connection import CLOSE, READ, READ_CHUNK, WRITE, Connection, Shared, State
from sealroom.net.web.door import WebDoor
from sealroom.net.web.framing import MessageAssembler
from sealroom.net.web.site import Answer, Refusal, Upgrade, allowed_origins, error_answer
from sealroom.session.machine import Session
from sealroom.state.outbox import Receipt

log = logging.getLogger("sealroom.server")

# HTTP requests one keep-alive connection may make (the page needs four).
MAX_REQUESTS = 100
# RFC 6455 close codes for the BYE reasons that have their own; any other BYE closes 1000.
CLOSE_CODES = {
    "shutting-down": 1001,
    "binary-message": 1003,
    "internal-error": 1011,
    "node-unavailable": 1013,  # try again later: through the balancer, to a healthy node
}
# Refusals worth a line in the log at info level; the rest (404 and the like) at debug.
_NOTEWORTHY = frozenset({400, 403, 413, 431})


class Phase(enum.Enum):
    TLS = "tls"  # the base class's handshake
    HTTP = "http"  # requests for the page and its files, until an upgrade
    WEBSOCKET = "websocket"  # the session speaks, one line per text message


class WebConnection(Connection):
    """A web client's TLS socket: HTTP answers, then one session over a WebSocket."""

    __slots__ = ("door", "http", "message", "origins", "phase", "requests", "upgrade", "wire", "ws")

    def __init__(self, shared: Shared, sock: ssl.SSLSocket, peer: str, door: WebDoor) -> None:
        super().__init__(shared, sock, peer)
        settings = self.services.settings
        self.door = door
        self.phase = Phase.TLS
        self.http: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=settings.web.max_request_bytes
        )
        self.upgrade: tuple[Upgrade, h11.Request] | None = None  # sent at the request's end
        self.ws: WsConnection | None = None
        self.wire = bytearray()  # HTTP answers and WebSocket control frames, written first
        self.requests = 0
        self.message = MessageAssembler(settings.limits.max_line_bytes)
        self.origins = allowed_origins(settings.server_name, door.port, settings.web.origins)
        door.add(self)

    def __repr__(self) -> str:
        return f"<WebConnection {self.peer} {self.phase.value}>"

    # -- the phases ----------------------------------------------------------------------------

    def _open_session(self) -> int:
        if self.phase is Phase.TLS:  # the handshake is done: HTTP comes first
            self.phase = Phase.HTTP
            self.state = State.OPEN
            self._await_request()
            return self._http_turn()
        return super()._open_session()  # the upgrade: the session begins, with HELLO

    def on_event(self, readable: bool) -> int:
        if self.phase is Phase.HTTP and self.state is State.OPEN:
            return self._http_turn()
        return super().on_event(readable)

    def on_tick(self, now: float) -> int | None:
        if self.phase is not Phase.HTTP or self.state is not State.OPEN:
            return super().on_tick(now)
        if now >= self.close_deadline:
            return CLOSE
        if now >= self.deadline:
            log.info("%s [-]: HTTP request timed out", self.peer)
            return CLOSE
        return None

    def _await_request(self) -> None:
        self.deadline = time.monotonic() + self.services.settings.limits.handshake_timeout_s

    # -- HTTP --------------------------------------------------------------------------------

    def _http_turn(self) -> int:
        """Answer what has arrived, one request at a time; then say what to wait for."""
        http = self.http
        assert http is not None  # noqa: S101 - the HTTP phase has its h11 connection
        if self.outbox.closing is not None:  # shutting down before any session began
            return CLOSE
        while True:
            if not self.flush():
                return CLOSE
            if self.unsent is not None:
                return WRITE  # read no further request until this answer is written
            if http.our_state is h11.SWITCHED_PROTOCOL:
                return self._upgrade(http)
            if http.our_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
                self.close_notify()
                return CLOSE
            if http.our_state is h11.DONE and http.their_state is h11.DONE:
                if self.requests >= MAX_REQUESTS:
                    self.close_notify()
                    return CLOSE
                http.start_next_cycle()
                self._await_request()
            try:
                event = self._next_http_event(http)
            except h11.RemoteProtocolError as error:
                if http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                    return CLOSE
                status = error.error_status_hint
                self._answer(http, Refusal(error_answer(status, close=True), str(error)), b"GET")
                continue
            if event is None:
                return READ
            if not self._on_http_event(http, event):
                return CLOSE

    def _next_http_event(self, http: h11.Connection) -> h11.Event | None:
        """h11's next event, reading the socket when it needs data; None: wait for more."""
        while True:
            event = http.next_event()
            if event is not h11.NEED_DATA:
                return event if isinstance(event, h11.Event) else None  # h11.PAUSED: nothing
            try:
                data = self.sock.recv(READ_CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return None
            except (ssl.SSLError, OSError) as error:
                log.debug("%s [-]: read failed: %s", self.peer, error)
                return h11.ConnectionClosed()
            self.services.counters.bytes_received += len(data)
            http.receive_data(data)  # b"" is the end of the stream

    def _on_http_event(self, http: h11.Connection, event: h11.Event) -> bool:
        """Handle one event; False to close the connection now."""
        if isinstance(event, h11.Request):
            self.requests += 1
            answer = self.door.site.answer(
                event, origins=self.origins, limits=self.services.settings.web
            )
            if isinstance(answer, Upgrade):
                self.upgrade = (answer, event)  # 101 only once the request has ended
            else:
                self._answer(http, answer, event.method)
        elif isinstance(event, h11.EndOfMessage) and self.upgrade is not None:
            # The site checked its Upgrade header, which is what makes h11 expect a switch.
            upgrade, request = self.upgrade
            self.upgrade = None
            self._send(http, upgrade.event())
            self.door.count_answer(101)
            log.debug("%s [-]: GET %s 101", self.peer, _target(request))
        elif isinstance(event, h11.ConnectionClosed):
            return False
        return True  # Data of a body we do not read: the answer said Connection: close

    def _answer(self, http: h11.Connection, answer: Answer | Refusal, method: bytes) -> None:
        if isinstance(answer, Refusal):
            status = answer.answer.status
            level = logging.INFO if status in _NOTEWORTHY else logging.DEBUG
            log.log(level, "%s [-]: HTTP %d: %s", self.peer, status, escape_for_log(answer.reason))
            answer = answer.answer
        for event in answer.events(method):
            self._send(http, event)
        self.door.count_answer(answer.status)

    def _send(self, http: h11.Connection, event: h11.Event) -> None:
        data = http.send(event)
        if data:
            self.wire += data

    def _upgrade(self, http: h11.Connection) -> int:
        """The 101 is written: the rest is WebSocket, and the session begins."""
        trailing, _ = http.trailing_data
        self.http = None
        self.ws = WsConnection(ConnectionType.SERVER, trailing_data=bytes(trailing))
        self.phase = Phase.WEBSOCKET
        log.info("%s [-]: WebSocket open", self.peer)
        return super()._open_session()

    # -- WebSocket I/O -------------------------------------------------------------------------

    def read(self) -> bool:
        """Feed the lines of whole text messages to the session; False when the peer is gone."""
        self._check_owner()
        ws, session = self.ws, self.session
        if ws is None or session is None:
            return False
        try:
            data = self.sock.recv(READ_CHUNK)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            self.maybe_readable = False  # what came with the upgrade may still be pending
        except (ssl.SSLError, OSError) as error:
            log.debug("%s: read failed: %s", session.describe(), error)
            return False
        else:
            if not data:
                return False
            self.services.counters.bytes_received += len(data)
            ws.receive_data(data)
            self.maybe_readable = True
        return self._take_messages(ws, session)

    def _take_messages(self, ws: WsConnection, session: Session) -> bool:
        for event in ws.events():
            if isinstance(event, TextMessage):
                line = self.message.add(event.data, event.message_finished)
                if line is not None:
                    session.feed(line)
            elif isinstance(event, BytesMessage):
                log.info("%s: binary WebSocket message; closing", session.describe())
                self.outbox.close("binary-message", wake=False)
                return True  # BYE, then close 1003 (close_notify)
            elif isinstance(event, Ping):
                self.wire += ws.send(event.response())
            elif isinstance(event, CloseConnection):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    reply = ws.send(event.response())
                else:  # wsproto found a protocol error in what they sent: say which
                    reason = event.reason or ""
                    log.info("%s: WebSocket error: %s", session.describe(), escape_for_log(reason))
                    reply = ws.send(CloseConnection(code=event.code, reason=reason))
                self._send_last(reply)
                return False
        return True

    def flush(self) -> bool:
        """Write HTTP answers, control frames and queued lines (one text message each), many
        per TLS write; False when the peer is gone."""
        self._check_owner()
        while True:
            if self.unsent is None:
                data, self.receipts = self._next_chunk()
                if not data:  # receipts of empty pushes (a nudge) run at once
                    for receipt in self.receipts:
                        receipt()
                    self.receipts = []
                    return True
                self.unsent = data
            try:
                sent = self.sock.send(self.unsent)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return True
            except (ssl.SSLError, OSError) as error:
                log.debug("%s: write failed: %s", self.peer, error)
                return False
            self.services.counters.bytes_sent += sent
            if sent < len(self.unsent):
                self.unsent = memoryview(self.unsent)[sent:]
                continue
            self.unsent = None
            for receipt in self.receipts:
                receipt()

    def _next_chunk(self) -> tuple[bytes, list[Receipt]]:
        chunk = bytes(self.wire)
        self.wire.clear()
        receipts: list[Receipt] = []
        ws = self.ws
        if ws is not None and ws.state is ConnectionState.OPEN:
            data, receipts = self.outbox.take()
            if data:
                frames = self.door.frames(data, lambda line: ws.send(TextMessage(data=line)))
                chunk = chunk + frames if chunk else frames
        return chunk, receipts

    def close_notify(self) -> None:
        """The session ended (BYE is written): close the WebSocket, then TLS."""
        ws = self.ws
        if ws is not None and ws.state is ConnectionState.OPEN:
            reason = self.outbox.closing or "closed"
            code = CLOSE_CODES.get(reason, 1000)
            self._send_last(ws.send(CloseConnection(code=code, reason=reason)))
        super().close_notify()

    def _send_last(self, frame: bytes) -> None:
        """A closing frame, written if the socket takes it now: the connection ends anyway."""
        self._check_owner()
        if self.unsent is not None:  # half a write is out; only its retry may come next
            return
        with contextlib.suppress(ssl.SSLError, OSError, ValueError):
            self.sock.send(bytes(self.wire) + frame)
        self.wire.clear()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.door.remove(self)


def _target(request: h11.Request) -> str:
    return escape_for_log(request.target.decode("ascii", "replace"))

"""The blocking client: one TLS socket, driven through the sans-I/O :class:`ClientProtocol`.

This module owns what the protocol must not: the socket, the clock and the waiting. It
opens and verifies the connection, feeds what it reads to the protocol, writes the requests
the protocol encodes, bounds every wait with a timeout, sends keepalive pings, and
reconnects. What the bytes mean is decided in :mod:`sealroom.client.protocol`; the verbs,
their argument checks and reply parsing, in :mod:`sealroom.client.requests`.

One :class:`Client` is used from one thread: OpenSSL forbids two threads on one SSL object,
so the library never starts a thread of its own.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from sealroom import PROTOCOL_VERSION
from sealroom.client.backoff import Backoff
from sealroom.client.credentials import Secret, Token
from sealroom.client.errors import (
    ConnectError,
    ConnectionClosed,
    ProtocolViolation,
    ReconnectFailed,
    RequestError,
    RequestTimeout,
    SealroomError,
)
from sealroom.client.events import (
    Banned,
    Bye,
    Destroyed,
    ErrorReply,
    Event,
    Hello,
    History,
    Reconnected,
    Reply,
    ServerLine,
    TopicChanged,
)
from sealroom.client.protocol import (
    DEFAULT_MAX_LINE_BYTES,
    BadGreeting,
    ClientProtocol,
    LineTooLong,
    RemoteProtocolError,
)
from sealroom.client.requests import Requests, checked_text, parse_token, request_error
from sealroom.client.tls import build_client_context
from sealroom.core.errors import ErrorCode, UserError
from sealroom.core.text import escape_for_log

__all__ = [
    "DEFAULT_KEEPALIVE_S",
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_MAX_QUEUED_EVENTS",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT_S",
    "Client",
]

log = logging.getLogger("sealroom.client")

DEFAULT_PORT: Final = 7443
DEFAULT_TIMEOUT_S: Final = 10.0
DEFAULT_MAX_QUEUED_EVENTS: Final = 10_000
DEFAULT_KEEPALIVE_S: Final = 60.0
# IDs of stored messages already handed out, kept to drop repeats (a server that crashed while
# delivering may send some again). A login delivers at most the server's per-user quota.
SEEN_IDS_KEPT: Final = 10_000
RECV_BYTES: Final = 65536
QUIT_LINGER_S: Final = 2.0  # how long quit() waits for the server's BYE after OK quit

# BYE reasons after which reconnecting would be wrong: we asked to leave, an admin removed
# us, or the account is gone or locked.
_FINAL_REASONS: Final = ("quit", "kicked", "account-")


class _TransportError(Exception):
    """Internal: the transport failed; ``reason`` becomes the Bye reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class SeenIds:
    """The last ``limit`` message IDs seen, to tell a repeat from a first delivery."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a SeenIds keeps at least 1 ID")
        self.limit = limit
        self._ids: dict[int, None] = {}  # an ordered set, oldest first

    def __len__(self) -> int:
        return len(self._ids)

    def first_time(self, message_id: int) -> bool:
        """Whether ``message_id`` is new; it is remembered (as the newest) either way."""
        if message_id in self._ids:
            return False
        self._ids[message_id] = None
        if len(self._ids) > self.limit:
            del self._ids[next(iter(self._ids))]
        return True


# -- the client ---------------------------------------------------------------------------------


class Client(Requests):
    """One connection to a Sealroom server. Not thread-safe: use it from one thread.

    Nothing happens on the network until the first request (or :meth:`connect`).
    ``ca_file`` is the CA to trust (default: the system's trust store); ``cert`` and ``key``
    are a client certificate for mutual TLS; ``context`` replaces all three. ``timeout``
    bounds connecting and every request; ``keepalive_s`` is how long a quiet connection waits
    before it pings, so a dead peer is noticed while waiting for events (None: never).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        ca_file: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        reconnect: Backoff | None = None,
        keepalive_s: float | None = DEFAULT_KEEPALIVE_S,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_queued_events: int = DEFAULT_MAX_QUEUED_EVENTS,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_queued_events < 1 or max_line_bytes < 64:
            raise ValueError("max_queued_events must be >= 1 and max_line_bytes >= 64")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.keepalive_s = keepalive_s
        self.max_line_bytes = max_line_bytes
        self.max_queued_events = max_queued_events
        self.server_name: str | None = None
        self.dropped_events = 0
        self.repeated_events = 0  # stored messages dropped because their ID came before
        try:
            self._context = context or build_client_context(
                Path(ca_file) if ca_file is not None else None,
                Path(cert) if cert is not None else None,
                Path(key) if key is not None else None,
            )
        except UserError as error:  # an unreadable or invalid CA, certificate or key file
            raise ConnectError(str(error)) from None
        self._server_hostname = server_hostname or host
        self._backoff = reconnect
        self._lock = threading.RLock()
        self._sock: ssl.SSLSocket | None = None
        self._protocol = self._new_protocol()
        self._events: deque[Event] = deque()
        self._closed = False  # close() or quit() was called: no more reconnecting
        self._down: str | None = None  # why the last connection ended, until a new one opens
        self._quiet = False  # while reconnecting: failed attempts are not events
        self._last_received = 0.0
        self._ping_sent = 0.0
        self._user: str | None = None
        self._password: Secret | None = None
        self._token: Token | None = None
        self._token_supported: bool | None = None
        self._rooms: dict[str, None] = {}  # joined rooms in join order (an ordered set)
        self._topics: dict[str, str] = {}  # of joined rooms, as last seen
        self._current: str | None = None
        # Kept across reconnects: the repeats come on the connection after a crash.
        self._seen = SeenIds(SEEN_IDS_KEPT)

    def __repr__(self) -> str:
        state = "connected" if self._sock else "closed" if self._closed else "not connected"
        return f"<Client {self.host}:{self.port} user={self._user} {state}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- state ----------------------------------------------------------------------------------

    @property
    def user(self) -> str | None:
        """The logged-in name (kept while reconnecting), or None."""
        return self._user

    @property
    def rooms(self) -> tuple[str, ...]:
        """The rooms this client joined, in join order (restored after a reconnect)."""
        return tuple(self._rooms)

    @property
    def topics(self) -> dict[str, str]:
        """The topic of each joined room as this client last saw it (a copy).

        It is seen in the reply to :meth:`join`, in :meth:`topic`'s and in
        :class:`~sealroom.client.events.TopicChanged` events. A room whose topic has not been
        seen yet is absent: the default room after a login (``OK login`` carries no topic)
        until :meth:`topic` asks.
        """
        return dict(self._topics)

    @property
    def current_room(self) -> str | None:
        """Where a plain :meth:`say` goes: the room joined last, if still joined."""
        return self._current

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def fileno(self) -> int:
        """The socket's descriptor for ``select`` (-1 when not connected).

        Call :meth:`has_pending` first: lines already read from the socket are not visible
        to ``select``.
        """
        return self._sock.fileno() if self._sock is not None else -1

    def has_pending(self) -> bool:
        """Whether :meth:`next_event` has something to work on without waiting."""
        if self._events or self._protocol.has_buffered:
            return True
        return self._sock is not None and self._sock.pending() > 0

    # -- connecting -----------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection now (requests open it on demand anyway)."""
        with self._guard():
            self._ensure_open()

    def close(self) -> None:
        """Close the connection without a word and forget the credentials. Idempotent."""
        self._closed = True
        self._password = None
        self._token = None
        self._close_socket()

    def quit(self, reason: str | None = None) -> None:
        """Leave politely: ``/quit``, wait briefly for the server's BYE, then close."""
        line = "/quit" + (f" {checked_text(reason, 'reason')}" if reason else "")
        with self._guard():
            if self._sock is None:
                self.close()
                return
            self._closed = True
            try:
                self._exchange(line, "quit")
                deadline = time.monotonic() + min(QUIT_LINGER_S, self.timeout)
                while (item := self._receive(deadline)) is not None:
                    if isinstance(item, Bye):
                        break
                    self._unsolicited(item)
            except (_TransportError, SealroomError):
                pass  # leaving anyway
            finally:
                self.close()

    # -- events ---------------------------------------------------------------------------------

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, or None if none came within ``timeout`` seconds (None: wait).

        After a connection ends (a :class:`Bye` event), the next call reconnects when that
        is configured (a :class:`Reconnected` event follows) or raises
        :class:`ConnectionClosed`.
        """
        with self._guard():
            deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
            while True:
                if self._events:
                    return self._events.popleft()
                if self._sock is None:
                    if self._down is not None and not self._may_reconnect():
                        raise ConnectionClosed(self._down)
                    self._ensure_open()
                    continue
                # The connection ended: its Bye is queued now.
                with contextlib.suppress(ConnectionClosed, ProtocolViolation):
                    self._pump(deadline)
                if self._events or self._protocol.has_buffered or self._sock is None:
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    return None

    def take_queued_events(self) -> list[Event]:
        """The events already received, without reading from the connection.

        Useful after :meth:`history`: a message that arrived before its reply was stored
        before the query, so it is in the history too.
        """
        with self._guard():
            taken = list(self._events)
            self._events.clear()
            return taken

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Events as they arrive, until ``timeout`` seconds pass without one (None: never).

        The iteration also ends when the connection closes for good (after its
        :class:`Bye`); it raises :class:`ReconnectFailed` when reconnecting gives up.
        """
        while True:
            try:
                event = self.next_event(timeout)
            except ReconnectFailed:
                raise
            except ConnectionClosed:
                return
            if event is None:
                return
            yield event

    # -- the request machinery ------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("a sealroom Client was used from two threads at once")
        try:
            yield
        finally:
            self._lock.release()

    def _request(
        self,
        line: str,
        expect: str | None,
        data: tuple[str, ...] = (),
        *,
        counted: bool = False,
    ) -> Reply:
        """Send ``line`` and return its ``OK`` reply (verb ``expect``, unless None)."""
        self._ensure_open()
        try:
            self._drain_nowait()
        except (ConnectionClosed, ProtocolViolation):
            # The server had already said goodbye: reconnect (if allowed) before sending.
            self._ensure_open()
        return self._exchange(line, expect, data, counted=counted)

    def _exchange(
        self,
        line: str,
        expect: str | None,
        data: tuple[str, ...] = (),
        *,
        counted: bool = False,
    ) -> Reply:
        try:
            self._send(self._protocol.send_request(line, expect=expect, data=data, counted=counted))
            return self._await_reply()
        except _TransportError as broken:
            if broken.reason == "timeout":
                self._drop("timeout")
                raise RequestTimeout("timeout", f"no reply within {self.timeout:g}s") from None
            raise self._drop(broken.reason, broken.detail) from None

    def _send(self, payload: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise _TransportError("connection-lost")
        sock.settimeout(self.timeout)
        try:
            sock.sendall(payload)
        except TimeoutError:
            raise _TransportError("timeout") from None
        except OSError as error:
            raise _TransportError("connection-lost", _describe(error)) from None

    def _await_reply(self) -> Reply:
        """The reply to the request just sent; events that come first are queued."""
        deadline = time.monotonic() + self.timeout
        while True:
            item = self._receive(deadline)
            if item is None:
                raise _TransportError("timeout")
            if isinstance(item, Reply):
                return item
            if isinstance(item, ErrorReply):
                raise request_error(item)
            self._unsolicited(item)

    def _receive(self, deadline: float | None) -> ServerLine | None:
        """The protocol's next item, reading the socket as needed; None once ``deadline``
        passes (a past one: don't block).

        A line over the bound is a transport failure (the stream is lost), a bad greeting
        is :meth:`_open`'s to report, and any other protocol error closes the connection
        as a :class:`ProtocolViolation`.
        """
        while True:
            try:
                item = self._protocol.next_event()
            except LineTooLong as error:
                raise _TransportError("protocol-violation", str(error)) from None
            except BadGreeting:
                raise
            except RemoteProtocolError as error:
                raise self._violation(str(error)) from None
            if item is not None:
                return item
            sock = self._sock
            if sock is None:
                raise _TransportError("connection-lost")
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            sock.settimeout(wait)
            try:
                chunk = sock.recv(RECV_BYTES)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, TimeoutError):
                return None
            except OSError as error:
                raise _TransportError("connection-lost", _describe(error)) from None
            if not chunk:
                raise _TransportError("connection-lost", "the server closed the connection")
            self._last_received = time.monotonic()
            self._protocol.receive_data(chunk)

    def _unsolicited(self, item: ServerLine) -> None:
        """An item outside any awaited reply: an event, or BYE."""
        if isinstance(item, Reply | ErrorReply | Hello):
            raise self._violation("a reply to no request")
        if isinstance(item, Bye):
            raise self._drop(item.reason)
        self._queue(item)

    def _drain_nowait(self) -> None:
        """Take in what has already arrived (events, a BYE) without waiting."""
        if self._sock is None:
            return
        try:
            for _ in range(self.max_queued_events):
                item = self._receive(time.monotonic())
                if item is None:
                    return
                self._unsolicited(item)
        except _TransportError as broken:
            raise self._drop(broken.reason, broken.detail) from None

    def _pump(self, deadline: float | None) -> None:
        """Wait for lines until ``deadline`` (or a keepalive duty) and handle them."""
        until = deadline
        duty = self._keepalive_due()
        if duty is not None:
            until = duty if until is None else min(until, duty)
        try:
            item = self._receive(until)
            while item is not None:
                self._unsolicited(item)
                if self._events:
                    return
                item = self._receive(time.monotonic())
            self._keepalive()
        except _TransportError as broken:
            raise self._drop(broken.reason, broken.detail) from None

    def _keepalive_due(self) -> float | None:
        if self.keepalive_s is None or self._sock is None:
            return None
        if self._protocol.keepalives_unanswered:
            return self._ping_sent + self.timeout
        return self._last_received + self.keepalive_s

    def _keepalive(self) -> None:
        due = self._keepalive_due()
        if due is None or time.monotonic() < due:
            return
        if self._protocol.keepalives_unanswered:
            raise _TransportError(
                "connection-lost", f"no answer to a ping within {self.timeout:g}s"
            )
        self._send(self._protocol.send_keepalive())
        self._ping_sent = time.monotonic()

    def _queue(self, event: Event) -> None:
        self._track(event)
        if isinstance(event, History) and not self._seen.first_time(event.id):
            # A stored message delivered again (SPEC: a crash may repeat some, same IDs).
            # Replies to history() are not events and never pass here: they stay whole.
            self.repeated_events += 1
            log.debug("dropping stored message %d: already delivered", event.id)
            return
        if len(self._events) >= self.max_queued_events:
            self._events.popleft()
            self.dropped_events += 1
            if self.dropped_events == 1:
                log.warning("event queue full (%d): dropping the oldest", self.max_queued_events)
        self._events.append(event)

    def _track(self, event: Event) -> None:
        """What an event changes in the rooms this client keeps, as it arrives (before the
        queue's bound could drop it). Banned from a room or the room destroyed: the session
        is out of it, and a reconnect must not join it again (that would create a destroyed
        room anew)."""
        if isinstance(event, Banned | Destroyed):
            self._left(event.room)
        elif isinstance(event, TopicChanged) and event.room in self._rooms:
            self._topics[event.room] = event.topic

    def _left(self, room: str) -> None:
        self._rooms.pop(room, None)
        self._topics.pop(room, None)
        if self._current == room:
            self._current = None

    # -- connection life ------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._sock is not None:
            return
        if self._closed:
            raise ConnectionClosed("closed", "the client was closed")
        if self._down is None or self._user is None:
            self._open()  # the first connection, or one with no session to restore
            return
        if not self._may_reconnect():
            raise ConnectionClosed(self._down)
        self._reconnect()

    def _open(self) -> None:
        where = f"{self.host}:{self.port}"
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as error:
            raise ConnectError(f"cannot connect to {where}: {_describe(error)}") from None
        try:
            sock = self._context.wrap_socket(raw, server_hostname=self._server_hostname)
        except ssl.SSLCertVerificationError as error:
            raw.close()
            reason = error.verify_message or error.reason or "verification failed"
            raise ConnectError(f"cannot verify the certificate of {where}: {reason}") from None
        except OSError as error:
            raw.close()
            raise ConnectError(f"TLS handshake with {where} failed: {_describe(error)}") from None
        self._sock = sock
        self._protocol = self._new_protocol()
        self._last_received = time.monotonic()
        try:
            hello = self._receive(time.monotonic() + self.timeout)
        except _TransportError as broken:
            self._close_socket()
            raise ConnectError(f"{where} closed the connection before HELLO") from broken
        except BadGreeting as bad:
            self._close_socket()
            if bad.version is None:
                shown = escape_for_log(bad.greeting[:80])
                raise ConnectError(f"{where} is not a Sealroom server: {shown}") from None
            raise ConnectError(
                f"{where} speaks protocol version {escape_for_log(bad.version[:16])}; "
                f"this client speaks {PROTOCOL_VERSION}"
            ) from None
        if hello is None:
            self._close_socket()
            raise ConnectError(f"no HELLO from {where} within {self.timeout:g}s")
        assert isinstance(hello, Hello)  # the protocol's first item, or BadGreeting  # noqa: S101
        self.server_name = hello.server_name
        self._down = None

    def _new_protocol(self) -> ClientProtocol:
        return ClientProtocol(self.max_line_bytes, max_data_lines=self.max_queued_events)

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        # What was read from this connection, and the replies it owed, end with it.
        self._protocol = self._new_protocol()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _drop(self, reason: str, detail: str = "") -> ConnectionClosed:
        """The connection is over: close it, announce it, and return the error to raise."""
        self._close_socket()
        self._down = reason
        if not (self._closed or self._quiet):
            self._queue(Bye(reason))
        return ConnectionClosed(reason, detail)

    def _violation(self, what: str) -> ProtocolViolation:
        log.warning("closing the connection to %s:%d: %s", self.host, self.port, what)
        self._drop("protocol-violation", what)
        return ProtocolViolation(what)

    def _may_reconnect(self) -> bool:
        if self._backoff is None or self._closed or self._down is None or self._user is None:
            return False
        return not self._down.startswith(_FINAL_REASONS)

    def _reconnect(self) -> None:
        policy = self._backoff
        assert policy is not None  # _may_reconnect checked it  # noqa: S101
        reason = self._down
        last: BaseException | None = None
        floor = 0.0
        self._quiet = True
        try:
            for attempt in range(policy.max_attempts):
                time.sleep(max(floor, policy.delay(attempt)))
                floor = 0.0
                try:
                    self._open()
                    self._restore_session()
                except ReconnectFailed:
                    self._close_socket()
                    raise
                except RequestError as error:
                    self._close_socket()
                    if error.code not in (ErrorCode.RATE_LIMITED, ErrorCode.SERVER_BUSY):
                        raise ReconnectFailed(
                            "reconnect-refused", f"logging in again failed: {error}"
                        ) from None
                    floor = error.retry_after or 0.0
                    last = error
                except (ConnectError, ConnectionClosed, ProtocolViolation) as error:
                    self._close_socket()
                    last = error
                else:
                    log.info("reconnected to %s:%d after %s", self.host, self.port, reason)
                    self._queue(Reconnected(tuple(self._rooms)))
                    return
        finally:
            self._quiet = False
            if self._sock is None:
                self._down = reason
        raise ReconnectFailed(
            "reconnect-failed", f"gave up after {policy.max_attempts} attempts: {last}"
        )

    def _restore_session(self) -> None:
        if self._user is None:
            return
        wanted, current = list(self._rooms), self._current
        if not self._resume_by_token():
            if self._password is None:
                raise ReconnectFailed("reconnect-failed", "no password or token to log in again")
            reply = self._request(f"/login {self._user} {self._password.reveal()}", "login")
            self._logged_in(reply, password=self._password.reveal())
        order = [room for room in wanted if room != current]
        if current is not None:
            order.append(current)
        for room in order:
            if room in self._rooms and room != current:
                continue
            try:
                self.join(room)
            except RequestError as error:
                log.warning("could not join %s again: %s", room, error)
        for room in list(self._rooms):
            if room not in wanted:
                with contextlib.suppress(RequestError):
                    self.part(room)

    def _resume_by_token(self) -> bool:
        token = self._token
        if token is None or token.expired() or self._user is None:
            return False
        try:
            reply = self._request(f"/resume {self._user} {token.value}", "login")
        except RequestError as error:
            if error.code not in (ErrorCode.AUTH_FAILED, ErrorCode.BAD_COMMAND):
                raise
            self._token = None
            return False
        password = self._password.reveal() if self._password is not None else None
        self._logged_in(reply, password=password)
        return True

    def _logged_in(self, reply: Reply, password: str | None) -> None:
        fields = reply.fields
        if not fields:
            raise self._violation("OK login without a name")
        self._user = fields[0]
        self._rooms = {fields[1]: None} if len(fields) > 1 and fields[1].startswith("#") else {}
        self._topics = {}
        self._current = next(iter(self._rooms), None)
        # The password is kept only to log in again after a reconnect.
        if self._backoff is not None and password is not None:
            self._password = Secret(password)
        if self._backoff is not None and self._token_supported is not False:
            self._fetch_token()

    def _fetch_token(self) -> None:
        try:
            reply = self._request("/token", "token")
        except RequestError as error:
            if error.code is ErrorCode.BAD_COMMAND:
                self._token_supported = False  # an older server: reconnect by password
            else:
                log.debug("no resume token: %s", error)
            return
        self._token_supported = True
        self._token = parse_token(reply)


# -- helpers ------------------------------------------------------------------------------------


def _describe(error: OSError) -> str:
    if isinstance(error, ssl.SSLError):
        return str(error.reason or error)
    return error.strerror or str(error) or type(error).__name__

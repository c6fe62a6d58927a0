"""One client connection as a state machine, from the TLS handshake to the last BYE.

The reactor calls the ``on_*`` methods; each does the non-blocking I/O its state allows and
returns what to do next: the epoll events to wait for (:data:`READ`, :data:`WRITE`, both, or
:data:`IDLE` to wait for a wake-up only) or :data:`CLOSE`. Blocking work the session asks for
goes to a worker pool and comes back through :meth:`Connection.on_complete`. Deadlines
(handshake, login, idle, the close grace) are checked by :meth:`Connection.on_tick`.

A connection from a trusted load balancer starts in the PROXY state: it reads the PROXY
protocol header off the TCP socket, and not one byte more, before the TLS handshake; the
client address in the header then becomes the connection's peer (limits, logs, session).

One thread owns the TLS socket at any moment, as OpenSSL requires: the reactor thread, from
:meth:`Connection.adopt` on. Every method that touches the SSL object checks that, and
raises :class:`OwnershipError` on any other thread. Other threads only push to the
connection's :class:`~sealroom.state.outbox.Outbox`, whose wake-up goes to the reactor.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.proxy import MAX_HEADER, ProxyHeader, ProxyHeaderError, parse_proxy_header
from sealroom.core.text import escape_for_log
from sealroom.net.tls import client_common_name
from sealroom.net.workers import AnyPool
from sealroom.policy.admission import Admission
from sealroom.session.effects import Effect, Outcome, Pool
from sealroom.session.machine import Services, Session
from sealroom.state.outbox import Outbox, Receipt

log = logging.getLogger("sealroom.server")

READ_CHUNK = 65536
# After BYE is queued, how long a connection may take to drain its queue before we cut it.
CLOSE_GRACE_S = 2.0
NEVER = float("inf")

IDLE = 0
READ = select.EPOLLIN
WRITE = select.EPOLLOUT
CLOSE = -1


class OwnershipError(RuntimeError):
    """A thread other than the owner touched a connection's TLS socket."""


class State(enum.Enum):
    NEW = "new"  # accepted, not yet adopted by the reactor
    PROXY = "proxy"  # from a trusted load balancer: reading its PROXY header, before TLS
    ADMIT = "admit"  # in a cluster: asking the shared bucket about the client's address
    HANDSHAKE = "handshake"
    OPEN = "open"  # a session speaks the protocol (logged in or not)
    CLOSED = "closed"


@dataclass
class Shared:
    """State every listener and connection of one server process shares."""

    services: Services
    admission: Admission
    registry: Registry
    context: ssl.SSLContext
    pools: dict[Pool, AnyPool]
    handshake_failures: int = 0
    # Where finished work goes: the reactor's ``complete`` (set when the reactor is made).
    complete: Callable[[Connection, Effect[Any], Outcome], None] = field(
        default=lambda connection, effect, outcome: None
    )
    # In a cluster: whether the address may open one more connection by the budget all
    # nodes share (blocking: it runs on the bus's pool, never here).
    cluster_admit: Callable[[str], bool] | None = None


class Registry:
    """Every live connection, so shutdown can say BYE to all and wait for them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._live: set[Connection] = set()

    def add(self, connection: Connection) -> None:
        with self._cond:
            self._live.add(connection)

    def remove(self, connection: Connection) -> None:
        with self._cond:
            self._live.discard(connection)
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._live)

    def snapshot(self) -> list[Connection]:
        """The live connections at this moment (for ``sealroom sessions``)."""
        with self._cond:
            return list(self._live)

    def queued(self) -> list[int]:
        """Bytes waiting in each connection's outbox (for status: queue depths)."""
        with self._cond:
            return [connection.outbox.size for connection in self._live]

    def close_all(self, reason: str) -> None:
        with self._cond:
            live = list(self._live)
        for connection in live:
            connection.outbox.close(reason)

    def wait_empty(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._live, timeout)

    def force_close(self) -> None:
        """Shut down the sockets of connections that outlived the grace period.

        Only the TCP layer is touched (``socket.socket.shutdown``), never the SSL object, so
        this is safe from another thread: the owner's next read or write fails and it closes.
        """
        with self._cond:  # a connection leaves only after closing its socket: no fd reuse
            for connection in self._live:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(connection.sock, socket.SHUT_RDWR)


class Connection:
    """One client's TLS socket, session and outbox."""

    __slots__ = (
        "admitted_as",
        "again",
        "close_deadline",
        "connected_at",
        "deadline",
        "events",
        "fd",
        "maybe_readable",
        "outbox",
        "owner",
        "peer",
        "proxy_header",
        "receipts",
        "services",
        "session",
        "shared",
        "sock",
        "state",
        "unsent",
    )

    def __init__(self, shared: Shared, sock: ssl.SSLSocket, peer: str) -> None:
        self.shared = shared
        self.sock = sock
        sock.setblocking(False)  # the reactor never waits on one socket
        self.fd = sock.fileno()
        self.peer = peer
        self.admitted_as: str | None = peer  # the address admission counted us under
        self.proxy_header: bytearray | None = None  # the PROXY header so far, if one is due
        self.connected_at = time.time()  # wall clock, for people (``sealroom sessions``)
        self.services = shared.services  # read once: a reload may swap it for new connections
        self.outbox = Outbox(self.services.settings.limits.outbound_queue_bytes, _not_yet)
        self.session: Session | None = None
        self.state = State.NEW
        self.owner: int | None = None  # the thread that may touch ``sock``
        self.unsent: bytes | memoryview | None = None  # handed to SSL_write, to retry as is
        self.receipts: list[Receipt] = []  # run once ``unsent`` is all written
        # OpenSSL may have read more records from the socket than it has decrypted, where
        # neither poll nor SSL_pending can see them: after data, read again until WantRead.
        self.maybe_readable = True
        self.again = False  # input may be waiting that no epoll event will announce
        self.events = 0  # the epoll mask registered (the reactor's bookkeeping)
        self.deadline = NEVER  # the next handshake, login or idle deadline
        self.close_deadline = NEVER  # BYE queued: by then the queue must have drained
        shared.registry.add(self)

    def __repr__(self) -> str:
        return f"<Connection {self.peer} {self.state.value}>"

    # -- ownership ----------------------------------------------------------------------------

    def adopt(self, wake: Callable[[], None]) -> None:
        """The calling thread becomes the owner; pushes to the outbox call ``wake``."""
        self.owner = threading.get_ident()
        self.outbox.route_wakeups(wake)

    def _check_owner(self) -> None:
        if threading.get_ident() != self.owner:
            raise OwnershipError(f"{self!r} is owned by thread {self.owner}")

    def expect_proxy_header(self) -> None:
        """The peer is a trusted load balancer (admitted with no address yet): the
        connection begins with its PROXY header, which names the client."""
        self.admitted_as = None
        self.proxy_header = bytearray()

    # -- the state machine ---------------------------------------------------------------------

    def on_start(self, now: float) -> int:
        """Adopted: begin the TLS handshake (after a PROXY header, if one is due), under the
        handshake deadline, which covers both."""
        self._check_owner()
        self.deadline = now + self.services.settings.limits.handshake_timeout_s
        if self.proxy_header is not None:
            self.state = State.PROXY
            return self._read_proxy_header()
        return self._admitted_here()

    def on_event(self, readable: bool) -> int:
        """The socket is ready (or may be): advance whatever the state allows."""
        if self.state is State.PROXY:
            return CLOSE if self.outbox.closing is not None else self._read_proxy_header()
        if self.state is State.ADMIT:  # the TLS bytes wait in the kernel meanwhile
            return CLOSE if self.outbox.closing is not None else IDLE
        if self.state is State.HANDSHAKE:
            return CLOSE if self.outbox.closing is not None else self._handshake()
        if self.state is State.OPEN:
            return self._turn(readable)
        return CLOSE

    def on_woken(self) -> int:
        """Something was pushed to the outbox: write it, and more if the session can."""
        return self.on_event(False)

    def write_only(self) -> int | None:
        """The fast path of a broadcast, once per recipient: only the queue changed.

        Returns None when a whole turn is needed: the connection is closing, waits for
        POLLOUT, reads nothing for now, or holds unprocessed input.
        """
        session = self.session
        if (
            self.state is not State.OPEN
            or session is None
            or self.events != READ
            or session.has_input
        ):
            return None
        if not self.flush():
            return CLOSE
        if self.unsent is not None or self.outbox.closing is not None:
            return None
        if session.has_effects:  # a receipt of what was written asked for more
            self._run_effects(session)
        return READ

    def on_complete(self, done: list[tuple[Effect[Any], Outcome]]) -> int:
        """Workers finished effects for this session, in this order: apply them, then
        carry on with one turn (one write for all their replies)."""
        if self.state is State.ADMIT:  # the only effect in flight before the handshake
            return self._admitted_by_cluster(done[0][1])
        if self.state is not State.OPEN or self.session is None:
            return CLOSE
        for effect, outcome in done:
            self.session.complete(effect, outcome)
        return self._turn(False)

    def on_tick(self, now: float) -> int | None:
        """Enforce deadlines; None if nothing changed."""
        if now >= self.close_deadline:
            return CLOSE
        if now < self.deadline:
            return None
        if self.state is State.PROXY:
            log.info("%s [-]: PROXY protocol header timed out", self.peer)
            return CLOSE
        if self.state is State.ADMIT:
            log.info("%s [-]: the cluster's connection budget did not answer in time", self.peer)
            return CLOSE
        if self.state is State.HANDSHAKE:
            log.info("%s [-]: TLS handshake timed out", self.peer)
            return CLOSE
        if self.session is None:
            return None
        self.deadline = self.session.check_timeouts()
        return self._turn(False) if self.outbox.closing is not None else None

    # -- phases -----------------------------------------------------------------------------

    def _read_proxy_header(self) -> int:
        """Take the PROXY header off the TCP socket, and not one byte of the TLS after it.

        Each pass peeks at what has arrived and takes for good only what the parser says is
        header: the bytes after it stay in the kernel for OpenSSL, and none of a partial
        header stays there for a level-triggered epoll to announce again and again.
        """
        self._check_owner()
        buffer = self.proxy_header
        assert buffer is not None  # noqa: S101 - the PROXY state has its buffer
        while True:  # each pass takes a byte or more of a header of at most MAX_HEADER
            try:
                peeked = socket.socket.recv(self.sock, MAX_HEADER - len(buffer), socket.MSG_PEEK)
                if not peeked:  # with nothing sent at all: the balancer's TCP health check
                    level = logging.INFO if buffer else logging.DEBUG
                    log.log(level, "%s [-]: closed before its PROXY protocol header", self.peer)
                    return CLOSE
                result = parse_proxy_header(buffer + peeked)
                wanted = result.length - len(buffer) if isinstance(result, ProxyHeader) else None
                taken = socket.socket.recv(self.sock, len(peeked) if wanted is None else wanted)
            except BlockingIOError:
                return READ
            except ProxyHeaderError as error:
                log.info("%s [-]: refused: bad PROXY protocol header: %s", self.peer, error)
                return CLOSE
            except OSError as error:
                log.info("%s [-]: PROXY protocol header not read: %s", self.peer, error)
                return CLOSE
            buffer += taken  # the bytes peeked at (all of them, as they were queued)
            if isinstance(result, ProxyHeader) and len(buffer) == result.length:
                return self._proxied(result)

    def _proxied(self, header: ProxyHeader) -> int:
        """The header names the client: admit it under that address, then handshake."""
        self.proxy_header = None
        proxy = self.peer
        client = proxy if header.source is None else header.source[0]
        if not self.shared.admission.admit_address(client):
            log.debug("%s [-]: refused by the connection limits (via %s)", client, proxy)
            return CLOSE
        self.admitted_as = self.peer = client
        log.debug("%s [-]: PROXY protocol v%d header from %s", client, header.version, proxy)
        return self._admitted_here()

    def _admitted_here(self) -> int:
        """This node's limits let the client in; in a cluster the shared budget decides
        next, on the bus's pool. Then the handshake."""
        ask = self.shared.cluster_admit
        if ask is None:
            self.state = State.HANDSHAKE
            return self._handshake()
        self.state = State.ADMIT
        peer = self.peer
        if not self.shared.pools[Pool.BUS].submit(lambda: ask(peer), _HandBack(self, _ADMIT)):
            return CLOSE
        return IDLE

    def _admitted_by_cluster(self, outcome: Outcome) -> int:
        if outcome.error is None and outcome.value is False:
            self.shared.admission.rejected["rate"] += 1
            log.info("%s [-]: refused by the cluster's connection budget", self.peer)
            return CLOSE
        # An error (Redis away) lets the client in: this node's own limits still held.
        self.state = State.HANDSHAKE
        return self._handshake()

    def _handshake(self) -> int:
        self._check_owner()
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            return READ
        except ssl.SSLWantWriteError:
            return WRITE
        except (ssl.SSLError, OSError) as error:
            self.shared.handshake_failures += 1
            log.info("%s [-]: TLS handshake failed: %s", self.peer, escape_for_log(str(error)))
            return CLOSE
        return self._open_session()

    def _open_session(self) -> int:
        """The TLS handshake is done: the session begins with HELLO.

        A subclass that speaks something else first (the web door: HTTP, then a WebSocket)
        overrides this, and calls it once the protocol's own session should begin.
        """
        settings = self.services.settings
        client_cn = client_common_name(self.sock) if settings.tls.client_ca else None
        self.session = session = Session(self.services, self.outbox, self.peer, client_cn)
        self.state = State.OPEN
        self.deadline = session.check_timeouts()
        session.greet()
        return self._turn(True)

    def _turn(self, readable: bool) -> int:
        """Read, handle, run effects, write; then say what to wait for."""
        session, outbox = self.session, self.outbox
        assert session is not None  # noqa: S101 - OPEN has a session
        if readable and session.wants_input and not self.read():
            return CLOSE
        backlog = session.process()
        if session.has_effects:
            self._run_effects(session)
        if not self.flush():
            return CLOSE
        if session.has_effects:  # receipts of what was written may ask for more
            self._run_effects(session)
        if outbox.closing is not None:
            if self.drained:
                self.close_notify()
                return CLOSE
            self.close_deadline = min(self.close_deadline, time.monotonic() + CLOSE_GRACE_S)
        wants_input = session.wants_input
        self.again = wants_input and (self.maybe_readable or backlog)
        self.deadline = session.deadline
        return (READ if wants_input else IDLE) | (WRITE if self.unsent is not None else IDLE)

    def _run_effects(self, session: Session) -> None:
        for effect in session.take_effects():
            if not self.shared.pools[effect.pool].submit(effect.work, _HandBack(self, effect)):
                busy = ProtocolError(ErrorCode.SERVER_BUSY, "shutting down; retry in 5s")
                self.shared.complete(self, effect, Outcome(error=busy))

    # -- I/O ------------------------------------------------------------------------------

    @property
    def drained(self) -> bool:
        return self.unsent is None and not self.outbox.size

    def read(self) -> bool:
        """Feed what TLS has for us to the session; False when the peer is gone."""
        self._check_owner()
        assert self.session is not None  # noqa: S101 - only called after the handshake
        try:
            data = self.sock.recv(READ_CHUNK)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            self.maybe_readable = False
            return True
        except (ssl.SSLError, OSError) as error:
            log.debug("%s: read failed: %s", self.session.describe(), error)
            return False
        if not data:
            return False
        self.services.counters.bytes_received += len(data)
        self.session.feed(data)
        self.maybe_readable = True
        return True

    def flush(self) -> bool:
        """Write queued lines, many per TLS write; False when the peer is gone."""
        self._check_owner()
        while True:
            if self.unsent is None:
                data, self.receipts = self.outbox.take()
                if not data:  # receipts of empty pushes (a nudge) run at once
                    for receipt in self.receipts:
                        receipt()
                    self.receipts = []
                    return True
                self.unsent = data
            try:
                sent = self.sock.send(self.unsent)
                self.services.counters.bytes_sent += sent
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return True
            except (ssl.SSLError, OSError) as error:
                log.debug("%s: write failed: %s", self.peer, error)
                return False
            if sent < len(self.unsent):
                self.unsent = memoryview(self.unsent)[sent:]
                continue
            self.unsent = None
            for receipt in self.receipts:
                receipt()

    def close_notify(self) -> None:
        self._check_owner()
        with contextlib.suppress(ssl.SSLError, OSError, ValueError):
            self.sock.unwrap()

    def close(self) -> None:
        """The end: leave the hub, close, forget. Never blocks."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        outbox, session = self.outbox, self.session
        reason = outbox.closing  # before retire() sets its own
        outbox.retire()
        try:
            if session is not None:
                session.finish()
                log.info("%s: connection closed (%s)", session.describe(), reason or "by peer")
                self.services.counters.count_close(reason or "peer")
        finally:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.shared.registry.remove(self)
            self.shared.admission.release(self.admitted_as)


class _HandBack:
    """A worker's way back: the outcome goes to the reactor, which owns the connection."""

    __slots__ = ("connection", "effect")

    def __init__(self, connection: Connection, effect: Effect[Any]) -> None:
        self.connection = connection
        self.effect = effect

    def __call__(self, outcome: Outcome) -> None:
        self.connection.shared.complete(self.connection, self.effect, outcome)


def _never() -> None:
    """The admission check is not a session's effect: it has no work or step of its own."""


_ADMIT: Effect[Any] = Effect(Pool.BUS, _never, lambda _: None)


def _not_yet() -> None:
    """The outbox's wake-up before the reactor adopts the connection: nothing to wake."""

"""The one module that owns sockets: TLS listeners, connection threads and the reactor.

``SealroomServer`` extends socketserver through its documented hooks. ``get_request`` wraps
the accepted socket without handshaking; the handshake runs in the connection's own thread
under a deadline, so a client that never speaks blocks nobody. That thread also sees the
login through, with its argon2 check.

Once a logged-in connection goes quiet, its thread hands it to the :class:`Reactor` and ends.
One reactor thread, polling every parked connection with epoll, serves them from then on:
an idle connection then costs no thread, and a broadcast queues its recipients and writes to
each in turn instead of waking a hundred threads that queue for the GIL. A request that may
block (``Command.blocking``: argon2, SQLite) is handed back to a new thread of its own, which
parks the connection again when it is done.

At any moment exactly one thread owns a connection and is the only one that touches its SSL
object, as OpenSSL requires: ownership passes by handing the object over, never shared.
Other threads only push to its :class:`Outbox`, whose wake-up reaches the current owner.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import select
import socket
import socketserver
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from sealroom.core.text import escape_for_log
from sealroom.net.tls import client_common_name
from sealroom.net.wakeup import Wakeup
from sealroom.policy.admission import Admission
from sealroom.session.machine import Pending, Services, Session
from sealroom.state.outbox import Outbox, Receipt

log = logging.getLogger("sealroom.server")

READ_CHUNK = 65536
# After BYE is queued, how long a connection may take to drain its queue before we cut it.
CLOSE_GRACE_S = 2.0
# How often the reactor looks for idle and login deadlines among the connections it owns.
SWEEP_INTERVAL_S = 1.0
# accept() failing for want of descriptors or memory leaves the listening socket readable:
# without a pause the serving loop would spin on it. Clients wait in the backlog meanwhile.
ACCEPT_BACKOFF_S = 0.05
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_POLL_IN = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
_NEVER = float("inf")


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
        this is safe from another thread: the owner's next read or write fails and it exits.
        """
        with self._cond:  # a connection leaves only after closing its socket: no fd reuse
            for connection in self._live:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(connection.sock, socket.SHUT_RDWR)


@dataclass
class Shared:
    """State every listener and connection of one server process shares."""

    services: Services
    admission: Admission
    registry: Registry
    context: ssl.SSLContext
    reactor: Reactor
    handshake_failures: int = 0


class SealroomServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """One TLS listener. A process has one per ``listen`` address, all sharing ``Shared``."""

    daemon_threads = True
    block_on_close = False  # shutdown closes sessions itself and waits with a deadline
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], shared: Shared) -> None:
        self.shared = shared
        self.heartbeat = time.monotonic()  # the serving loop's last turn, for the watchdog
        self._starved_warning = -_NEVER  # when "cannot accept" was last logged
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, ConnectionHandler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # "[::]:7443" and "0.0.0.0:7443" may both be listed; keep the families apart.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    @property
    def bound(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def get_request(self) -> tuple[Any, Any]:
        try:
            sock, address = self.socket.accept()
        except OSError as error:
            if error.errno in _OUT_OF_RESOURCES:
                now = time.monotonic()
                if now - self._starved_warning >= 10.0:
                    self._starved_warning = now
                    log.warning("cannot accept connections: %s", error.strerror)
                time.sleep(ACCEPT_BACKOFF_S)
            raise
        try:
            # Lines are small and latency matters: never hold one back waiting for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            wrapped = self.shared.context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except OSError:
            sock.close()
            raise
        return wrapped, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.shared.admission.admit(client_address[0])

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.shared.admission.release(client_address[0])
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """ThreadingMixIn's, without its ``shutdown_request``: the :class:`Connection` owns
        the socket and closes it itself, perhaps on the reactor long after this thread."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)

    def service_actions(self) -> None:
        super().service_actions()
        self.heartbeat = time.monotonic()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("%s [-]: unexpected error in connection", _peer(client_address))


def _peer(client_address: Any) -> str:
    try:
        return str(client_address[0])
    except (TypeError, IndexError):
        return "?"


class ConnectionHandler(socketserver.BaseRequestHandler):
    """The connection's first thread: handshake, login, then the reactor or the end."""

    server: SealroomServer
    request: ssl.SSLSocket

    def handle(self) -> None:
        shared = self.server.shared
        peer = _peer(self.client_address)
        try:
            connection = Connection(shared, self.request, peer)
        except OSError as error:  # no descriptor left for the wake-up
            log.warning("%s [-]: cannot serve connection: %s", peer, error)
            with contextlib.suppress(OSError):
                self.request.close()
            shared.admission.release(peer)
            return
        connection.run_on_thread(first=True)


class Connection:
    """One client's TLS socket, session and outbox, owned by one thread at a time."""

    __slots__ = (
        "close_deadline",
        "closed",
        "deadline",
        "events",
        "in_reactor",
        "maybe_readable",
        "outbox",
        "peer",
        "receipts",
        "services",
        "session",
        "shared",
        "sock",
        "unsent",
        "wakeup",
    )

    def __init__(self, shared: Shared, sock: ssl.SSLSocket, peer: str) -> None:
        self.shared = shared
        self.sock = sock
        self.peer = peer
        self.services = shared.services  # read once: a reload may swap it for new connections
        # Only a connection on a thread of its own needs an eventfd; the reactor closes it,
        # so that 10,000 parked connections hold 10,000 descriptors, not 20,000.
        self.wakeup: Wakeup | None = Wakeup()
        self.outbox = Outbox(self.services.settings.limits.outbound_queue_bytes, self.wakeup.set)
        self.session: Session | None = None
        self.unsent: bytes | memoryview | None = None  # handed to SSL_write, to retry as is
        self.receipts: list[Receipt] = []  # run once ``unsent`` is all written
        # OpenSSL may have read more records from the socket than it has decrypted, where
        # neither poll nor SSL_pending can see them: after data, read again until WantRead.
        self.maybe_readable = True
        self.closed = False
        # The reactor's bookkeeping, touched by the reactor thread only.
        self.in_reactor = False
        self.events = 0  # the epoll mask registered
        self.deadline = -_NEVER  # the session's next login or idle deadline, as last seen
        self.close_deadline = _NEVER  # BYE queued: by then the queue must have drained
        shared.registry.add(self)

    # -- on a thread of its own ---------------------------------------------------------------

    def run_on_thread(self, *, first: bool = False) -> None:
        """Serve this connection on the calling thread until it closes or is parked."""
        try:
            if first:
                self.sock.setblocking(False)
                if not self._handshake():
                    self.close()
                    return
                settings = self.services.settings
                client_cn = client_common_name(self.sock) if settings.tls.client_ca else None
                self.session = Session(self.services, self.outbox, self.peer, client_cn)
                self.session.greet()
            if not _ThreadLoop(self).run():
                self.close()
        except BaseException:
            self.close()
            raise

    def _handshake(self) -> bool:
        deadline = time.monotonic() + self.services.settings.limits.handshake_timeout_s
        poller = select.poll()
        assert self.wakeup is not None  # noqa: S101 - a new connection has its own thread
        poller.register(self.wakeup, select.POLLIN)
        while True:
            try:
                self.sock.do_handshake()
            except ssl.SSLWantReadError:
                events = select.POLLIN
            except ssl.SSLWantWriteError:
                events = select.POLLOUT
            except (ssl.SSLError, OSError) as error:
                self.shared.handshake_failures += 1
                log.info("%s [-]: TLS handshake failed: %s", self.peer, escape_for_log(str(error)))
                return False
            else:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.outbox.closing is not None:
                log.info("%s [-]: TLS handshake timed out", self.peer)
                return False
            poller.register(self.sock, events)
            poller.poll(remaining * 1000)
            poller.unregister(self.sock)

    # -- on the owner's thread, whichever it is ----------------------------------------------

    @property
    def drained(self) -> bool:
        return self.unsent is None and not self.outbox.size

    def read(self) -> bool:
        """Feed what TLS has for us to the session; False when the peer is gone."""
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
        while True:
            if self.unsent is None:
                data, self.receipts = self.outbox.take()
                if not data:
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
        with contextlib.suppress(ssl.SSLError, OSError, ValueError):
            self.sock.unwrap()

    def close(self) -> None:
        """The end, whoever owns the connection: leave the hub, close, forget."""
        if self.closed:
            return
        self.closed = True
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
            if self.wakeup is not None:
                self.wakeup.close()
            self.shared.registry.remove(self)
            self.shared.admission.release(self.peer)


class _ThreadLoop:
    """A connection on its own thread: read lines, write what the outbox holds, and hand
    the connection to the reactor once it is logged in and quiet."""

    def __init__(self, connection: Connection) -> None:
        assert connection.session is not None  # noqa: S101 - created before the loop
        assert connection.wakeup is not None  # noqa: S101 - given back with the thread
        self.connection = connection
        self.wakeup = connection.wakeup
        self.session = connection.session
        self.reactor = connection.shared.reactor

    def run(self) -> bool:
        """True once the reactor owns the connection; False when it is to be closed."""
        connection, session, outbox = self.connection, self.session, self.connection.outbox
        poller = select.poll()
        wakeup = self.wakeup.fileno()
        poller.register(wakeup, select.POLLIN)
        poller.register(connection.sock, select.POLLIN)
        close_deadline = _NEVER
        while True:
            pending = session.process()
            if not connection.flush():
                return False
            if outbox.closing is not None:
                if connection.drained:
                    connection.close_notify()
                    return False
                now = time.monotonic()
                if close_deadline == _NEVER:
                    close_deadline = now + CLOSE_GRACE_S
                elif now >= close_deadline:
                    return False
            elif pending is Pending.BACKLOG and session.wants_input:
                continue  # the replies drained: handle the lines that waited for them
            elif self._park():
                return True
            reading = session.wants_input
            for fd, _events in self._wait(poller, reading, close_deadline):
                if fd == wakeup:
                    self.wakeup.clear()
                elif reading and not connection.read():
                    return False

    def _park(self) -> bool:
        """Hand a quiet, logged-in connection to the reactor; True if it took it."""
        connection = self.connection
        if self.session.member is None or connection.maybe_readable or connection.unsent:
            return False
        return self.reactor.adopt(connection)

    def _wait(
        self, poller: select.poll, reading: bool, close_deadline: float
    ) -> list[tuple[int, int]]:
        """Block until input, writability or a wake-up, unless there is work already."""
        connection, outbox = self.connection, self.connection.outbox
        if reading and connection.maybe_readable:  # TLS may hold records poll cannot see
            return [(connection.sock.fileno(), select.POLLIN)]
        writing = connection.unsent is not None
        poller.modify(connection.sock, (_POLL_IN if reading else 0) | (select.POLLOUT * writing))
        # While a write waits for the socket, queued lines cannot go anyway: wait for
        # POLLOUT without asking to be woken. Otherwise sleep only if nothing is queued.
        slept = not writing
        if slept and not outbox.sleep():  # more is queued: look for input, do not wait
            return poller.poll(0)
        deadline = min(self.session.check_timeouts(), close_deadline)
        timeout_ms = max(0.0, (deadline - time.monotonic()) * 1000)
        try:
            return poller.poll(min(timeout_ms, 3_600_000))
        finally:
            if slept:
                outbox.awake()


class Reactor:
    """One thread that owns every quiet logged-in connection, polling them all with epoll.

    A thread per connection costs ~16 KiB of memory even asleep, and a broadcast would wake
    each recipient's thread to queue for the GIL: at a steady 100 messages a second to a
    room of 100, that queue was most of the server's CPU and its p99 latency. Here an idle
    connection costs its objects and OpenSSL state only, and a broadcast queues recipients
    on a deque that this one thread works through, one TLS write each.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._wakeup = Wakeup()
        self._epoll.register(self._wakeup.fileno(), select.EPOLLIN)
        self._owned: dict[int, Connection] = {}
        self._lock = threading.Lock()  # guards _stopping against adopt()
        self._stopping = False
        self._incoming: deque[Connection] = deque()  # handed over by connection threads
        self._ready: deque[Connection] = deque()  # outboxes pushed to while asleep
        self._again: deque[Connection] = deque()  # TLS may hold more input for these
        self._sleeping = False  # blocked in epoll: the next nudge must write the eventfd
        self._next_sweep = 0.0
        self.heartbeat = time.monotonic()  # the loop's last turn, for the watchdog
        self._thread = threading.Thread(target=self._run, name="reactor", daemon=True)

    def __len__(self) -> int:
        return len(self._owned)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close what the reactor still owns and end its thread."""
        with self._lock:
            if self._epoll.closed:
                return
            self._stopping = True
            self._wakeup.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            if not self._thread.is_alive():
                self._epoll.close()
                self._wakeup.close()

    # -- any thread ------------------------------------------------------------------------

    def adopt(self, connection: Connection) -> bool:
        """Take ``connection`` from its thread, which must not touch it again if True."""
        with self._lock:
            if self._stopping:
                return False
            if not connection.outbox.hand_over(functools.partial(self._push_ready, connection)):
                return False  # something was queued meanwhile: the thread writes it first
            self._incoming.append(connection)
            self._nudge()  # under the lock: stop() cannot close the eventfd meanwhile
        return True

    def _push_ready(self, connection: Connection) -> None:
        """An owned connection's outbox wake-up: called by whoever pushed to it."""
        self._ready.append(connection)
        self._nudge()

    def _nudge(self) -> None:
        if self._sleeping:
            self._sleeping = False
            self._wakeup.set()

    # -- the reactor thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._turn()
        except Exception:
            log.exception("reactor failed; closing the connections it owned")
        finally:
            with self._lock:
                self._stopping = True
            for connection in [*self._owned.values(), *self._incoming]:
                connection.close()

    def _turn(self) -> None:
        self.heartbeat = now = time.monotonic()
        while self._incoming:
            self._take(self._incoming.popleft())
        for _ in range(len(self._ready)):  # those pushed to while serving wait a turn
            connection = self._ready.popleft()
            if connection.in_reactor:
                self._serve(connection, woken=True)
        for _ in range(len(self._again)):
            connection = self._again.popleft()
            if connection.in_reactor:
                self._serve(connection, readable=True)
        if now >= self._next_sweep:
            self._sweep(now)
        # Announce sleep before the last look at the queues: a push after that look nudges.
        self._sleeping = True
        if self._incoming or self._ready or self._again or self._stopping:
            self._sleeping = False
            events = self._epoll.poll(0)
        else:
            events = self._epoll.poll(max(0.0, self._next_sweep - time.monotonic()))
            self._sleeping = False
        for fd, mask in events:
            owned = self._owned.get(fd)
            if owned is None:
                self._wakeup.clear()
            elif owned.in_reactor:  # an earlier event of this batch may have closed it
                self._serve(owned, readable=bool(mask & ~select.EPOLLOUT))

    def _take(self, connection: Connection) -> None:
        self._register(connection)
        self._serve(connection)  # a push may have come between hand-over and now

    def _register(self, connection: Connection) -> None:
        if connection.wakeup is not None:  # hand_over() took every path to it
            connection.wakeup.close()
            connection.wakeup = None
        fd = connection.sock.fileno()
        self._owned[fd] = connection
        connection.in_reactor = True
        connection.events = select.EPOLLIN
        connection.deadline = -_NEVER
        self._epoll.register(fd, select.EPOLLIN)

    def _serve(
        self, connection: Connection, *, readable: bool = False, woken: bool = False
    ) -> None:
        """One turn for one connection; a failure closes that connection, not the reactor."""
        try:
            if not (woken and self._write_only(connection)):
                self._serve_turn(connection, readable)
        except Exception:
            log.exception("%s: unexpected error in connection", connection.peer)
            if connection.in_reactor:
                self._close(connection)

    def _write_only(self, connection: Connection) -> bool:
        """A push woke this connection: write its queue; False if it needs a whole turn.

        The fast path of a broadcast, taken once per recipient: nothing but the queue can
        have changed, unless the connection is closing, waits for POLLOUT, reads nothing for
        now, or holds unprocessed input.
        """
        assert connection.session is not None  # noqa: S101 - only logged-in ones are parked
        if connection.events != select.EPOLLIN or connection.session.has_input:
            return False
        if not connection.flush():
            self._close(connection)
            return True
        if connection.unsent is not None or connection.outbox.closing is not None:
            return False
        self._rearm(connection)
        return True

    def _serve_turn(self, connection: Connection, readable: bool) -> None:
        """Read, handle, write."""
        session, outbox = connection.session, connection.outbox
        assert session is not None  # noqa: S101 - only logged-in sessions are parked
        if readable and session.wants_input and not connection.read():
            self._close(connection)
            return
        pending = session.process(inline=True)
        if pending is Pending.BLOCKING:
            self._hand_back(connection)
            return
        if not connection.flush():
            self._close(connection)
            return
        if outbox.closing is not None:
            if connection.drained:
                connection.close_notify()
                self._close(connection)
                return
            connection.close_deadline = min(
                connection.close_deadline, time.monotonic() + CLOSE_GRACE_S
            )
        wants_input = session.wants_input
        if wants_input and (connection.maybe_readable or pending is Pending.BACKLOG):
            self._again.append(connection)
        writing = connection.unsent is not None
        events = (select.EPOLLIN if wants_input else 0) | (select.EPOLLOUT if writing else 0)
        if events != connection.events:
            self._epoll.modify(connection.sock.fileno(), events)
            connection.events = events
        if not writing and outbox.closing is None:
            self._rearm(connection)

    def _rearm(self, connection: Connection) -> None:
        """Written out: let the next push wake us, or write again if one came meanwhile."""
        if not connection.outbox.sleep():
            self._ready.append(connection)

    def _sweep(self, now: float) -> None:
        """Enforce idle timeouts and close deadlines; a second late at most."""
        self._next_sweep = now + SWEEP_INTERVAL_S
        for connection in list(self._owned.values()):
            if now >= connection.close_deadline:
                self._close(connection)
            elif now >= connection.deadline:
                assert connection.session is not None  # noqa: S101 - parked: logged in
                connection.deadline = connection.session.check_timeouts()
                if connection.outbox.closing is not None:
                    self._ready.append(connection)

    def _release(self, connection: Connection) -> None:
        del self._owned[connection.sock.fileno()]
        try:
            self._epoll.unregister(connection.sock)
        finally:
            connection.in_reactor = False

    def _close(self, connection: Connection) -> None:
        self._release(connection)
        connection.close()

    def _hand_back(self, connection: Connection) -> None:
        """Run a blocking request on a thread of its own, which parks the connection again."""
        self._release(connection)
        try:
            connection.wakeup = Wakeup()
            connection.outbox.take_back(connection.wakeup.set)
            threading.Thread(
                target=connection.run_on_thread, name=f"conn {connection.peer}", daemon=True
            ).start()
        except Exception as error:  # no descriptor or thread to be had: block this once
            log.warning("%s: serving a blocking request inline: %s", connection.peer, error)
            assert connection.session is not None  # noqa: S101 - parked: logged in
            connection.session.process()
            connection.outbox.take_back(functools.partial(self._push_ready, connection))
            self._register(connection)
            self._ready.append(connection)

"""The one module that owns sockets: TLS listeners and the per-connection I/O loop.

``SealroomServer`` extends socketserver through its documented hooks only. ``get_request``
wraps the accepted socket without handshaking; the handshake runs in the connection's own
thread under a deadline, so a client that never speaks blocks nobody. Each connection's
thread is the only one that ever touches its SSL object: it reads, writes and polls a
non-blocking socket plus an eventfd that other threads signal through the :class:`Outbox`.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from sealroom.admission import Admission
from sealroom.outbox import Outbox, Receipt
from sealroom.session import Services, Session
from sealroom.text import escape_for_log
from sealroom.tls import client_common_name
from sealroom.wakeup import Wakeup

log = logging.getLogger("sealroom.server")

READ_CHUNK = 65536
# After BYE is queued, how long a connection may take to drain its queue before we cut it.
CLOSE_GRACE_S = 2.0
_POLL_IN = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR


class Registry:
    """Every live connection, so shutdown can say BYE to all and wait for them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._live: dict[Outbox, socket.socket] = {}

    def add(self, outbox: Outbox, sock: socket.socket) -> None:
        with self._cond:
            self._live[outbox] = sock

    def remove(self, outbox: Outbox) -> None:
        with self._cond:
            self._live.pop(outbox, None)
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._live)

    def queued(self) -> list[int]:
        """Bytes waiting in each connection's outbox (for status: queue depths)."""
        with self._cond:
            return [outbox.size for outbox in self._live]

    def close_all(self, reason: str) -> None:
        with self._cond:
            outboxes = list(self._live)
        for outbox in outboxes:
            outbox.close(reason)

    def wait_empty(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._live, timeout)

    def force_close(self) -> None:
        """Shut down the sockets of connections that outlived the grace period.

        Only the TCP layer is touched (``socket.socket.shutdown``), never the SSL object, so
        this is safe from another thread: the owner's next read or write fails and it exits.
        """
        with self._cond:
            socks = list(self._live.values())
        for sock in socks:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


@dataclass
class Shared:
    """State every listener and connection of one server process shares."""

    services: Services
    admission: Admission
    registry: Registry
    context: ssl.SSLContext
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
        sock, address = self.socket.accept()
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
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.shared.admission.release(client_address[0])

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
    """Runs one connection on its own thread: handshake, then the I/O loop."""

    server: SealroomServer
    request: ssl.SSLSocket

    def handle(self) -> None:
        shared = self.server.shared
        services = shared.services  # read once: a reload may swap it for new connections
        settings = services.settings
        sock = self.request
        peer = _peer(self.client_address)
        wakeup = Wakeup()
        outbox = Outbox(settings.limits.outbound_queue_bytes, wakeup.set)
        shared.registry.add(outbox, sock)
        session: Session | None = None
        try:
            sock.setblocking(False)
            if not self._handshake(sock, wakeup, outbox, peer, settings.limits.handshake_timeout_s):
                return
            client_cn = client_common_name(sock) if settings.tls.client_ca else None
            session = Session(services, outbox, peer, client_cn)
            _Loop(sock, wakeup, outbox, session).run()
            log.info("%s: connection closed (%s)", session.describe(), outbox.closing or "by peer")
            services.counters.count_close(outbox.closing or "peer")
        finally:
            outbox.retire()
            if session is not None:
                session.finish()
            shared.registry.remove(outbox)
            wakeup.close()

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.request.close()

    def _handshake(
        self, sock: ssl.SSLSocket, wakeup: Wakeup, outbox: Outbox, peer: str, timeout: float
    ) -> bool:
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(wakeup, select.POLLIN)
        while True:
            try:
                sock.do_handshake()
            except ssl.SSLWantReadError:
                events = select.POLLIN
            except ssl.SSLWantWriteError:
                events = select.POLLOUT
            except (ssl.SSLError, OSError) as error:
                self.server.shared.handshake_failures += 1
                log.info("%s [-]: TLS handshake failed: %s", peer, escape_for_log(str(error)))
                return False
            else:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or outbox.closing is not None:
                log.info("%s [-]: TLS handshake timed out", peer)
                return False
            poller.register(sock, events)
            poller.poll(remaining * 1000)
            poller.unregister(sock)


class _Loop:
    """The steady state of one connection: read lines, write what the outbox holds."""

    def __init__(
        self, sock: ssl.SSLSocket, wakeup: Wakeup, outbox: Outbox, session: Session
    ) -> None:
        self.sock = sock
        self.wakeup = wakeup
        self.outbox = outbox
        self.session = session
        self.counters = session.services.counters
        self.unsent: memoryview | None = None  # handed to SSL_write, to retry as is
        self.receipts: list[Receipt] = []  # run once ``unsent`` is all written
        # OpenSSL may have read more records from the socket than it has decrypted, where
        # neither poll nor SSL_pending can see them: after data, read again until WantRead.
        self.maybe_readable = True

    def run(self) -> None:
        session, outbox = self.session, self.outbox
        poller = select.poll()
        wakeup = self.wakeup.fileno()
        poller.register(wakeup, select.POLLIN)
        poller.register(self.sock, select.POLLIN)
        session.greet()
        close_deadline = float("inf")
        while True:
            session.process()
            if not self._flush():
                return
            if outbox.closing is not None:
                if self.unsent is None and not outbox.size:
                    self._close_notify()
                    return
                now = time.monotonic()
                if close_deadline == float("inf"):
                    close_deadline = now + CLOSE_GRACE_S
                elif now >= close_deadline:
                    return
            reading = session.wants_input
            for fd, _events in self._wait(poller, reading, close_deadline):
                if fd == wakeup:
                    self.wakeup.clear()
                elif reading and not self._read():
                    return

    def _wait(
        self, poller: select.poll, reading: bool, close_deadline: float
    ) -> list[tuple[int, int]]:
        """Block until input, writability or a wake-up, unless there is work already."""
        if reading and self.maybe_readable:  # TLS may hold records poll cannot see
            return [(self.sock.fileno(), select.POLLIN)]
        events = (_POLL_IN if reading else 0) | (select.POLLOUT if self.unsent else 0)
        poller.modify(self.sock, events)
        # While a write waits for the socket, queued lines cannot go anyway: wait for
        # POLLOUT without asking to be woken. Otherwise sleep only if nothing is queued.
        slept = self.unsent is None
        if slept and not self.outbox.sleep():  # more is queued: look for input, do not wait
            return poller.poll(0)
        deadline = min(self.session.check_timeouts(), close_deadline)
        timeout_ms = max(0.0, (deadline - time.monotonic()) * 1000)
        try:
            return poller.poll(min(timeout_ms, 3_600_000))
        finally:
            if slept:
                self.outbox.awake()

    def _read(self) -> bool:
        """Feed what TLS has for us to the session; False when the peer is gone."""
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
        self.counters.bytes_received += len(data)
        self.session.feed(data)
        self.maybe_readable = True
        return True

    def _flush(self) -> bool:
        """Write queued lines, many per TLS write; False when the peer is gone."""
        while True:
            if self.unsent is None:
                data, self.receipts = self.outbox.take()
                if not data:
                    return True
                self.unsent = memoryview(data)
            try:
                sent = self.sock.send(self.unsent)
                self.counters.bytes_sent += sent
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return True
            except (ssl.SSLError, OSError) as error:
                log.debug("%s: write failed: %s", self.session.describe(), error)
                return False
            if sent < len(self.unsent):
                self.unsent = self.unsent[sent:]
                continue
            self.unsent = None
            for receipt in self.receipts:
                receipt()

    def _close_notify(self) -> None:
        with contextlib.suppress(ssl.SSLError, OSError, ValueError):
            self.sock.unwrap()

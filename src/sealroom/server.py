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
import os
import select
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sealroom.admission import Admission
from sealroom.outbox import Outbox, Receipt
from sealroom.session import Services, Session
from sealroom.text import escape_for_log
from sealroom.tls import client_common_name

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
    stats: dict[str, int] = field(default_factory=dict)


class SealroomServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """One TLS listener. A process has one per ``listen`` address, all sharing ``Shared``."""

    daemon_threads = True
    block_on_close = False  # shutdown closes sessions itself and waits with a deadline
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], shared: Shared) -> None:
        self.shared = shared
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("%s: unexpected error in connection", _peer(client_address))


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
        settings = shared.services.settings
        sock = self.request
        peer = _peer(self.client_address)
        wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        outbox = Outbox(settings.limits.outbound_queue_bytes, lambda: os.eventfd_write(wakeup, 1))
        shared.registry.add(outbox, sock)
        session: Session | None = None
        try:
            sock.setblocking(False)
            if not self._handshake(sock, wakeup, outbox, peer, settings.limits.handshake_timeout_s):
                return
            client_cn = client_common_name(sock) if settings.tls.client_ca else None
            session = Session(shared.services, outbox, peer, client_cn)
            _Loop(sock, wakeup, outbox, session).run()
            log.info("%s: connection closed (%s)", session.describe(), outbox.closing or "by peer")
        finally:
            outbox.retire()
            if session is not None:
                session.finish()
            shared.registry.remove(outbox)
            os.close(wakeup)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.request.close()

    def _handshake(
        self, sock: ssl.SSLSocket, wakeup: int, outbox: Outbox, peer: str, timeout: float
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
                log.info("%s: TLS handshake failed: %s", peer, escape_for_log(str(error)))
                return False
            else:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or outbox.closing is not None:
                log.info("%s: TLS handshake timed out", peer)
                return False
            poller.register(sock, events)
            poller.poll(remaining * 1000)
            poller.unregister(sock)


class _Loop:
    """The steady state of one connection: read lines, write what the outbox holds."""

    def __init__(self, sock: ssl.SSLSocket, wakeup: int, outbox: Outbox, session: Session) -> None:
        self.sock = sock
        self.wakeup = wakeup
        self.outbox = outbox
        self.session = session
        self.unsent: memoryview | None = None  # handed to SSL_write, to retry as is
        self.receipts: list[Receipt] = []  # run once ``unsent`` is all written

    def run(self) -> None:
        session, outbox = self.session, self.outbox
        poller = select.poll()
        poller.register(self.wakeup, select.POLLIN)
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
            if reading and self.sock.pending():
                ready = [(self.sock.fileno(), select.POLLIN)]
            else:
                events = (_POLL_IN if reading else 0) | (select.POLLOUT if self.unsent else 0)
                poller.modify(self.sock, events)
                deadline = min(session.check_timeouts(), close_deadline)
                timeout_ms = max(0.0, (deadline - time.monotonic()) * 1000)
                ready = poller.poll(min(timeout_ms, 3_600_000))
            for fd, _events in ready:
                if fd == self.wakeup:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self.wakeup)
                elif reading and not self._read():
                    return

    def _read(self) -> bool:
        """Feed what TLS has for us to the session; False when the peer is gone."""
        try:
            data = self.sock.recv(READ_CHUNK)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return True
        except (ssl.SSLError, OSError) as error:
            log.debug("%s: read failed: %s", self.session.describe(), error)
            return False
        if not data:
            return False
        self.session.feed(data)
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

"""The TLS listeners: ``socketserver.TCPServer`` subclasses that accept and wrap sockets.

``SealroomServer`` extends socketserver through its documented hooks only. ``get_request``
wraps the accepted socket with the TLS context without handshaking; ``verify_request``
applies the connection caps; ``process_request`` hands the connection to the
:class:`~sealroom.net.reactor.Reactor`, which drives it from the handshake on. No thread is
started per connection: the listener's own thread only accepts.

A connection from an address in ``cluster.trusted_proxies`` is a load balancer's: only the
total cap applies at accept, and the connection reads the PROXY protocol header, which
names the client for the per-address caps, before its TLS handshake.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import socketserver
import time
from typing import Any

from sealroom.core.proxy import TrustedProxies
from sealroom.net.connection import Connection, Shared
from sealroom.net.reactor import Reactor

log = logging.getLogger("sealroom.server")

# accept() failing for want of descriptors or memory leaves the listening socket readable:
# without a pause the serving loop would spin on it. Clients wait in the backlog meanwhile.
ACCEPT_BACKOFF_S = 0.05
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_NEVER = float("inf")


class SealroomServer(socketserver.TCPServer):
    """One TLS listener. A process has one per ``listen`` address, all sharing ``Shared``."""

    allow_reuse_address = True
    # SO_REUSEPORT (set by server_bind): N `sealroom serve` processes on one host may listen
    # on one port, and the kernel spreads new connections across them, so N nodes use N
    # cores (SPEC section 4). Linux shares a port only between sockets of the same user.
    allow_reuse_port = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], shared: Shared, reactor: Reactor) -> None:
        self.shared = shared
        self.reactor = reactor
        self.heartbeat = time.monotonic()  # the serving loop's last turn, for the watchdog
        self._starved_warning = -_NEVER  # when "cannot accept" was last logged
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        # Fixed for the life of the process, like the socket: a reload never changes whom a
        # connection already admitted was counted as.
        self.trusted_proxies = TrustedProxies(shared.services.settings.cluster.trusted_proxies)
        # Only a port named on purpose is shared. Port 0 asks for a port of our own, and
        # with SO_REUSEPORT Linux may hand out one that another listener of the same user
        # holds (an earlier server still closing, say): that one would get our connections.
        self.allow_reuse_port = address[1] != 0
        super().__init__(address, socketserver.BaseRequestHandler)  # process_request is ours

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
        return self.shared.admission.admit(self._admitted_as(_peer(client_address)))

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the wrapped socket to the reactor; the connection owns it from now on."""
        peer = _peer(client_address)
        admitted_as = self._admitted_as(peer)
        try:
            connection = self.make_connection(request, peer)
        except OSError as error:
            log.warning("%s [-]: cannot serve connection: %s", peer, error)
            with contextlib.suppress(OSError):
                request.close()
            self.shared.admission.release(admitted_as)
            return
        if admitted_as is None:
            connection.expect_proxy_header()
        if not self.reactor.adopt(connection):  # shutting down
            connection.close()

    def _admitted_as(self, peer: str) -> str | None:
        """The address admission counts a connection under: None for a trusted balancer's,
        whose client is named later, by its PROXY header."""
        return None if peer in self.trusted_proxies else peer

    def make_connection(self, request: Any, peer: str) -> Connection:
        """The state machine for an accepted, wrapped socket (the web door makes its own)."""
        return Connection(self.shared, request, peer)

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

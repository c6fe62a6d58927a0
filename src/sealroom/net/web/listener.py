"""The web door's listener: the TLS listener's accept, caps and hand-over, making web
connections (SPEC section 5).

It is a :class:`~sealroom.net.listener.SealroomServer` in all but the connections it makes:
accepted sockets are wrapped with the same TLS context (so the same certificate, profile
and reloads), admitted against the same connection caps and handed to the same reactor.
"""

from __future__ import annotations

from typing import Any

from sealroom.net.connection import Connection, Shared
from sealroom.net.listener import SealroomServer
from sealroom.net.reactor import Reactor
from sealroom.net.web.connection import WebConnection
from sealroom.net.web.door import WebDoor
from sealroom.net.web.site import Site


class WebServer(SealroomServer):
    """The HTTPS listener of ``web.listen``."""

    def __init__(
        self, address: tuple[str, int], shared: Shared, reactor: Reactor, site: Site
    ) -> None:
        super().__init__(address, shared, reactor)
        self.door = WebDoor(site, self.socket.getsockname()[1])

    def make_connection(self, request: Any, peer: str) -> Connection:
        return WebConnection(self.shared, request, peer, self.door)

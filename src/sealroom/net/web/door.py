"""What every connection of one web listener shares: its site, its port and its numbers."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from sealroom.net.web.site import Site

if TYPE_CHECKING:
    from sealroom.net.web.connection import WebConnection


class WebDoor:
    """The web listener's shared state; status and metrics read it from other threads."""

    def __init__(self, site: Site, port: int) -> None:
        self.site = site
        self.port = port  # as bound: the port of the origin a browser shows
        self._lock = threading.Lock()
        self._live: set[WebConnection] = set()
        # HTTP answers by status code; the keys are the few codes the site sends.
        self.answered: dict[int, int] = {}

    def add(self, connection: WebConnection) -> None:
        with self._lock:
            self._live.add(connection)

    def remove(self, connection: WebConnection) -> None:
        with self._lock:
            self._live.discard(connection)

    def count_answer(self, status: int) -> None:
        self.answered[status] = self.answered.get(status, 0) + 1

    def counts(self) -> tuple[int, int]:
        """(web connections, of which logged-in sessions): a racy but harmless read."""
        with self._lock:
            live = list(self._live)
        sessions = sum(1 for c in live if c.session is not None and c.session.member is not None)
        return len(live), sessions

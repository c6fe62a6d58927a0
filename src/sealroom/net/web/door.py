"""What every connection of one web listener shares: its site, its port, its numbers, and
the WebSocket frames of lines just sent."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from sealroom.net.web.site import Site

if TYPE_CHECKING:
    from sealroom.net.web.connection import WebConnection

# A broadcast queues one line to every recipient, and each web recipient would frame it
# again: keep the frames of the lines sent last. The lines in flight to all recipients at
# once must fit (recipients flush them in turn, oldest first; a cache smaller than that
# would evict each line just before the next recipient asks for it): a budget in bytes,
# line and frame counted, oldest out first.
FRAME_CACHE_BYTES = 2 * 1024 * 1024


class WebDoor:
    """The web listener's shared state; status and metrics read it from other threads."""

    def __init__(self, site: Site, port: int) -> None:
        self.site = site
        self.port = port  # as bound: the port of the origin a browser shows
        self._lock = threading.Lock()
        self._live: set[WebConnection] = set()
        # HTTP answers by status code; the keys are the few codes the site sends.
        self.answered: dict[int, int] = {}
        # An encoded line (no LF) -> its text frame. Only the reactor thread touches it.
        self._frames: dict[bytes, bytes] = {}
        self._frames_bytes = 0

    def add(self, connection: WebConnection) -> None:
        with self._lock:
            self._live.add(connection)

    def remove(self, connection: WebConnection) -> None:
        with self._lock:
            self._live.discard(connection)

    def frames(self, data: bytes, make: Callable[[str], bytes]) -> bytes:
        """The text frames of the encoded lines in ``data``, one per line; ``make`` frames
        a line that was not framed lately.

        A server's frames are unmasked and this door negotiates no extension, so a line's
        frame is the same bytes on every connection: one recipient's serves them all.
        """
        cache = self._frames
        out = []
        for line in data.split(b"\n")[:-1]:  # each line ends in LF
            frame = cache.get(line)
            if frame is None:
                frame = make(line.decode("utf-8"))
                self._frames_bytes += len(line) + len(frame)
                while self._frames_bytes > FRAME_CACHE_BYTES and cache:
                    oldest = next(iter(cache))
                    self._frames_bytes -= len(oldest) + len(cache.pop(oldest))
                cache[line] = frame
            out.append(frame)
        return b"".join(out)

    def count_answer(self, status: int) -> None:
        self.answered[status] = self.answered.get(status, 0) + 1

    def counts(self) -> tuple[int, int]:
        """(web connections, of which logged-in sessions): a racy but harmless read."""
        with self._lock:
            live = list(self._live)
        sessions = sum(1 for c in live if c.session is not None and c.session.member is not None)
        return len(live), sessions

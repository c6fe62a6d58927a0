"""A connection's bounded queue of encoded lines: the only object other threads touch.

OpenSSL forbids using one SSL object from two threads at once, so a broadcast never writes to
another connection's socket. It appends the (already encoded, shared) line to that
connection's outbox and wakes the owning thread, which writes everything queued in one TLS
write. An outbox that would grow past its bound is a slow consumer: its queue is dropped and
replaced by ``BYE slow-consumer``, so one stalled reader never slows the sender or anyone else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sealroom.core.protocol import encode_line

Receipt = Callable[[], None]
_NO_RECEIPTS: list[Receipt] = []  # shared, never appended to: take() hands it out read-only


class Outbox:
    __slots__ = (
        "_chunks",
        "_closing",
        "_held",
        "_held_size",
        "_lock",
        "_receipts",
        "_size",
        "_sleeping",
        "_wake",
        "limit",
    )

    def __init__(self, limit: int, wake: Callable[[], None]) -> None:
        self.limit = limit
        self._wake = wake
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []
        self._receipts: list[Receipt] = []
        self._size = 0
        self._closing: str | None = None
        self._sleeping = False  # the owner is (about to be) blocked waiting for a wake-up
        # While the owner streams a long reply, others' lines wait here, so that no event
        # falls between a reply's data lines and its final line. They count towards the
        # bound all the same: a client that stops reading is still cut off.
        self._held: list[bytes] | None = None
        self._held_size = 0

    @property
    def size(self) -> int:
        """Bytes queued and not yet taken by the owner."""
        return self._size

    @property
    def closing(self) -> str | None:
        """The BYE reason once the connection is to be closed, else None."""
        return self._closing

    def push(self, data: bytes, *, wake: bool = True, on_sent: Receipt | None = None) -> bool:
        """Queue ``data``; False if the connection is closing (the data is dropped).

        The owner's own replies pass ``wake=False``: it flushes after handling input anyway.
        ``on_sent`` runs on the owner's thread once ``data`` has been written to the socket,
        and never if the connection dies first.
        Waking happens under the lock so that :meth:`retire` can make it a no-op for good
        before the owner closes its wake-up descriptor.
        """
        with self._lock:
            if self._closing is not None:
                return False
            if self._size + len(data) > self.limit:
                self._close_locked("slow-consumer", discard=True)
                self._wake()
                return False
            if wake and self._held is not None:  # another's line, during a long reply
                self._held.append(data)
                self._held_size += len(data)
                self._size += len(data)
                return True
            if wake and self._sleeping:
                self._sleeping = False
                self._wake()
            self._chunks.append(data)
            self._size += len(data)
            if on_sent is not None:
                self._receipts.append(on_sent)
            return True

    def close(self, reason: str, *, wake: bool = True) -> None:
        """Ask the owner to send ``BYE reason`` after what is queued, then close."""
        with self._lock:
            if self._closing is not None:
                return
            self._close_locked(reason, discard=False)
            if wake:
                self._wake()

    def hold(self) -> None:
        """The owner starts a reply it writes in parts: hold others' lines until
        :meth:`release`. Others are those who push with ``wake=True``; the owner's own
        lines pass ``wake=False``."""
        with self._lock:
            if self._held is None:
                self._held = []

    def release(self) -> None:
        """The reply is queued whole: the lines held meanwhile follow it."""
        with self._lock:
            held, self._held = self._held, None
            if held:
                self._chunks.extend(held)
                self._held_size = 0

    def sleep(self) -> bool:
        """The owner is about to wait: True if it may (nothing queued); then the next push
        wakes it. Only a sleeping owner is woken, so a busy one costs its senders nothing."""
        with self._lock:
            if self._chunks or self._closing is not None:
                return False
            self._sleeping = True
            return True

    def route_wakeups(self, wake: Callable[[], None]) -> None:
        """Route wake-ups to ``wake``: a new owner (the reactor adopting the connection),
        which looks at the queue before it first sleeps. A retired outbox stays silent."""
        with self._lock:
            if self._wake is not _no_wake:
                self._wake = wake
            self._sleeping = False

    def retire(self, reason: str = "closed") -> None:
        """The owner is done: refuse further pushes and never call ``wake`` again."""
        with self._lock:
            if self._closing is None:
                self._closing = reason
            self._wake = _no_wake
            self._chunks.clear()
            self._receipts.clear()
            self._size = 0
            self._held = None
            self._held_size = 0

    def _close_locked(self, reason: str, *, discard: bool) -> None:
        if discard:
            self._chunks.clear()
            self._receipts.clear()
            self._size = 0
            self._held = None
            self._held_size = 0
        elif self._held:  # closing: what was held goes out before the BYE
            self._chunks.extend(self._held)
            self._held = None
            self._held_size = 0
        bye = encode_line("BYE", reason)
        self._chunks.append(bye)
        self._size += len(bye)
        self._closing = reason.split(" ", 1)[0]

    def take(self) -> tuple[bytes, list[Receipt]]:
        """Everything queued, as one buffer for one TLS write, and the receipts to run
        once all of it has been written."""
        with self._lock:
            chunks = self._chunks
            if not chunks:
                return b"", _NO_RECEIPTS
            receipts = self._receipts
            self._chunks = []
            self._size = self._held_size
            if receipts:
                self._receipts = []
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), receipts


def _no_wake() -> None:
    """The wake-up of a retired outbox: its descriptor may already be closed and reused."""

"""Message ids, room history and private-message delivery: what the server remembers.

Two paths with two promises:

* Room messages are stored *off* the hot path. Fan-out never waits for the disk: a writer
  thread takes accepted messages from a bounded queue and commits them in batches (group
  commit). A crash can lose the last moments of room *history*; live delivery happened.
* A private message to an account with no live session is committed *before* the sender
  gets ``OK msg``: what the server acknowledged survives a crash. It is delivered at the
  recipient's next login and marked delivered only after its line was written to the
  socket, so a connection that dies mid-delivery gets it again next time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sealroom.core.blocking import check_may_block
from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.model import StoredMessage, iso_utc
from sealroom.core.storage import Store
from sealroom.state.hub import Admit, Hub, Member

log = logging.getLogger("sealroom.messages")

ID_BLOCK = 1000  # ids reserved per durable write; a crash skips at most this many
QUEUE_LIMIT = 10_000  # room messages waiting for the writer (about 5 MB at worst)
BATCH_LIMIT = 500  # messages per group commit
SUBMIT_WAIT_S = 1.0  # a full queue makes the *publisher* wait this long, then drops history
COMMIT_INTERVAL_S = 0.05  # how long accepted room messages gather before one commit
LEASE_S = 60.0  # a cluster node's claim on stored messages, should it die delivering them
PENDING_BATCH = 16  # stored private messages claimed, written, then marked, at a time:
# a crash between writing a batch and marking it repeats at most this many
HIST_OVERHEAD = 120  # bytes a HIST line adds to its text: names, id, time


class IdsExhausted(Exception):  # noqa: N818 -- names the condition, as callers read it
    """No reserved id is left in memory: reserve a block (blocking) before trying again."""


class MessageIds:
    """Unique, increasing message ids, reserved durably in blocks ahead of need.

    :meth:`take` never touches the database: it hands out ids from blocks reserved before.
    When the current block is half used, the next one is reserved in the background (through
    ``prefetch``, which runs :meth:`refill` on a worker), so the fan-out path and the hub lock
    never wait for a commit. Only a burst that outruns the prefetch finds nothing left; then
    :meth:`take` raises :class:`IdsExhausted` and the caller runs :meth:`refill` where it may
    block.
    """

    def __init__(
        self, store: Store, prefetch: Callable[[Callable[[], None]], object] | None = None
    ) -> None:
        self._store = store
        self._prefetch = prefetch
        self._lock = threading.Lock()  # guards the blocks; never held across I/O
        self._refill_lock = threading.Lock()  # one reservation at a time
        self._blocks: deque[range] = deque()
        self._position = 0  # the next id's index in _blocks[0]
        self._prefetching = False

    def take(self) -> int:
        """The next id, from memory; raises :class:`IdsExhausted` when none is reserved."""
        with self._lock:
            while self._blocks and self._position >= len(self._blocks[0]):
                self._blocks.popleft()
                self._position = 0
            if not self._blocks:
                raise IdsExhausted
            block = self._blocks[0]
            message_id = block[self._position]
            self._position += 1
            ahead = len(self._blocks) > 1
            low = not ahead and self._position * 2 >= len(block)
            if low and self._prefetch is not None and not self._prefetching:
                self._prefetching = True
                if self._prefetch(self._background_refill) is False:  # the pool is stopping
                    self._prefetching = False
            return message_id

    def refill(self) -> None:
        """Reserve the next block unless ids are left (blocks on the database)."""
        with self._refill_lock:
            with self._lock:
                left = sum(len(block) for block in self._blocks) - self._position
            if left > 0:
                return  # another thread reserved a block while we waited for the lock
            block = self._store.reserve_ids(ID_BLOCK)
            with self._lock:
                self._blocks.append(block)

    def _background_refill(self) -> None:
        try:
            with self._refill_lock:
                block = self._store.reserve_ids(ID_BLOCK)
                with self._lock:
                    self._blocks.append(block)
        finally:
            self._prefetching = False


class HistoryWriter:
    """A thread that commits accepted messages in batches, off the fan-out path.

    Publishers append to a deque (atomic, no lock) and wake the writer only when the deque
    was empty or a batch is full; the writer then lets messages gather for
    ``COMMIT_INTERVAL_S`` and commits them in one transaction. Waking a thread per message
    would cost more CPU than the message itself.
    """

    def __init__(self, store: Store, per_room: int, per_user: int) -> None:
        """``store`` is the writer's own connection: it is closed by :meth:`stop`."""
        self._store = store
        self.per_room = per_room
        self.per_user = per_user
        self._pending: deque[StoredMessage | threading.Event] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="history writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def lag(self) -> int:
        """Messages accepted but not yet committed."""
        return len(self._pending)

    @property
    def backed_up(self) -> bool:
        """The queue is full: a message submitted now would go unstored."""
        return len(self._pending) >= QUEUE_LIMIT

    def submit(self, message: StoredMessage) -> None:
        """Queue ``message`` for the next commit; never waits (the reactor calls this).

        A publisher that may block calls :meth:`wait_for_room` first; one that finds the
        queue full anyway loses the message's *history* (live delivery happened), said in
        the log, rather than stall the fan-out.
        """
        if len(self._pending) >= QUEUE_LIMIT:
            self.dropped += 1
            self._wake.set()
            log.warning("history writer is behind: message %d not stored", message.id)
            return
        was_empty = not self._pending
        self._pending.append(message)
        # Event.set takes a lock and may hand the GIL to the writer: only if it would wake it.
        if (was_empty or len(self._pending) >= BATCH_LIMIT) and not self._wake.is_set():
            self._wake.set()

    def wait_for_room(self) -> bool:
        """The disk is behind: wait up to ``SUBMIT_WAIT_S`` for room (on a worker thread).

        This is how a full queue slows the *publisher* that filled it, never the fan-out.
        """
        check_may_block("waiting for the history writer")
        self._wake.set()
        deadline = time.monotonic() + SUBMIT_WAIT_S
        while len(self._pending) >= QUEUE_LIMIT:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far is committed (for ``/history``)."""
        if not self._thread.is_alive():
            return not self._pending
        marker = threading.Event()
        self._pending.append(marker)
        self._wake.set()
        return marker.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then end the thread and close its connection."""
        if self._thread.is_alive():
            self._stopping = True
            self._wake.set()
            self._thread.join(timeout)
        self._store.close()

    def _run(self) -> None:
        while True:
            # The timeout only bounds a wake-up lost to a race between two publishers.
            self._wake.wait(1.0)
            self._wake.clear()
            if len(self._pending) < BATCH_LIMIT and not self._stopping:
                time.sleep(COMMIT_INTERVAL_S)  # let a batch gather
            stopping = self._stopping
            self._drain()
            if stopping:
                return

    def _drain(self) -> None:
        while self._pending:
            batch: list[StoredMessage] = []
            marker = None
            while self._pending and len(batch) < BATCH_LIMIT:
                item = self._pending.popleft()
                if isinstance(item, threading.Event):
                    marker = item
                    break
                batch.append(item)
            if batch:
                self._commit(batch)
            if marker is not None:
                marker.set()  # everything submitted before the flush is committed

    def _commit(self, batch: list[StoredMessage]) -> None:
        try:
            self._store.add_messages(
                batch, keep_per_room=self.per_room, keep_per_recipient=self.per_user
            )
        except Exception:
            log.exception("history writer could not store %d messages", len(batch))


class MessageLog:
    """The session's door to ids, history and stored private messages.

    :meth:`say`, :meth:`release` and :meth:`now` never block: the reactor calls them. Every
    other method reads or writes the database and runs on a worker thread.
    """

    def __init__(
        self,
        store: Store,
        hub: Hub,
        writer: HistoryWriter,
        ids: MessageIds,
        *,
        private_quota: int,
        private_per_sender: int = 100,
        store_rooms: bool = True,
        claimer: str | None = None,
        background: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        """``hub`` must draw its message ids from ``ids`` (``ids.take``).

        ``claimer``: in a cluster, this process's name for leases on stored messages, kept
        in the store, where every node sees them; ``background`` then runs the release of
        a lease (a database write) off the caller's thread.
        """
        self.store = store
        self.hub = hub
        self.writer = writer
        self.ids = ids
        self.private_quota = private_quota
        self.private_per_sender = private_per_sender
        self.store_rooms = store_rooms
        self.claimer = claimer
        self._background = background
        self._now: tuple[int, str] = (-1, "")
        # "Is the recipient online?" and storing for an offline one are one step under this
        # lock, and so is claiming stored messages at login: a message stored for an offline
        # account cannot slip past a login happening meanwhile. Held across database I/O.
        self._mail_lock = threading.Lock()
        # Stored messages some session is delivering right now. Its own lock, never held
        # across I/O, so that a closing connection gives its claims back without waiting.
        self._claimed_lock = threading.Lock()
        self._claimed: set[int] = set()

    def now(self) -> str:
        """The time in the wire format, made once per millisecond: a busy room sends many
        messages in one, and formatting a datetime costs more than storing the message."""
        millis = time.time_ns() // 1_000_000
        cached = self._now  # one tuple: another thread never sees half an update
        if cached[0] != millis:
            seconds, rest = divmod(millis, 1000)
            moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest * 1000)
            cached = self._now = (millis, iso_utc(moment))
        return cached[1]

    @property
    def backed_up(self) -> bool:
        """The history writer's queue is full: wait for room before storing more."""
        return self.writer.backed_up

    # -- rooms ------------------------------------------------------------------------------

    def say(self, member: Member, room: str, text: str, admit: Admit | None = None) -> int:
        """Relay and queue for storage; raises :class:`IdsExhausted` before relaying if no
        id is reserved (the caller then runs ``ids.refill`` where it may block)."""
        message_id = self.hub.say(member, room, text, admit)
        if self.store_rooms:
            self.writer.submit(StoredMessage(message_id, room, None, member.name, text, self.now()))
        return message_id

    def room_history(self, room: str, limit: int) -> list[StoredMessage]:
        self.writer.flush()
        return self.store.room_history(room, limit)

    def conversation(self, one: str, other: str, limit: int) -> list[StoredMessage]:
        self.writer.flush()
        return self.store.conversation(one, other, limit)

    # -- private messages -------------------------------------------------------------------

    def send_private(
        self, sender: str, recipient: str, text: str, recipient_stamp: int | None = None
    ) -> int:
        """Deliver live to the recipient's sessions (of the record ``recipient_stamp``), or
        store durably for an offline account; returns the id."""
        self.writer.wait_for_room()
        with self._mail_lock:
            while True:
                try:
                    message_id, reached = self.hub.direct(sender, recipient, text, recipient_stamp)
                    break
                except IdsExhausted:
                    self.ids.refill()
            message = StoredMessage(message_id, None, recipient, sender, text, self.now())
            if reached:
                self.writer.submit(message)
                return message_id
            self.check_quota(sender, recipient)
            self.store.add_messages([message], delivered=False)
            return message_id

    def check_quota(self, sender: str, recipient: str) -> None:
        """Whether one more message may be stored for ``recipient``; raises if not."""
        if self.store.pending_count(recipient) >= self.private_quota:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"{recipient} has {self.private_quota} messages waiting; retry in 60s",
            )
        # One sender cannot fill a recipient's mailbox for everyone else.
        if self.store.pending_count_from(sender, recipient) >= self.private_per_sender:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"{self.private_per_sender} of your messages wait for {recipient}; retry in 60s",
            )

    def claim(self, name: str, max_bytes: int) -> list[StoredMessage]:
        """The next batch of stored messages for ``name``, about ``max_bytes`` at most,
        that no other session of ``name`` is delivering right now.

        In a cluster the claim is a lease in the store (several processes deliver); else
        this process's memory is enough.

        A session claims after it is attached to the hub, so every message is either
        delivered live or found here.
        """
        if self.claimer is not None:
            return self._lease(name, max_bytes, self.claimer)
        with self._mail_lock:
            with self._claimed_lock:
                limit = PENDING_BATCH + len(self._claimed)
            found = self.store.pending(name, limit)
            batch: list[StoredMessage] = []
            size = 0
            with self._claimed_lock:
                for message in found:
                    if message.id in self._claimed:
                        continue
                    size += len(message.body.encode()) + HIST_OVERHEAD
                    if batch and (size > max_bytes or len(batch) >= PENDING_BATCH):
                        break
                    batch.append(message)
                self._claimed.update(m.id for m in batch)
            return batch

    def _lease(self, name: str, max_bytes: int, claimer: str) -> list[StoredMessage]:
        found = self.store.claim_pending(name, PENDING_BATCH, claimer, LEASE_S)
        batch: list[StoredMessage] = []
        size = 0
        for message in found:
            size += len(message.body.encode()) + HIST_OVERHEAD
            if batch and size > max_bytes:
                break
            batch.append(message)
        if len(batch) < len(found):
            self.store.release_pending([m.id for m in found[len(batch) :]], claimer)
        return batch

    def delivered(self, ids: Sequence[int]) -> None:
        """The lines of ``ids`` were written to the socket: never deliver them again."""
        self.store.mark_delivered(ids)
        self.release(ids)

    def release(self, ids: Sequence[int]) -> None:
        """A session died before writing these: leave them for the next login. Never
        blocks (a closing connection calls it on its own thread)."""
        claimer = self.claimer
        if claimer is not None:
            if ids and self._background is not None:
                held = list(ids)
                self._background(lambda: self.store.release_pending(held, claimer))
            return  # without a pool the lease runs out by itself
        with self._claimed_lock:
            self._claimed.difference_update(ids)

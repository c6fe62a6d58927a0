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
from collections.abc import Sequence
from datetime import UTC, datetime

from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.model import StoredMessage, iso_utc
from sealroom.core.storage import Store
from sealroom.state.hub import Hub, Member

log = logging.getLogger("sealroom.messages")

ID_BLOCK = 1000  # ids reserved per durable write; a crash skips at most this many
QUEUE_LIMIT = 10_000  # room messages waiting for the writer (about 5 MB at worst)
BATCH_LIMIT = 500  # messages per group commit
SUBMIT_WAIT_S = 1.0  # a full queue makes the *publisher* wait this long, then drops history
COMMIT_INTERVAL_S = 0.05  # how long accepted room messages gather before one commit
PENDING_BATCH = 100  # stored private messages claimed and delivered at a time
HIST_OVERHEAD = 120  # bytes a HIST line adds to its text: names, id, time


class MessageIds:
    """Unique, increasing message ids, reserved durably in blocks."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._block = iter(range(0))

    def next(self) -> int:
        with self._lock:
            for message_id in self._block:
                return message_id
            self._block = iter(self._store.reserve_ids(ID_BLOCK))
            return next(self._block)


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
        """The queue is full: the next :meth:`submit` waits for the disk."""
        return len(self._pending) >= QUEUE_LIMIT

    def submit(self, message: StoredMessage) -> None:
        if len(self._pending) >= QUEUE_LIMIT and not self._wait_for_room():
            self.dropped += 1
            log.warning("history writer is behind: message %d not stored", message.id)
            return
        was_empty = not self._pending
        self._pending.append(message)
        # Event.set takes a lock and may hand the GIL to the writer: only if it would wake it.
        if (was_empty or len(self._pending) >= BATCH_LIMIT) and not self._wake.is_set():
            self._wake.set()

    def _wait_for_room(self) -> bool:
        """The disk is behind: the *publisher* waits a little (never the fan-out)."""
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
    """The session's door to ids, history and stored private messages."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        writer: HistoryWriter,
        *,
        private_quota: int,
        store_rooms: bool = True,
    ) -> None:
        """``hub`` must draw its message ids from a :class:`MessageIds` on ``store``."""
        self.store = store
        self.hub = hub
        self.writer = writer
        self.private_quota = private_quota
        self.store_rooms = store_rooms
        self._now: tuple[int, str] = (-1, "")
        # Delivery and "is the recipient online?" decisions are made under this lock, so a
        # message stored for an offline account cannot slip past a login happening meanwhile.
        self._mail_lock = threading.Lock()
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
        """Storing a message would make its sender wait for the history writer."""
        return self.writer.backed_up

    # -- rooms ------------------------------------------------------------------------------

    def say(self, member: Member, room: str, text: str) -> int:
        message_id = self.hub.say(member, room, text)
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

    def send_private(self, sender: str, recipient: str, text: str) -> int:
        """Deliver live, or store durably for an offline account; returns the id."""
        with self._mail_lock:
            message_id, reached = self.hub.direct(sender, recipient, text)
            message = StoredMessage(message_id, None, recipient, sender, text, self.now())
            if reached:
                self.writer.submit(message)
                return message_id
            if self.store.pending_count(recipient) >= self.private_quota:
                raise ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"{recipient} has {self.private_quota} messages waiting; retry in 60s",
                )
            self.store.add_messages([message], delivered=False)
            return message_id

    def attach_and_claim(self, member: Member, max_bytes: int) -> list[StoredMessage]:
        """Put a new session in the hub and claim the first messages stored for it."""
        with self._mail_lock:
            self.hub.attach(member)
            return self._claim_locked(member.name, max_bytes)

    def claim(self, name: str, max_bytes: int) -> list[StoredMessage]:
        """The next batch of stored messages for ``name``, about ``max_bytes`` at most."""
        with self._mail_lock:
            return self._claim_locked(name, max_bytes)

    def _claim_locked(self, name: str, max_bytes: int) -> list[StoredMessage]:
        """Pending messages that no other session of ``name`` is delivering right now."""
        limit = PENDING_BATCH + len(self._claimed)
        batch: list[StoredMessage] = []
        size = 0
        for message in self.store.pending(name, limit):
            if message.id in self._claimed:
                continue
            size += len(message.body.encode()) + HIST_OVERHEAD
            if batch and (size > max_bytes or len(batch) >= PENDING_BATCH):
                break
            batch.append(message)
        self._claimed.update(m.id for m in batch)
        return batch

    def delivered(self, ids: Sequence[int]) -> None:
        """The lines of ``ids`` were written to the socket: never deliver them again."""
        self.store.mark_delivered(ids)
        with self._mail_lock:
            self._claimed.difference_update(ids)

    def release(self, ids: Sequence[int]) -> None:
        """A session died before writing these: leave them for the next login."""
        with self._mail_lock:
            self._claimed.difference_update(ids)

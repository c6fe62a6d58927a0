"""One thread that drives every connection, from handshake to close, with epoll.

A thread per connection cost a thread start per handshake, ~16 KiB per idle connection, and
an argon2 arena per login thread; and a broadcast woke a hundred threads to queue for the
GIL. Here one thread owns every socket: a broadcast queues its recipients on a deque that
this thread works through, one TLS write each, and blocking work goes to the worker pools
(:mod:`sealroom.net.workers`), whose results come back through :meth:`Reactor.complete`.

The reactor thread never blocks: it marks itself with
:func:`~sealroom.core.blocking.forbid_blocking`, so a store or argon2 call reached from here
is caught (and fails the tests).
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sealroom.core.blocking import forbid_blocking
from sealroom.net.connection import CLOSE, READ, Connection
from sealroom.net.wakeup import Wakeup
from sealroom.session.effects import Effect, Outcome

log = logging.getLogger("sealroom.server")

# How often the reactor looks for handshake, login, idle and close deadlines.
SWEEP_INTERVAL_S = 0.25

# What a connection is served for (one small int each: this is the hot path).
_EVENT, _WOKEN, _DONE, _START, _TICK = range(5)


class Reactor:
    """Owns every connection it adopts; other threads hand it work through deques."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._wakeup = Wakeup()
        self._epoll.register(self._wakeup.fileno(), select.EPOLLIN)
        self._owned: dict[int, Connection] = {}
        self._lock = threading.Lock()  # guards _stopping against adopt() and complete()
        self._stopping = False
        self._incoming: deque[Connection] = deque()  # accepted by the listeners
        self._ready: deque[Connection] = deque()  # outboxes pushed to while asleep
        self._done: deque[tuple[Connection, Effect[Any], Outcome]] = deque()  # from workers
        self._again: deque[Connection] = deque()  # TLS may hold more input for these
        self._sleeping = False  # blocked in epoll: the next nudge must write the eventfd
        self._next_sweep = 0.0
        self._after_turn: list[Callable[[], None]] = []
        # Other descriptors it reads (and writes) for: fd -> (on_readable, on_writable).
        self._watched: dict[int, tuple[Callable[[], None], Callable[[], None] | None]] = {}
        self.heartbeat = time.monotonic()  # the loop's last turn, for the watchdog
        self._thread = threading.Thread(target=self._run, name="reactor", daemon=True)

    def __len__(self) -> int:
        return len(self._owned)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

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

    def after_turn(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` on the reactor thread after it served a poll's events, and before it
        waits for more (cheap when there is nothing to do). Work that a turn queued then goes
        out once per turn, not once per request: a cluster's bus publisher sends a turn's
        ``/say`` in one script call (sent per message, it made a Redis call for every few)."""
        self._after_turn.append(hook)

    def watch(
        self,
        fd: int,
        on_readable: Callable[[], None],
        on_writable: Callable[[], None] | None = None,
    ) -> None:
        """On the reactor thread: call ``on_readable`` there when ``fd`` is readable, and
        ``on_writable`` when it is writable and :meth:`writable` asked for it (a cluster's
        bus links: their Redis sockets). Unwatch it before closing it."""
        self._epoll.register(fd, select.EPOLLIN)
        self._watched[fd] = (on_readable, on_writable)

    def writable(self, fd: int, wanted: bool) -> None:
        """On the reactor thread: whether a watched ``fd`` waits to write more."""
        if fd in self._watched:
            self._epoll.modify(fd, select.EPOLLIN | (select.EPOLLOUT if wanted else 0))

    def unwatch(self, fd: int) -> None:
        """On the reactor thread, before ``fd`` is closed (its number may be reused)."""
        if self._watched.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    # -- any thread ------------------------------------------------------------------------

    def wake(self) -> None:
        """Turn soon (the after-turn hooks with it), if asleep: something changed for a
        hook, such as a connection handed to a watcher."""
        with self._lock:
            if not self._stopping:
                self._nudge()

    def adopt(self, connection: Connection) -> bool:
        """Take a new connection from a listener; False if the reactor is stopping."""
        with self._lock:
            if self._stopping:
                return False
            self._incoming.append(connection)
            self._nudge()  # under the lock: stop() cannot close the eventfd meanwhile
        return True

    def complete(self, connection: Connection, effect: Effect[Any], outcome: Outcome) -> None:
        """A worker finished ``effect`` for ``connection``: hand the outcome to its owner."""
        with self._lock:
            self._done.append((connection, effect, outcome))
            if not self._stopping:
                self._nudge()

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
        forbid_blocking("reactor")
        try:
            while not self._stopping:
                self._turn()
        except Exception:
            log.exception("reactor failed; closing the connections it owned")
        finally:
            with self._lock:
                self._stopping = True
            for connection in [*self._owned.values(), *self._incoming]:
                self._close(connection)
            for connection, effect, outcome in self._done:
                if connection.session is not None:
                    connection.session.complete(effect, outcome)  # abandons: it is finished

    def _turn(self) -> None:
        self.heartbeat = now = time.monotonic()
        while self._incoming:
            self._take(self._incoming.popleft(), now)
        if self._done:
            self._complete_done()
        for _ in range(len(self._ready)):  # those pushed to while serving wait a turn
            connection = self._ready.popleft()
            if self._owns(connection):
                self._serve(connection, _WOKEN)
        for _ in range(len(self._again)):
            connection = self._again.popleft()
            if self._owns(connection):
                self._serve(connection, _EVENT, readable=True)
        if now >= self._next_sweep:
            self._sweep(now)
        self._after_hooks()  # before the poll, which may sleep
        self._poll()

    def _after_hooks(self) -> None:
        for hook in self._after_turn:
            try:
                hook()
            except Exception:  # a hook's failure is its own, never the reactor's
                log.exception("an after-turn hook failed")

    def _complete_done(self) -> None:
        """Hand finished work back, all of a connection's at once: a cluster's archiver
        finishes a batch of ``/say`` together, and one turn of the connection then writes
        their replies in one TLS write rather than one each. (What finishes meanwhile --
        work refused at once -- waits for the next turn.)"""
        grouped: dict[Connection, list[tuple[Effect[Any], Outcome]]] = {}
        for _ in range(len(self._done)):
            connection, effect, outcome = self._done.popleft()
            if self._owns(connection):
                grouped.setdefault(connection, []).append((effect, outcome))
            elif connection.session is not None:
                connection.session.complete(effect, outcome)  # closed meanwhile: abandon
        for connection, done in grouped.items():
            if self._owns(connection):  # an earlier one's turn may have closed it
                self._serve(connection, _DONE, done=done)

    def _poll(self) -> None:
        # Announce sleep before the last look at the queues: a push after that look nudges.
        self._sleeping = True
        if self._incoming or self._ready or self._again or self._done or self._stopping:
            self._sleeping = False
            events = self._epoll.poll(0)
        else:
            events = self._epoll.poll(max(0.0, self._next_sweep - time.monotonic()))
            self._sleeping = False
        for fd, mask in events:
            owned = self._owned.get(fd)
            if owned is not None:
                self._serve(owned, _EVENT, readable=bool(mask & ~select.EPOLLOUT))
            elif (watcher := self._watched.get(fd)) is not None:
                self._watcher(fd, watcher, mask)
            else:
                self._wakeup.clear()
        if events:  # what they asked for goes out now, not after the rest of the turn
            self._after_hooks()

    def _watcher(
        self,
        fd: int,
        watcher: tuple[Callable[[], None], Callable[[], None] | None],
        mask: int,
    ) -> None:
        on_readable, on_writable = watcher
        try:
            if mask & ~select.EPOLLOUT:  # readable, or an error or hang-up that reading finds
                on_readable()
            still = self._watched.get(fd) is watcher  # reading may have dropped it
            if mask & select.EPOLLOUT and on_writable is not None and still:
                on_writable()
        except Exception:  # its own to mend (a bus link connects again)
            log.exception("a watcher of descriptor %d failed", fd)

    def _owns(self, connection: Connection) -> bool:
        return self._owned.get(connection.fd) is connection

    def _take(self, connection: Connection, now: float) -> None:
        connection.adopt(lambda: self._push_ready(connection))
        self._owned[connection.fd] = connection
        connection.events = READ
        try:
            self._epoll.register(connection.fd, READ)
        except OSError:
            log.exception("%s: cannot watch the connection", connection.peer)
            self._close(connection)
            return
        self._serve(connection, _START, now=now)

    def _serve(
        self,
        connection: Connection,
        kind: int,
        *,
        readable: bool = False,
        done: list[tuple[Effect[Any], Outcome]] | None = None,
        now: float = 0.0,
    ) -> None:
        """Run one step of a connection and do what it says next; a failure closes that
        connection, never the reactor."""
        try:
            if kind == _WOKEN:
                result = connection.write_only()
                if result is None:
                    result = connection.on_woken()
            elif kind == _EVENT:
                result = connection.on_event(readable)
            elif kind == _DONE and done is not None:
                result = connection.on_complete(done)
            elif kind == _START:
                result = connection.on_start(now)
            else:
                tick = connection.on_tick(now)
                result = connection.events if tick is None else tick
            self._apply(connection, result)
        except Exception:
            log.exception("%s: unexpected error in connection", connection.peer)
            if self._owns(connection):
                self._close(connection)

    def _apply(self, connection: Connection, result: int) -> None:
        if result == CLOSE:
            self._close(connection)
            return
        if result != connection.events:
            self._epoll.modify(connection.fd, result)
            connection.events = result
        if connection.again:
            connection.again = False
            self._again.append(connection)
        # Written out: let the next push wake us, or write again if one came meanwhile.
        idle = connection.unsent is None and connection.outbox.closing is None
        if idle and not connection.outbox.sleep():
            self._ready.append(connection)

    def _sweep(self, now: float) -> None:
        """Enforce deadlines; a quarter of a second late at most."""
        self._next_sweep = now + SWEEP_INTERVAL_S
        for connection in list(self._owned.values()):
            if now >= connection.deadline or now >= connection.close_deadline:
                self._serve(connection, _TICK, now=now)

    def _close(self, connection: Connection) -> None:
        if self._owned.get(connection.fd) is connection:
            del self._owned[connection.fd]
            with contextlib.suppress(OSError, ValueError):  # gone with its descriptor
                self._epoll.unregister(connection.fd)
        connection.close()

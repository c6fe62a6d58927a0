"""Bounded pools of worker threads for the work the reactor must never do itself.

Each pool has a fixed number of threads, started once: the thread count of the server does
not grow with its connections, and argon2's memory is reused by the same few threads (a
thread per login gave every one its own glibc arena, which kept freed argon2 blocks
resident). A job waits in the queue at most ``max_wait_s``; one that waited longer is not run
but answered with ``overloaded()``, so a login flood is refused quickly instead of queueing
without end. The queue needs no count bound of its own: a connection has at most one request
and one background job queued at a time, and connections are capped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from sealroom.session.effects import Later, Outcome

log = logging.getLogger("sealroom.server")

Done = Callable[[Outcome], None]


class WorkerPool:
    """``threads`` threads running jobs in the order submitted."""

    def __init__(
        self,
        name: str,
        threads: int,
        *,
        max_wait_s: float | None = None,
        overloaded: Callable[[], Exception] | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError("a pool needs at least one thread")
        self.name = name
        self.size = threads
        self._refuse_after = (
            (max_wait_s, overloaded) if max_wait_s is not None and overloaded is not None else None
        )
        self._jobs: queue.SimpleQueue[tuple[float, Callable[[], object], Done] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._run, name=f"{name} {n}", daemon=True)
            for n in range(threads)
        ]
        self._started = False
        self._stopping = False
        self.busy = 0  # jobs running now, for status
        self.refused = 0  # jobs answered with overloaded() after waiting too long

    @property
    def queued(self) -> int:
        return self._jobs.qsize()

    def start(self) -> None:
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()

    def submit(self, work: Callable[[], object], done: Done) -> bool:
        """Run ``work`` on a worker, then ``done(outcome)`` there; False once stopping."""
        if self._stopping:
            return False
        self._jobs.put((time.monotonic(), work, done))
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the jobs queued so far, then end the threads."""
        if self._stopping:
            return
        self._stopping = True
        for _ in self._threads:
            self._jobs.put(None)
        if self._started:
            deadline = time.monotonic() + timeout
            for thread in self._threads:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            queued_at, work, done = job
            refuse = self._refuse_after
            if refuse is not None and time.monotonic() - queued_at > refuse[0]:
                self.refused += 1
                outcome = Outcome(error=refuse[1]())
            else:
                self.busy += 1
                outcome = Outcome.of(work)
                self.busy -= 1
            try:
                done(outcome)
            except Exception:
                log.exception("%s: could not hand back a result", self.name)


class LaterPool:
    """The pool of :attr:`~sealroom.session.effects.Pool.LATER` work: none of its own.

    Such work only hands a request to the thread that will carry it out (a cluster's bus
    publisher) and returns a :class:`~sealroom.session.effects.Later`; it runs at once on
    the submitting thread, and ``done`` runs on whichever thread finishes the request. So a
    thousand requests in flight hold no thread each.
    """

    name = "later"
    size = 0
    busy = 0
    refused = 0
    queued = 0

    def __init__(self) -> None:
        self._stopping = False

    def start(self) -> None:
        return None

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True

    def submit(self, work: Callable[[], object], done: Done) -> bool:
        if self._stopping:
            return False
        try:
            later = work()
        except Exception as error:  # refused at once (server-busy, say): the same path
            done(Outcome(error=error))
            return True
        # A Later is whatever has ``when_done``: asked directly, since isinstance() against
        # a runtime-checkable Protocol costs microseconds, on the reactor, for every /say.
        when_done = getattr(later, "when_done", None)
        if when_done is not None:
            when_done(done)
        else:
            done(Outcome(later))
        return True


AnyPool = WorkerPool | LaterPool

__all__ = ["AnyPool", "Done", "Later", "LaterPool", "WorkerPool"]

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

from sealroom.session.effects import Outcome

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

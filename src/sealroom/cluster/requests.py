"""A request to the bus in flight: what a session waits for (or is called back with) while
the publisher sends it, the reader applies it or the archiver stores it; and the answer it
gets when an engine does not answer in time, ``server-busy``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.model import StoredMessage
from sealroom.session.effects import Outcome

BUSY_AFTER_S = 1.5  # a request that needs an engine is answered server-busy by then
RETRY_IN_S = 2  # what server-busy tells the client


class _Done:
    """A :class:`threading.Event` made only once a thread waits: most requests (every
    pipelined ``/say``) are answered through a callback, and an Event -- a Condition and
    its locks -- costs microseconds to make, on the reactor. Only one thread waits (the
    session's, in the bus's ``_await``). ``set`` stores the flag before it looks for the
    Event, ``wait`` stores the Event before it looks at the flag: one sees the other."""

    __slots__ = ("_event", "_flag")

    def __init__(self) -> None:
        self._flag = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float) -> bool:
        if self._flag:
            return True
        event = self._event
        if event is None:
            event = self._event = threading.Event()
        return self._flag or event.wait(timeout)


class Waiter:
    """A session's request in flight: done when published, applied here or archived.

    A worker may wait for it (the bus's ``_await``), or it may be a
    :class:`~sealroom.session.effects.Later` whose callback hands the outcome back to the
    session's thread: then no thread waits at all.
    """

    __slots__ = ("apply", "callback", "cancelled", "deadline", "done", "error", "lock", "result")

    def __init__(self, apply: Callable[[int], bool] | None = None) -> None:
        self.done = _Done()
        self.lock = threading.Lock()
        self.result: Any = None
        self.error: BaseException | None = None
        self.apply = apply  # run by the reader when the entry comes back; under ``lock``
        self.cancelled = False
        self.callback: Callable[[Outcome], None] | None = None
        self.deadline = time.monotonic() + BUSY_AFTER_S

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        """The outcome, once: a later finish (a deadline raced the answer) is ignored."""
        if self.done.is_set():
            return
        self.result, self.error = result, error
        self.done.set()
        callback = self.callback
        if callback is not None:
            callback(Outcome(result) if error is None else Outcome(error=error))

    def when_done(self, done: Callable[[Outcome], None]) -> None:
        self.callback = done
        if self.done.is_set():  # finished before anyone asked
            done(Outcome(self.result) if self.error is None else Outcome(error=self.error))


@dataclass(slots=True)
class Op:
    kind: str
    seq: int
    args: list[str]
    waiter: Waiter | None  # None: background work, retried until it is published
    archive: StoredMessage | None = None  # stored once published, then answered


def busy(what: str = "the cluster is unreachable") -> ProtocolError:
    return ProtocolError(ErrorCode.SERVER_BUSY, f"{what}; retry in {RETRY_IN_S}s")

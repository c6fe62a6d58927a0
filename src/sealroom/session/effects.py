"""What a session asks its shell to do when a request needs more than memory.

The session never calls the database or argon2 itself. A handler that needs them returns an
:class:`Effect`: the blocking ``work`` and what to do with its result (``then``). The shell
runs ``work`` on the worker pool named by ``pool`` and hands the :class:`Outcome` back to the
thread that owns the connection, which calls :meth:`Session.complete
<sealroom.session.machine.Session.complete>`. Whether a request may block is thus decided by
what it needs, in one place, not by a flag someone must remember to set.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")

# Data lines then the final line; None when the handler queued its reply itself.
Reply = list[str] | str | None


class Pool(enum.Enum):
    """Where blocking work runs: pools are sized for what their work costs."""

    STORE = "store"  # database reads and writes: short, I/O bound
    ARGON2 = "argon2"  # password hashing: CPU and memory bound, one thread per verification slot
    BUS = "bus"  # a cluster's real-time plane: waits on Redis (batched) and the store
    # Work that only hands a request over (it never blocks, so it runs on the caller's
    # thread) and returns a Later, whose owner says when it is done: no thread waits.
    LATER = "later"


@dataclass(frozen=True, slots=True)
class Effect(Generic[T]):
    """Blocking work on ``pool``, then ``then(result)`` back on the session's thread.

    ``then`` may return another effect (a chain) or the request's reply. ``abandon`` runs
    instead of ``then`` when the connection is gone before the result arrives, to give back
    what ``work`` took (for example stored messages claimed for delivery); it must not block.
    ``request`` effects hold the session's next lines until they complete, so replies keep
    request order; background ones (delivery bookkeeping) do not.
    """

    pool: Pool
    work: Callable[[], T]
    then: Callable[[T], Step]
    abandon: Callable[[T], None] | None = None
    request: bool = True
    # A request whose reply may wait while the session reads on: more pipelined requests
    # go out meanwhile (a cluster's room messages), and replies still keep request order.
    pipelined: bool = False


Step = Reply | Effect[Any]


@runtime_checkable
class Later(Protocol):
    """A result another thread will produce: ``when_done`` runs once, when it is there."""

    def when_done(self, done: Callable[[Outcome], None]) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What came of an effect's work: its value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None

    @classmethod
    def of(cls, work: Callable[[], Any]) -> Outcome:
        """Run ``work`` (on a worker thread) and capture how it ended."""
        try:
            return cls(work())
        except Exception as error:  # handed to the session, which decides what it means
            return cls(error=error)

"""The bus's writing end, driven by the reactor: the publishing script called over a Redis
link of its own (:mod:`sealroom.cluster.link`), one call in flight at a time.

A publisher thread took what the reactor's turn queued and called the script: a wake-up of
another thread between each turn and Redis, and the GIL handed over twice. Here the reactor
sends the call once a turn (``EVALSHA``, the script loaded by the connecting thread) and,
when the reply comes, hands it back and sends the next call in the same turn. While a call
is in flight, what sessions ask waits and goes out together in the next one: a batch per
round trip, as the publisher made.

A call left unanswered for ``timeout_s``, a socket that fails and a script Redis no longer
knows (``NOSCRIPT``: flushed) drop the connection: the call in flight is lost (the bus
answers its senders server-busy), and the connecting thread connects again. An error reply
is the script's refusal: handed back as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import hiredis
import redis

from sealroom.cluster.link import RedisLink


class ScriptCaller(RedisLink):
    """Calls ``script`` with what ``next_call()`` gives (None: nothing to send), hands the
    reply to ``answered(reply)`` or an error reply's text to ``refused(text)``, and calls
    ``lost()`` when a call in flight is lost with its connection -- and once a turn while the
    connection is down, so that what waits meanwhile is answered at once, not at its
    deadline."""

    def __init__(
        self,
        client: redis.Redis,
        script: str,
        *,
        timeout_s: float,
        next_call: Callable[[], list[Any] | None],
        answered: Callable[[Any], None],
        refused: Callable[[str], None],
        lost: Callable[[], None],
    ) -> None:
        super().__init__(client, "the bus publisher")
        self._script = script
        self._timeout_s = timeout_s
        self._next_call = next_call
        self._answered = answered
        self._refused = refused
        self._lost = lost
        self._sha = ""
        self._unsent: bytes | memoryview = b""  # the call in flight, not yet all sent
        self._sent_at = 0.0  # monotonic time the call in flight began; 0: none
        self._waiting = False  # for the socket to take the rest: asked the reactor

    def on_turn(self) -> None:
        was_down = self.down
        super().on_turn()  # may install a connection handed over
        if was_down and self.down:
            self._lost()

    def _prepare(self, conn: Any) -> Any:
        conn.send_command("SCRIPT", "LOAD", self._script)
        return conn.read_response()

    def _installed(self, prepared: Any) -> None:
        self._sha = prepared.decode() if isinstance(prepared, bytes) else str(prepared)
        self._turn()

    def _turn(self) -> None:
        """Send the next call if none is in flight; give up on a silent Redis."""
        if self._sent_at:
            if time.monotonic() - self._sent_at > self._timeout_s:
                self._drop("Redis left a call of the bus script unanswered")
            return
        conn = self._conn
        args = self._next_call() if conn is not None else None
        if conn is None or args is None:
            return
        self._unsent = b"".join(conn.pack_command("EVALSHA", self._sha, 0, *args))
        self._sent_at = time.monotonic()
        self._push()

    def _push(self) -> None:
        sent = self._send(self._unsent)
        if sent is None:
            return
        self._unsent = memoryview(self._unsent)[sent:] if sent < len(self._unsent) else b""
        waiting = bool(self._unsent)  # the rest when the socket takes it
        if waiting != self._waiting and self._sock is not None:
            self._waiting = waiting
            self._writable(self._sock.fileno(), waiting)

    def on_writable(self) -> None:
        if self._unsent:
            self._push()

    def _reply(self, reply: Any) -> None:
        if not self._sent_at or self._unsent:
            self._drop("Redis answered a call not made")
            return
        error = isinstance(reply, hiredis.ReplyError)
        if error and str(reply).startswith("NOSCRIPT"):  # the cache was flushed: load again
            self._drop("Redis no longer knows the bus script")  # the call is lost
            return
        self._sent_at = 0.0
        if error:
            self._refused(str(reply))
        else:
            self._answered(reply)
        if self._sock is not None:
            self._turn()  # what waited meanwhile goes out now

    def _closing(self) -> None:
        in_flight = self._sent_at
        self._sent_at, self._unsent, self._waiting = 0.0, b"", False
        if in_flight:
            self._lost()

"""The bus's reading end, driven by the reactor: one ``XREAD`` at a time on a Redis link of
its own (:mod:`sealroom.cluster.link`).

The reactor reads the reply when the link's socket is readable and applies the entries --
they queue lines in outboxes and count presence, nothing that blocks -- and writes to the
members in the same turn. A reply that is an error or not the shape ``XREAD`` gives, and a
Redis that leaves a read unanswered for ``REPLY_GRACE_S`` past its block time, drop the
connection (and it connects again): no entry of a malformed reply is applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import hiredis
import redis

from sealroom.cluster.link import RedisLink

REPLY_GRACE_S = 1.0  # beyond the read's own block time, before Redis counts as gone

Entry = tuple[str, dict[bytes, bytes]]


class BusReader(RedisLink):
    """Reads ``stream`` from the position ``position()`` gives, and hands each batch of
    entries to ``deliver(generation, entries)``, with the generation ``position()`` gave
    when the read was asked (the bus ignores a batch from before it started anew)."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        *,
        count: int,
        block_ms: int,
        position: Callable[[], tuple[int, str]],
        deliver: Callable[[int, list[Entry]], None],
        reading: Callable[[], bool],
    ) -> None:
        super().__init__(client, "the bus reader")
        self._stream = stream
        self._count = count
        self._block_ms = block_ms
        self._position = position
        self._deliver = deliver
        self._reading = reading  # False while the bus is not in the cluster: no reads
        self._asked_at = 0.0  # monotonic time of the read in flight; 0: none
        self._generation = 0  # position()'s generation when that read was asked

    def poke(self) -> None:
        """The bus is reading again (it joined the cluster anew): ask from the new place."""
        self.wake()

    def _installed(self, prepared: Any) -> None:
        if self._reading():
            self._ask()

    def _turn(self) -> None:
        """Ask for more, or give up on a silent Redis."""
        if self._asked_at:
            if time.monotonic() - self._asked_at > self._block_ms / 1000 + REPLY_GRACE_S:
                self._drop("Redis left a read of the bus unanswered")
        elif self._reading():
            self._ask()

    def _ask(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._generation, position = self._position()
        ask = ("XREAD", "COUNT", self._count, "BLOCK", self._block_ms)
        command = b"".join(conn.pack_command(*ask, "STREAMS", self._stream, position))
        sent = self._send(command)
        if sent is None:
            return
        if sent != len(command):  # a socket with nothing in flight that takes less: stuck
            self._drop("Redis does not take a read of the bus")
            return
        self._asked_at = time.monotonic()

    def _reply(self, reply: Any) -> None:
        """Apply a read's entries and ask for the next."""
        self._asked_at = 0.0
        if isinstance(reply, hiredis.ReplyError):
            self._drop(f"Redis refused a read of the bus: {reply}")
            return
        entries = _entries(reply)
        if entries is None:
            self._drop("a read of the bus came back malformed")
            return
        if entries:
            self._deliver(self._generation, entries)
        if self._reading() and self._sock is not None:
            self._ask()

    def _closing(self) -> None:
        self._asked_at = 0.0


def _entries(reply: object) -> list[Entry] | None:
    """``XREAD``'s reply as (id, fields) pairs: [] for none (the block time passed), None
    when it is not the shape Redis gives (one stream, entries of an id and an even flat
    list of bytes)."""
    if reply is None:
        return []
    if isinstance(reply, dict) and len(reply) == 1:  # RESP3's map, should redis-py ask for it
        reply = [list(next(iter(reply.items())))]
    if not (isinstance(reply, list) and len(reply) == 1):
        return None
    stream = reply[0]
    if not (isinstance(stream, list) and len(stream) == 2 and isinstance(stream[1], list)):
        return None
    out: list[Entry] = []
    for entry in stream[1]:
        if not (isinstance(entry, list) and len(entry) == 2):
            return None
        entry_id, flat = entry
        if not (isinstance(entry_id, bytes) and isinstance(flat, list) and len(flat) % 2 == 0):
            return None
        if not all(isinstance(item, bytes) for item in flat):
            return None
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        out.append((entry_id.decode("ascii", "replace"), fields))
    return out

"""A Redis connection driven by the reactor: its socket sits in the reactor's epoll beside
the clients', and what Redis answers is read and acted on in the turn it arrives.

A thread between Redis and the reactor cost a wake-up each way (on a small VM, one more
sleeping core to wake: about 0.2 ms at the median, 0.6 ms at the 99th percentile). The bus
reads its stream (:mod:`sealroom.cluster.reader`) and calls its publishing script
(:mod:`sealroom.cluster.caller`) each over a link of its own.

Connecting (redis-py: TLS, AUTH, SELECT, and whatever a link prepares, such as loading a
script) blocks, so a thread of its own does it and hands the connected socket over; all
else happens on the reactor thread. A reply that is malformed, a socket that fails or
closes, and a Redis that leaves a command unanswered too long drop the connection, and the
thread connects again. Bytes from Redis are hostile: a reply is bounded
(``MAX_REPLY_BYTES``) and a link checks its shape before acting on it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import hiredis
import redis
from redis.exceptions import RedisError

log = logging.getLogger("sealroom.cluster")

MAX_REPLY_BYTES = 64 * 1024 * 1024  # one reply: COUNT entries of bounded fields, and more
RECV_BYTES = 262_144
RETRY_S = 0.1  # between attempts to connect

Watch = Callable[[int, Callable[[], None], Callable[[], None]], None]


class RedisLink:
    """One connection, the reactor's. Subclasses say what to do once connected
    (:meth:`_installed`), once a turn (:meth:`_turn`) and with each reply (:meth:`_reply`);
    :meth:`_prepare` runs on the connecting thread and may block.

    The reactor's side: :meth:`on_turn` once a turn (an after-turn hook), and the callables
    given to :meth:`attach`.
    """

    def __init__(self, client: redis.Redis, what: str) -> None:
        self._client = client  # for its connection settings only; never used to send
        self._what = what  # for the log: "the bus reader"
        self._watch: Watch | None = None
        self._unwatch: Callable[[int], None] = lambda fd: None
        self._writable: Callable[[int, bool], None] = lambda fd, wanted: None
        self._wake: Callable[[], None] = lambda: None
        # Handed over by the connecting thread (a connected redis-py connection and what
        # _prepare made of it); taken by the reactor's next turn.
        self._handed: collections.deque[tuple[Any, Any]] = collections.deque()
        self._need = threading.Event()  # the connecting thread's signal: connect (again)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{what} link", daemon=True)
        # The reactor thread's alone:
        self._conn: Any = None  # the redis-py connection whose socket the reactor reads
        self._sock: socket.socket | None = None
        self._parser: Any = None
        self._unparsed = 0  # bytes fed since the last whole reply
        self._dropped = False  # since the last good reply: connecting again

    def attach(
        self,
        watch: Watch,
        unwatch: Callable[[int], None],
        wake: Callable[[], None],
        writable: Callable[[int, bool], None] | None = None,
    ) -> None:
        """The reactor's hands: ``watch(fd, on_readable, on_writable)``, ``unwatch(fd)``
        and ``writable(fd, wanted)`` on its thread; ``wake()`` from any thread (a turn comes
        soon, and :meth:`on_turn` with it)."""
        self._watch, self._unwatch, self._wake = watch, unwatch, wake
        if writable is not None:
            self._writable = writable

    def start(self) -> None:
        self._need.set()
        self._thread.start()

    def stop(self) -> None:
        """After the reactor stopped: nothing reads the socket any more."""
        self._stopping.set()
        self._need.set()
        self._thread.join(timeout=2.0)
        self._close()
        while self._handed:
            _disconnect(self._handed.popleft()[0])

    def wake(self) -> None:
        """From any thread: the reactor turns soon, and this link's :meth:`on_turn` with it."""
        self._wake()

    @property
    def down(self) -> bool:
        """Lost its connection and not connected again yet (not: still connecting at first)."""
        return self._dropped and self._sock is None

    # -- what a link does -----------------------------------------------------------------

    def _prepare(self, conn: Any) -> Any:
        """On the connecting thread, once connected: blocking setup; handed to
        :meth:`_installed`."""
        return None

    def _installed(self, prepared: Any) -> None:
        """On the reactor, once the connection is its own."""

    def _turn(self) -> None:
        """On the reactor, once a turn while connected."""

    def _reply(self, reply: Any) -> None:
        """On the reactor, each whole reply (an error reply as :class:`hiredis.ReplyError`)."""

    def _closing(self) -> None:
        """On the reactor (or at stop), as the connection is dropped: what was in flight on it
        is lost."""

    # -- the connecting thread ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._need.wait(0.5) or self._stopping.is_set():
                continue
            if self._dropped:  # not at once again: a Redis that drops every call would spin
                time.sleep(RETRY_S)
            try:
                conn = _connect(self._client)
            except (RedisError, OSError) as error:
                log.debug("could not connect %s: %s", self._what, error)
                time.sleep(RETRY_S)
                continue
            try:
                prepared = self._prepare(conn)
            except (RedisError, OSError) as error:
                log.debug("could not prepare %s: %s", self._what, error)
                _disconnect(conn)
                time.sleep(RETRY_S)
                continue
            conn._sock.setblocking(False)
            self._need.clear()
            self._handed.append((conn, prepared))
            self._wake()

    # -- the reactor thread ---------------------------------------------------------------

    def on_turn(self) -> None:
        """Install a connection handed over, or do this link's part of the turn."""
        if self._conn is None:
            if self._handed and self._watch is not None:
                self._install(*self._handed.popleft())
            return
        self._turn()

    def _install(self, conn: Any, prepared: Any) -> None:
        watch = self._watch
        if watch is None:
            _disconnect(conn)
            self._need.set()
            return
        self._conn, self._sock = conn, conn._sock
        self._parser = hiredis.Reader()
        self._unparsed = 0
        watch(conn._sock.fileno(), self.on_readable, self.on_writable)
        self._installed(prepared)

    def on_readable(self) -> None:
        if self._receive():
            self._replies()

    def on_writable(self) -> None:
        """The socket takes more (asked with ``writable``): a link that sends much says."""

    def _receive(self) -> bool:
        """What the socket holds, to the parser; False when the connection was dropped."""
        sock, parser = self._sock, self._parser
        if sock is None or parser is None:
            return False
        while True:
            try:
                data = sock.recv(RECV_BYTES)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return True
            except (OSError, ssl.SSLError) as error:
                self._drop(f"read failed: {error}")
                return False
            if not data:
                self._drop("Redis closed the connection")
                return False
            self._unparsed += len(data)
            if self._unparsed > MAX_REPLY_BYTES:
                self._drop(f"a reply of more than {MAX_REPLY_BYTES} bytes")
                return False
            parser.feed(data)

    def _replies(self) -> None:
        """Act on every whole reply parsed."""
        while self._sock is not None:
            try:
                reply = self._parser.gets()
            except hiredis.ProtocolError as error:
                self._drop(f"not Redis's protocol: {error}")
                return
            if reply is False:
                return
            self._unparsed = 0
            if self._dropped and not isinstance(reply, hiredis.ReplyError):
                log.info("%s works again", self._what)
                self._dropped = False
            self._reply(reply)

    def _send(self, data: bytes | memoryview) -> int | None:
        """Send what the socket takes now; None when the connection was dropped."""
        sock = self._sock
        if sock is None:
            return None
        try:
            return sock.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except (OSError, ssl.SSLError) as error:
            self._drop(f"could not send: {error}")
            return None

    def _drop(self, why: str) -> None:
        if not self._dropped:  # once an outage: the heartbeat says the rest
            log.warning("%s lost its connection (%s); connecting again", self._what, why)
        self._dropped = True
        self._close()
        self._need.set()

    def _close(self) -> None:
        conn, sock = self._conn, self._sock
        self._conn = self._sock = self._parser = None
        if sock is not None:
            self._unwatch(sock.fileno())
        if conn is not None:
            _disconnect(conn)
        self._closing()


def _connect(client: redis.Redis) -> Any:
    """A new connection with ``client``'s settings (TLS, AUTH, SELECT: redis-py's work),
    its socket made non-blocking for the reactor once prepared. redis-py is not asked to
    read or write on it after that: only to pack commands and to close it."""
    conn: Any = client.connection_pool.make_connection()
    conn.connect()
    sock = conn._sock
    if not isinstance(sock, socket.socket):
        _disconnect(conn)
        raise RedisError("redis-py gave no socket after connecting")
    return conn


def _disconnect(conn: Any) -> None:
    with contextlib.suppress(Exception):  # closing: whatever it says, it is gone
        conn.disconnect()

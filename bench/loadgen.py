"""Load-generating clients. Each worker runs in its own process (so the load generator is
not the bottleneck) and owns its sockets on one thread, with raw `ssl` sockets."""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import resource
import selectors
import socket
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

PAYLOAD_BYTES = 100


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's number, where Python lacks it
CMSG_SPACE = socket.CMSG_SPACE(16)  # one struct timespec


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def client_context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class Line:
    """A blocking line client for setup steps (login, join, token)."""

    def __init__(
        self,
        port: int,
        ctx: ssl.SSLContext,
        session: ssl.SSLSession | None = None,
        timeout: float = 60,
    ) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        self.buf = b""
        self.hello = self.line()

    def line(self) -> str:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def request(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\n")
        while True:
            reply = self.line()
            if reply.startswith(("OK ", "ERR ", "BYE ")):
                return reply

    def login(self, name: str, password: str) -> None:
        reply = self.request(f"/login {name} {password}")
        if not reply.startswith("OK login"):
            raise RuntimeError(f"login {name}: {reply}")

    def close(self) -> None:
        self.sock.close()


class WebLine:
    """A blocking client of the web door for setup steps: one text message per line (wsproto).

    After setup, ``feed`` turns received bytes into lines for a subscriber's event loop.
    """

    def __init__(self, port: int, ctx: ssl.SSLContext, timeout: float = 60) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._partial = ""
        self._lines: list[str] = []
        origin = f"https://localhost:{port}".encode()
        self.sock.sendall(
            self.ws.send(
                Request(host=f"localhost:{port}", target="/ws", extra_headers=[(b"origin", origin)])
            )
        )
        while not self._accepted():
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed during the WebSocket handshake")
            self.ws.receive_data(chunk)
        self.hello = self.line()

    def _accepted(self) -> bool:
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                return True
            raise RuntimeError(f"WebSocket upgrade refused: {event!r}")
        return False

    def feed(self, data: bytes) -> list[str] | None:
        """The lines that ``data`` completes; None once the server closed."""
        self.ws.receive_data(data)
        lines, self._lines = self._lines, []
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                self._partial += event.data
                if event.message_finished:
                    lines.append(self._partial)
                    self._partial = ""
            elif isinstance(event, CloseConnection):
                return None
        return lines

    def line(self) -> str:
        while not self._lines:
            chunk = self.sock.recv(65536)
            lines = self.feed(chunk) if chunk else None
            if lines is None:
                raise EOFError("closed")
            self._lines = lines
        return self._lines.pop(0)

    def request(self, text: str) -> str:
        self.sock.sendall(self.ws.send(TextMessage(data=text)))
        while True:
            reply = self.line()
            if reply.startswith(("OK ", "ERR ", "BYE ")):
                return reply

    def login(self, name: str, password: str) -> None:
        reply = self.request(f"/login {name} {password}")
        if not reply.startswith("OK login"):
            raise RuntimeError(f"login {name}: {reply}")

    def close(self) -> None:
        self.sock.close()


def web_subscriber(
    port: int,
    ca: Path,
    names: list[str],
    password: str,
    room: str,
    expected: int,
    ready: Any,
    start: Any,
    results: Any,
    timeout: float,
) -> None:
    """As :func:`subscriber`, over the web door: each MSG is a WebSocket text message."""
    raise_fd_limit()
    ctx = client_context(ca)
    conns = _members(lambda: WebLine(port, ctx), names, password, room)
    ready.put(len(conns))
    start.wait()
    selector = selectors.DefaultSelector()
    counts = {}
    latencies: list[int] = []
    for conn in conns:
        conn.sock.setblocking(False)
        selector.register(conn.sock, selectors.EVENT_READ, conn)
        counts[conn] = 0
    prefix = f"MSG {room} "
    remaining = len(conns)
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        events = selector.select(1.0)
        ready_at = time.monotonic_ns()  # as in subscriber(): when select() saw the socket
        for key, _ in events:
            conn = key.data
            while True:
                try:
                    data = conn.sock.recv(262144)
                except ssl.SSLWantReadError:
                    break
                lines = conn.feed(data) if data else None
                if lines is None:
                    selector.unregister(conn.sock)
                    remaining -= 1
                    break
                now = time.monotonic_ns()
                before = counts[conn]
                for line in lines:
                    if line.startswith(prefix):
                        counts[conn] += 1
                        if len(latencies) < 2_000_000:
                            sent_at = int(line.split(" ", 4)[3])
                            arrived = ready_at if sent_at <= ready_at else now
                            latencies.append(arrived - sent_at)
                if before < expected <= counts[conn]:
                    remaining -= 1
    results.put({"counts": list(counts.values()), "latencies_ns": latencies})
    for conn in conns:
        conn.close()


def payload(seq: int) -> bytes:
    head = f"{time.monotonic_ns()} {seq} "
    return (head + "x" * (PAYLOAD_BYTES - len(head))).encode()


# How long a stamping subscriber waits after each look at its sockets. A steady fan-out
# writes to 100 sockets one after another over ≈ 2 ms; a subscriber that wakes for each
# write is woken ≈ 50 times a message, and on two cores those wake-ups take the CPU from the
# server it measures. The kernel's stamp times each arrival all the same; shorter than the
# gap between messages (10 ms), so a socket seldom holds two (whose stamp would be the
# later one's: a delivery can only look later, never earlier).
STAMPED_NAP_S = 0.002


class ArrivalStamps:
    """When the kernel received a TLS socket's next unread bytes (``SO_TIMESTAMPNS``, read
    with a one-byte peek at the plain socket beneath): a delivery's time is when the server's
    bytes reached the subscriber, not when this process, sharing two cores with the server,
    got round to reading them.

    The kernel merges segments that queue up and keeps the newest one's time, so a stamp is
    never earlier than the true arrival: it can only make a delivery look later."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._raw = socket.socket(fileno=os.dup(sock.fileno()))
        self._raw.setblocking(False)
        self._raw.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def next_arrival(self) -> int:
        """The arrival of the bytes the next TLS read starts with, on the monotonic clock
        of the payloads' send times; 0 when nothing waits (or the kernel said no time)."""
        try:
            _, ancillary, _, _ = self._raw.recvmsg(1, CMSG_SPACE, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return 0
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                seconds, nanoseconds = struct.unpack_from("qq", data)
                # The stamp is on the wall clock: moved to the monotonic one as of now.
                offset = time.time_ns() - time.monotonic_ns()
                return seconds * 1_000_000_000 + nanoseconds - offset
        return 0

    def close(self) -> None:
        self._raw.close()


Door = TypeVar("Door", Line, WebLine)


def _members(connect: Callable[[], Door], names: list[str], password: str, room: str) -> list[Door]:
    """Logged-in members of ``room``, a connection each (through either door)."""
    conns = []
    for name in names:
        conn = connect()
        conn.login(name, password)
        if not conn.request(f"/join {room}").startswith("OK join"):
            raise RuntimeError("join failed")
        conns.append(conn)
    return conns


def subscriber(
    port: int,
    ca: Path,
    names: list[str],
    password: str,
    room: str,
    expected: int,
    ready: Any,
    start: Any,
    results: Any,
    timeout: float,
    stamps: bool = False,
) -> None:
    """Hold logged-in members of ``room``; count (and time) the MSG lines they receive.

    With ``stamps`` (the steady runs) a delivery is timed by the kernel's receive stamp
    (:class:`ArrivalStamps`), at one more system call per read. The saturated runs measure
    CPU and keep the lighter load generator they were first measured with: how fast the
    subscribers read changes how the servers batch their writes."""
    raise_fd_limit()
    ctx = client_context(ca)
    conns = _members(lambda: Line(port, ctx), names, password, room)
    ready.put(len(conns))
    start.wait()
    selector = selectors.DefaultSelector()
    counts = dict.fromkeys(conns, 0)
    partial = dict.fromkeys(conns, b"")
    stamped = {conn: ArrivalStamps(conn.sock) if stamps else None for conn in conns}
    # (send time, latency as the kernel stamped it, latency as this process saw it)
    timed: list[tuple[int, int, int]] = []
    for conn in conns:
        conn.sock.setblocking(False)
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    prefix = f"MSG {room} ".encode()
    remaining = len(conns)
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        events = selector.select(1.0)
        # A line counts as delivered when select() saw its socket readable, not after this
        # process has decrypted and parsed the sockets ahead of it in the batch: that
        # would time the load generator. A line sent after select() returned arrived later
        # and is timed when read.
        ready_at = time.monotonic_ns()
        for key, _ in events:
            conn = key.data
            while True:
                stamp = arrival.next_arrival() if (arrival := stamped[conn]) else 0
                try:
                    data = conn.sock.recv(262144)
                except ssl.SSLWantReadError:
                    break
                if not data:
                    selector.unregister(conn.sock)
                    remaining -= 1
                    break
                now = time.monotonic_ns()
                lines = (partial[conn] + data).split(b"\n")
                partial[conn] = lines.pop()
                before = counts[conn]
                for line in lines:
                    if line.startswith(prefix):
                        counts[conn] += 1
                        if len(timed) < 2_000_000:
                            sent_at = int(line.split(b" ", 4)[3])
                            seen = ready_at if sent_at <= ready_at else now
                            arrived = stamp if sent_at <= stamp <= now else seen
                            timed.append((sent_at, arrived - sent_at, seen - sent_at))
                if before < expected <= counts[conn]:
                    remaining -= 1
        if stamps:  # the kernel times each arrival: no need to wake for every one of them
            time.sleep(STAMPED_NAP_S)
    results.put(
        {
            "counts": list(counts.values()),
            "latencies_ns": [latency for _, latency, _ in timed],
            "seen_latencies_ns": [seen for _, _, seen in timed],
            "stamped": sum(1 for _, latency, seen in timed if latency != seen),
            "sent_ns": [sent for sent, _, _ in timed],
        }
    )
    for conn in conns:
        if (arrival := stamped[conn]) is not None:
            arrival.close()
        conn.close()


def publisher(
    port: int,
    ca: Path,
    name: str,
    password: str,
    room: str,
    count: int,
    rate: float | None,
    window: int,
    ready: Any,
    start: Any,
    results: Any,
    timeout: float = 600.0,
    phase: float = 0.0,
) -> None:
    """Send ``count`` messages to ``room``: as fast as allowed (``rate`` None), or paced:
    message k at ``phase + k / rate`` seconds after the start, so that publishers sharing a
    steady rate take turns (``phase``) instead of sending at the same instant.

    A message refused (``ERR``, e.g. ``server-busy`` from a cluster node) counts as answered
    but not acknowledged; the loop ends once every message is answered, or after
    ``timeout`` seconds, or when the server closes."""
    conn = Line(port, client_context(ca))
    conn.login(name, password)
    conn.request(f"/join {room}")
    ready.put(1)
    start.wait()
    sock = conn.sock
    acked = sent = refused = 0
    started = time.monotonic()
    deadline = started + timeout
    buf = b""
    while acked + refused < count and time.monotonic() < deadline:
        if rate is None:
            burst = min(window - (sent - acked - refused), count - sent)
        else:
            due = math.floor((time.monotonic() - started - phase) * rate) + 1
            burst = min(due - sent, count - sent)
        if burst > 0:
            sock.sendall(b"".join(payload(sent + i) + b"\n" for i in range(burst)))
            sent += burst
        if sent - acked - refused >= window or sent == count or rate is not None:
            if rate is not None and sent - acked - refused < window:
                # Until the next message is due: waking a period later would send two.
                next_due = phase + sent / rate
                sock.settimeout(max(0.0005, next_due - (time.monotonic() - started)))
            else:
                sock.settimeout(60)
            try:
                data = sock.recv(262144)
            except TimeoutError:
                continue
            if not data:
                break
            # Only whole lines: a partial "OK say …" kept for the next read was counted
            # twice before (once now, once with the rest of its line).
            buf += data
            end = buf.rfind(b"\n") + 1
            whole, buf = buf[:end], buf[end:]
            acked += whole.count(b"OK say ")
            refused += whole.count(b"ERR ")
    results.put(
        {"sent": sent, "acked": acked, "refused": refused, "seconds": time.monotonic() - started}
    )
    conn.close()


def publisher_group(
    port: int,
    ca: Path,
    names: list[str],
    password: str,
    room: str,
    count: int,
    window: int,
    ready: Any,
    start: Any,
    results: Any,
    timeout: float,
) -> None:
    """As :func:`publisher` at full speed, for several publishing sessions in one process:
    each sends ``count`` messages, keeping up to ``window`` unanswered."""
    ctx = client_context(ca)
    conns = []
    for name in names:
        conn = Line(port, ctx)
        conn.login(name, password)
        conn.request(f"/join {room}")
        conn.sock.settimeout(60)
        conns.append(conn)
    ready.put(1)
    start.wait()
    started = time.monotonic()
    deadline = started + timeout
    state = {conn: [0, 0, 0, b""] for conn in conns}  # sent, acked, refused, partial line
    selector = selectors.DefaultSelector()

    def top_up(conn: Line) -> None:
        sent, acked, refused, _ = state[conn]
        burst = min(window - (sent - acked - refused), count - sent)
        if burst > 0:
            conn.sock.sendall(b"".join(payload(sent + i) + b"\n" for i in range(burst)))
            state[conn][0] += burst

    for conn in conns:
        top_up(conn)
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    remaining = len(conns)
    while remaining and time.monotonic() < deadline:
        for key, _ in selector.select(1.0):
            conn = key.data
            data = conn.sock.recv(262144)
            while conn.sock.pending():
                data += conn.sock.recv(262144)
            entry = state[conn]
            if not data:
                selector.unregister(conn.sock)
                remaining -= 1
                continue
            buf = entry[3] + data
            end = buf.rfind(b"\n") + 1
            whole, entry[3] = buf[:end], buf[end:]
            entry[1] += whole.count(b"OK say ")
            entry[2] += whole.count(b"ERR ")
            if entry[1] + entry[2] >= count:
                selector.unregister(conn.sock)
                remaining -= 1
            else:
                top_up(conn)
    results.put(
        {
            "sent": sum(e[0] for e in state.values()),
            "acked": sum(e[1] for e in state.values()),
            "refused": sum(e[2] for e in state.values()),
            "seconds": time.monotonic() - started,
        }
    )
    for conn in conns:
        conn.close()


def idle_holder(
    port: int,
    ca: Path,
    logins: list[tuple[str, str, bool]],
    ready: Any,
    release: Any,
) -> None:
    """Connect and log in each ``(name, secret, by_password)`` in turn: ``/login`` with the
    password, or ``/resume`` with a resume token; report how long it took, then hold them
    idle until ``release``."""
    raise_fd_limit()
    ctx = client_context(ca)
    started = time.monotonic()
    conns = []
    for name, secret, by_password in logins:
        conn = Line(port, ctx)
        if by_password:
            conn.login(name, secret)
        else:
            reply = conn.request(f"/resume {name} {secret}")
            if not reply.startswith("OK login"):
                raise RuntimeError(f"resume {name}: {reply}")
        conns.append(conn)
    ready.put(time.monotonic() - started)
    release.wait()
    for conn in conns:
        conn.close()


# MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s, empty client id: the broker assigns
# one), the CONNACK that accepts it, and DISCONNECT.
MQTT_CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, 0])
MQTT_CONNACK = bytes([0x20, 2, 0, 0])
MQTT_DISCONNECT = bytes([0xE0, 0])


def _mqtt_connect(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    # The client writes twice in a row (its Finished, then CONNECT): without NODELAY, Nagle
    # holds CONNECT until the broker's delayed ACK, 40 ms later. A line client only reads
    # after its Finished, so it needs no such option.
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    sock.sendall(MQTT_CONNECT)
    reply = b""
    while len(reply) < len(MQTT_CONNACK):
        chunk = sock.recv(len(MQTT_CONNACK) - len(reply))
        if not chunk:
            raise EOFError("closed before CONNACK")
        reply += chunk
    if reply != MQTT_CONNACK:
        raise RuntimeError(f"MQTT CONNECT refused: {reply!r}")
    return sock


def handshaker(
    port: int, ca: Path, count: int, resume: bool, results: Any, greeting: str = "line"
) -> None:
    """Full or resumed TLS 1.3 handshakes, one after another, each up to the server's first
    answer: its greeting line (``line``: Sealroom, the asyncio reference), or the CONNACK to
    a CONNECT (``mqtt``: Mosquitto, which speaks only when spoken to; the client then sends
    DISCONNECT, as an MQTT client that leaves cleanly does)."""
    ctx = client_context(ca)

    def connect(session: ssl.SSLSession | None) -> ssl.SSLSocket:
        if greeting == "mqtt":
            return _mqtt_connect(port, ctx, session)
        return Line(port, ctx, session=session).sock

    def leave(sock: ssl.SSLSocket) -> None:
        if greeting == "mqtt":
            with contextlib.suppress(OSError):
                sock.sendall(MQTT_DISCONNECT)
        sock.close()

    session = None
    if resume:
        first = connect(None)
        session = first.session  # the ticket arrived with the first answer
        leave(first)
    reused = 0
    started = time.monotonic()
    for _ in range(count):
        sock = connect(session)
        reused += sock.session_reused
        if resume:
            session = sock.session
        leave(sock)
    results.put({"count": count, "reused": reused, "seconds": time.monotonic() - started})


def resumer(
    port: int,
    ca: Path,
    pairs: list[tuple[str, str]],
    ready: Any,
    start: Any,
    results: Any,
    release: Any,
) -> None:
    """Reconnect with resume tokens after a restart; report when all are back."""
    raise_fd_limit()
    ctx = client_context(ca)
    ready.put(1)
    start.wait()
    conns = []
    failures = 0
    for name, token in pairs:
        for _attempt in range(50):
            try:
                conn = Line(port, ctx)
            except OSError:
                time.sleep(0.05)
                continue
            reply = conn.request(f"/resume {name} {token}")
            if reply.startswith("OK login"):
                conns.append(conn)
                break
            conn.close()
            failures += 1
            time.sleep(0.05)
    results.put({"back": len(conns), "failures": failures, "at": time.monotonic()})
    release.wait()
    for conn in conns:
        conn.close()


def log_in(
    port: int, ctx: ssl.SSLContext, name: str, secret: str, *, resume: bool = False
) -> tuple[Line, int]:
    """A connection logged in as ``name`` (``/login`` with a password, or ``/resume`` with
    a token), and how many refusals it took (``ERR server-busy`` from a cluster node under
    load, a connection refused): up to 20 tries, 50 ms apart, then RuntimeError."""
    command = "/resume" if resume else "/login"
    refusals = 0
    for _attempt in range(20):
        try:
            conn = Line(port, ctx)
        except OSError:
            refusals += 1
            time.sleep(0.05)
            continue
        reply = conn.request(f"{command} {name} {secret}")
        if reply.startswith("OK login"):
            return conn, refusals
        conn.close()
        if not reply.startswith("ERR server-busy"):
            raise RuntimeError(f"{command} {name}: {reply}")
        refusals += 1
        time.sleep(0.05)
    raise RuntimeError(f"{command} {name}: refused 20 times")


def token_holder(
    port: int, ca: Path, names: list[str], password: str, ready: Any, release: Any
) -> None:
    """Log each name in with its password and ask for a resume token (``/token``), holding
    every connection; report the tokens, then close them all at once on ``release``."""
    raise_fd_limit()
    ctx = client_context(ca)
    started = time.monotonic()
    conns, tokens, refusals = [], {}, 0
    for name in names:
        conn, refused = log_in(port, ctx, name, password)
        refusals += refused
        reply = conn.request("/token")
        if not reply.startswith("OK token "):
            raise RuntimeError(f"/token for {name}: {reply}")
        tokens[name] = reply.split()[2]
        conns.append(conn)
    ready.put({"tokens": tokens, "refusals": refusals, "seconds": time.monotonic() - started})
    release.wait()
    for conn in conns:
        conn.close()


def member_holder(
    port: int,
    ca: Path,
    members: list[tuple[str, str, int]],
    password: str,
    ready: Any,
    start: Any,
    results: Any,
    release: Any,
    timeout: float,
) -> None:
    """Log in each ``(name, room, parts)`` and join its room, then hold the connections.
    After ``start``: count the ``PART`` lines of each one's room until each has seen
    ``parts`` of them, or ``timeout`` seconds have passed; a connection the server closed
    (its node died) is done. Report the counts and when the first and the last PART came
    (``time.monotonic_ns``, the machine's clock), then close on ``release``."""
    raise_fd_limit()
    ctx = client_context(ca)
    started = time.monotonic()
    conns: list[tuple[Line, bytes, int]] = []
    refusals = 0
    for name, room, parts in members:
        conn, refused = log_in(port, ctx, name, password)
        refusals += refused
        reply = conn.request(f"/join {room}")
        if not reply.startswith("OK join"):
            raise RuntimeError(f"/join {room} as {name}: {reply}")
        conns.append((conn, f"PART {room} ".encode(), parts))
    ready.put({"refusals": refusals, "seconds": time.monotonic() - started})
    start.wait()
    results.put(_count_parts(conns, timeout))
    release.wait()
    for conn, _, _ in conns:
        conn.close()


def _count_parts(conns: list[tuple[Line, bytes, int]], timeout: float) -> dict[str, int]:
    """member_holder's counting: PART lines of each connection's room, until each saw its
    number or was closed, or ``timeout`` seconds passed."""
    selector = selectors.DefaultSelector()
    counts: dict[Line, int] = {}
    partial: dict[Line, bytes] = {}
    for conn, prefix, parts in conns:
        conn.sock.setblocking(False)
        counts[conn] = 0
        partial[conn] = conn.buf
        selector.register(conn.sock, selectors.EVENT_READ, (conn, prefix, parts))
    first = last = closed = 0
    finished: set[Line] = set()
    deadline = time.monotonic() + timeout
    while len(finished) < len(conns) and time.monotonic() < deadline:
        for key, _ in selector.select(0.5):
            conn, prefix, parts = key.data
            while True:
                try:
                    data = conn.sock.recv(262144)
                except ssl.SSLWantReadError:
                    break
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(conn.sock)
                    closed += 1
                    finished.add(conn)
                    break
                lines = (partial[conn] + data).split(b"\n")
                partial[conn] = lines.pop()
                seen = sum(1 for line in lines if line.startswith(prefix))
                if seen:
                    last = time.monotonic_ns()
                    first = first or last
                    counts[conn] += seen
                    if counts[conn] >= parts:
                        finished.add(conn)
    return {
        "sessions": len(conns),
        "parts": sum(counts.values()),
        "expected": sum(parts for _, _, parts in conns),
        "complete": sum(1 for c, _, p in conns if counts[c] >= p),
        "closed": closed,
        "first_ns": first,
        "last_ns": last,
    }


def login_flooder(
    port: int, ca: Path, connections: int, seconds: float, ready: Any, start: Any, results: Any
) -> None:
    """Keep ``connections`` wrong-password logins in flight for ``seconds``; a connection the
    server closes (too many errors) is replaced by a new one."""
    raise_fd_limit()
    ctx = client_context(ca)
    line = b"/login victim wrong password guess\n"
    selector = selectors.DefaultSelector()
    replies: dict[str, int] = {}

    def open_one() -> None:
        try:
            conn = Line(port, ctx)
            conn.sock.sendall(line)
        except OSError:
            replies["connect-failed"] = replies.get("connect-failed", 0) + 1
            return
        conn.sock.setblocking(False)
        selector.register(conn.sock, selectors.EVENT_READ, conn)

    ready.put(1)
    start.wait()
    for _ in range(connections):
        open_one()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, _ in selector.select(0.2):
            conn = key.data
            try:
                data = conn.sock.recv(65536)
            except ssl.SSLWantReadError:
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(conn.sock)
                conn.close()
                open_one()
                continue
            for reply in data.decode().splitlines():
                code = reply.split(" ", 2)[1] if reply.startswith("ERR") else reply.split()[0]
                replies[code] = replies.get(code, 0) + 1
            try:
                conn.sock.setblocking(True)
                conn.sock.sendall(line)
                conn.sock.setblocking(False)
            except OSError:
                pass
    results.put(replies)
    for key in list(selector.get_map().values()):
        key.data.close()


def spawn(target: Any, *args: Any) -> mp.Process:
    process = mp.Process(target=target, args=args, daemon=True)
    process.start()
    return process

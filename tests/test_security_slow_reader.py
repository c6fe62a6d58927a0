"""A client that stops reading: dropped with ``BYE slow-consumer``, nobody else slowed.

A broadcast appends to each recipient's bounded outbox and never waits for a socket. When a
reader falls ``outbound_queue_bytes`` behind, its queue is replaced by ``BYE slow-consumer``
and the connection is closed (NATS's rule); senders and other readers never notice.
"""

from __future__ import annotations

import logging
import select
import ssl
import threading
import time

import pytest

from adversary import MIB, PeakRss, percentile, round_trip
from helpers import PASSWORD, ServerFactory, tls_connection, wait_until


def test_slow_consumer_is_dropped_and_others_get_everything(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealroom")
    # Alice floods far beyond the default test bucket: rate limits are not the subject here.
    server = make_server(
        limits={"outbound_queue_bytes": 524288},
        rate={"messages": {"rate": 1e6, "burst": 1e6}},
    )
    server.add_user("bob")
    bob = tls_connection(server.port, server.ca_file, rcvbuf=4096)
    bob.sendall(f"/login bob {PASSWORD}\n".encode())  # ...and never reads again
    alice = server.user("alice")
    carol = server.user("carol")
    time.sleep(0.2)  # let bob's login land before the flood (only ordering, not timing, matters)
    text = "x" * 3000
    received: list[str] = []

    count = 3000  # 9 MB: more than loopback socket buffers can hide for bob

    def read_carol() -> None:
        while len(received) < count:
            line = carol.line(timeout=20)
            if line.startswith("MSG"):
                received.append(line)

    reader = threading.Thread(target=read_carol)
    reader.start()
    for batch in range(count // 50):
        for i in range(50):
            alice.send(f"{batch * 50 + i} {text}")
        for _ in range(50):
            reply = alice.line(timeout=20)
            while not reply.startswith("OK say"):
                reply = alice.line(timeout=20)
    reader.join(timeout=30)
    assert [int(line.split(" ", 4)[3]) for line in received] == list(range(count))
    assert alice.request("/who") in ("OK who #lobby alice carol", "OK who #lobby alice bob carol")
    # bob was cut off: his connection ends (after BYE slow-consumer, if it got through).
    deadline = time.monotonic() + 10
    while "bob" in alice.request("/who") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alice.request("/who") == "OK who #lobby alice carol"
    assert "[bob]: connection closed (slow-consumer)" in caplog.text
    assert "[carol]: connection closed" not in caplog.text
    bob.close()


def test_stalled_reader_costs_senders_and_others_nothing(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealroom")
    server = make_server(
        limits={"outbound_queue_bytes": 65536},
        rate={"messages": {"rate": 100_000, "burst": 100_000}},
    )
    server.add_user("bob")
    stalled = []
    for _ in range(3):  # three stalled readers, each holding a small receive buffer
        stalled.append(tls_connection(server.port, server.ca_file, rcvbuf=4096))
    try:
        for sock in stalled:
            sock.sendall(f"/login bob {PASSWORD}\n".encode())  # ...and never read again
        alice = server.user("alice")
        wait_until(lambda: server.app.hub.counts()[0] == 4, what="bob's three sessions in")
        dave = server.user("dave")
        assert dave.request("/join #quiet").startswith("OK join #quiet")
        assert dave.request("/part #lobby") == "OK part #lobby"
        text = "z" * 3000
        sending: list[float] = []
        pings: list[float] = []
        # Loopback socket buffers swallow megabytes before the outbox fills: send up to 12 MB.
        for n in range(4000):
            started = time.monotonic()
            assert alice.request(f"{n} {text}").startswith("OK say #lobby")
            sending.append(time.monotonic() - started)
            if n % 50 == 0:
                pings.append(round_trip(dave, f"p{n}"))
                if server.app.hub.who("#lobby") == ["alice"]:
                    break
        wait_until(lambda: server.app.hub.who("#lobby") == ["alice"], what="bob dropped")
        assert caplog.text.count("[bob]: connection closed (slow-consumer)") == 3
        # Generous bounds, because CI machines are noisy.
        assert percentile(sending, 0.99) < 0.5, max(sending)
        assert max(pings) < 1.0, pings
    finally:
        for sock in stalled:
            sock.close()


def test_pipelining_without_reading_is_pushed_back(make_server: ServerFactory) -> None:
    """A client that sends requests but never reads the replies is not buffered for: once its
    own replies pile up the server stops reading it, and TCP pushes back on the client. It is
    not dropped either: when it reads again, every request gets its one reply."""
    server = make_server(
        limits={"outbound_queue_bytes": 65536},
        rate={"messages": {"rate": 100_000, "burst": 100_000}},
    )
    sock = tls_connection(server.port, server.ca_file, rcvbuf=8192, sndbuf=8192)
    # Before login /ping draws on the connection's message bucket, made large here so that
    # every request gets "OK ping TOKEN" back. Long tokens keep the count of lines the
    # socket buffers can hold (and the test) small.
    token = "p" * 250
    writer = _Pipeliner(sock, f"/ping {token}\n".encode() * 4)
    try:
        sock.setblocking(False)
        with PeakRss() as memory:
            writer.write_until_pushed_back()
            assert len(server.app.shared.registry) == 1  # still connected, not dropped
        assert memory.growth < 16 * MIB, f"grew {memory.growth / MIB:.1f} MiB"
        received = writer.read_replies()
    finally:
        sock.close()
    lines = received.decode().splitlines()
    assert lines[0].startswith("HELLO")
    assert lines[1:] == [f"OK ping {token}"] * writer.written


class _Pipeliner:
    """Writes the same requests over and over on a non-blocking TLS socket, then reads."""

    def __init__(self, sock: ssl.SSLSocket, chunk: bytes) -> None:
        self.sock = sock
        self.chunk = chunk
        self.written = 0  # request lines the server has been sent in full
        self.pending = False  # a chunk OpenSSL holds half-sent: retry it, as is

    def _send(self) -> bool:
        try:
            self.sock.send(self.chunk)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            self.pending = True
            return False
        self.written += self.chunk.count(b"\n")
        self.pending = False
        return True

    def write_until_pushed_back(self) -> None:
        started = last_progress = time.monotonic()
        while time.monotonic() - last_progress < 0.5:  # until the server stops reading
            assert time.monotonic() - started < 30, "the server never stopped reading"
            if self._send():
                last_progress = time.monotonic()
            else:
                select.select([], [self.sock], [], 0.05)

    def read_replies(self) -> bytearray:
        """Everything up to one line per request (and HELLO), finishing a pending write."""
        received = bytearray()
        lines = 0
        deadline = time.monotonic() + 60
        while self.pending or lines < self.written + 1:
            assert time.monotonic() < deadline, (self.written, lines)
            if self.pending:
                self._send()
            try:
                data = self.sock.recv(1 << 20)
            except ssl.SSLWantReadError:
                select.select([self.sock], [self.sock] if self.pending else [], [], 0.05)
                continue
            assert data, "the server closed the connection"
            received += data
            lines += data.count(b"\n")
        return received

"""Plaintext and garbage on the TLS port, before and after the handshake.

Whatever arrives, the connection ends with at most a TLS alert: no protocol line is ever
answered in the clear, no thread or admission slot outlives the connection, and the server
goes on serving everybody else.
"""

from __future__ import annotations

import random
import socket
import ssl
import struct

import pytest

from adversary import client_hello, closed_by_server, raw_connection
from helpers import Server, ServerFactory, wait_until


def test_plaintext_on_the_tls_port_is_dropped(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"/login alice secret\n" * 10)
        raw.settimeout(5)
        try:
            data = raw.recv(4096)
        except ConnectionResetError:  # closed with our bytes unread: a reset, not a FIN
            data = b""
        assert b"OK" not in data  # a TLS alert or nothing, then close
    assert server.user("alice").request("/ping") == "OK ping"


def _record(content_type: int, body: bytes, version: bytes = b"\x03\x03") -> bytes:
    return bytes([content_type]) + version + struct.pack("!H", len(body)) + body


def _garbage_cases(hello: bytes) -> dict[str, bytes]:
    rng = random.Random(6)  # reproducible noise
    return {
        "http": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "random": rng.randbytes(4096),
        "zeros": bytes(10_000),
        "oversized record": b"\x16\x03\x01\xff\xff" + rng.randbytes(1000),
        "alert first": _record(21, b"\x02\x28"),
        "application data first": _record(23, rng.randbytes(64)),
        "sslv2 hello": bytes.fromhex("802b0103010012000000100700c0050080030080010080060040040080")
        + rng.randbytes(16),
        "truncated hello": hello[: len(hello) // 2],
        "hello then noise": hello + rng.randbytes(2048),
        "corrupted hello": hello[:5] + bytes(b ^ 0x5A for b in hello[5:40]) + hello[40:],
        "empty handshake records": _record(22, b"") * 200,
        "change cipher spec flood": _record(20, b"\x01") * 500,
    }


@pytest.mark.parametrize("half_close", [False, True])
def test_garbage_before_the_handshake(make_server: ServerFactory, half_close: bool) -> None:
    server = make_server(limits={"handshake_timeout_s": 2})  # for the ones that just stop
    shared = server.app.shared
    alice = server.user("alice")
    cases = _garbage_cases(client_hello(server.ca_file))
    for name, payload in cases.items():
        with raw_connection(server.port) as sock:
            try:
                sock.sendall(payload)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # already refused mid-send
            assert closed_by_server(sock, timeout=5.0), name
    # Every one of them released its slot.
    wait_until(lambda: shared.admission.total == 1, what="garbage connections released")
    assert len(shared.registry) == 1
    assert shared.handshake_failures >= len(cases) - 1  # the truncated hello may time out
    assert alice.request("/ping") == "OK ping"


def test_garbage_after_the_handshake(server: Server) -> None:
    """Bytes that are not TLS records, written under an established TLS session."""
    alice = server.user("alice")
    victim = server.user("mallory")
    alice.expect("JOIN #lobby mallory")
    # socket.socket.send bypasses the SSL layer of the SSLSocket: raw bytes on the wire.
    socket.socket.sendall(victim.sock, b"/wall owned\n" + random.Random(7).randbytes(512))
    with pytest.raises((ssl.SSLError, EOFError, ConnectionError)):
        victim.line(timeout=5)  # nothing valid arrives; the server closes
    wait_until(lambda: "mallory" not in alice.request("/who"), what="mallory's session ended")
    assert alice.request("/ping") == "OK ping"

"""The socket shell: handshakes, slow consumers, TLS versions, mutual TLS, shutdown."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import warnings
from pathlib import Path

import pytest
import trustme

from conftest import PASSWORD, Client, Server, ServerFactory
from sealroom.session import COMMANDS, Command


def test_stalled_handshake_blocks_nobody(make_server: ServerFactory) -> None:
    server = make_server(limits={"handshake_timeout_s": 1})
    silent = socket.create_connection(("127.0.0.1", server.port))  # never sends a ClientHello
    try:
        started = time.monotonic()
        alice = server.user("alice")
        assert alice.request("/ping") == "OK ping"
        assert time.monotonic() - started < 1  # not queued behind the silent client
        silent.settimeout(5)
        assert silent.recv(1) == b""  # closed once its handshake deadline passed
    finally:
        silent.close()


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


def test_slow_consumer_is_dropped_and_others_get_everything(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealroom")
    server = make_server(limits={"outbound_queue_bytes": 524288})
    server.add_user("bob")
    bob_raw = socket.socket()
    bob_raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    bob_raw.connect(("127.0.0.1", server.port))
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    bob = ctx.wrap_socket(bob_raw, server_hostname="localhost")
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


def test_tls_1_1_is_refused(server: Server) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(server.ca_file))
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that it is the server that refuses
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError, match=r"(?i)protocol.version|unsupported.protocol"):
        Client(server.port, server.ca_file, context=ctx)


def test_tls_1_2_and_1_3_are_served(server: Server) -> None:
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ssl.create_default_context(cafile=str(server.ca_file))
        ctx.minimum_version = ctx.maximum_version = version
        client = Client(server.port, server.ca_file, context=ctx)
        assert client.sock.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
        client.close()


def test_modern_profile_refuses_tls_1_2(make_server: ServerFactory) -> None:
    server = make_server(tls={"profile": "modern"})
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        Client(server.port, server.ca_file, context=ctx)


@pytest.fixture
def client_ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path / "client-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


def _mtls_context(server: Server, ca: trustme.CA | None, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    if ca is not None:
        ca.issue_cert(f"{name}@example.test", common_name=name).configure_cert(ctx)
    return ctx


def test_mutual_tls(make_server: ServerFactory, client_ca: tuple[trustme.CA, Path]) -> None:
    ca, path = client_ca
    server = make_server(tls={"client_ca": str(path)})
    server.add_user("alice")
    server.add_user("bob")
    alice = Client(server.port, server.ca_file, context=_mtls_context(server, ca, "alice"))
    assert alice.request("/login bob " + PASSWORD).startswith("ERR auth-failed")
    assert alice.request("/login alice " + PASSWORD).startswith("OK login alice")
    alice.close()
    stranger = trustme.CA()  # a certificate from a CA the server does not trust
    for ctx in (_mtls_context(server, None, "alice"), _mtls_context(server, stranger, "alice")):
        with pytest.raises((ssl.SSLError, EOFError, ConnectionError)):
            _ping_with(server, ctx)


def _ping_with(server: Server, ctx: ssl.SSLContext) -> None:
    client = Client(server.port, server.ca_file, context=ctx)
    try:
        client.request("/ping")  # TLS 1.3 reports a refused certificate on first read
    finally:
        client.close()


def test_internal_error_ends_only_that_connection(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(session: object, request: object) -> None:
        raise RuntimeError("simulated bug")

    original = COMMANDS["ping"]
    monkeypatch.setitem(COMMANDS, "ping", Command(original.syntax, broken, "broken", login=False))
    victim = server.client()
    victim.send("/ping")
    assert victim.closed() == ["BYE internal-error"]
    monkeypatch.setitem(COMMANDS, "ping", original)
    assert server.user("alice").request("/ping") == "OK ping"


def test_graceful_shutdown_says_bye(make_server: ServerFactory) -> None:
    server = make_server()
    alice = server.user("alice")
    waiting = server.client()  # not logged in: told too
    started = time.monotonic()
    server.app.stop(grace_s=5)
    assert time.monotonic() - started < 5
    assert alice.closed()[-1] == "BYE shutting-down"
    assert waiting.closed()[-1] == "BYE shutting-down"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_connection_caps(make_server: ServerFactory) -> None:
    server = make_server(limits={"max_connections_per_ip": 2})
    first, second = server.client(), server.client()
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, TimeoutError)):
        server.client(timeout=2)
    first.close()
    deadline = time.monotonic() + 5
    while True:  # the slot is released once the server notices the close
        try:
            third = server.client(timeout=2)
            break
        except (ssl.SSLError, ConnectionError, EOFError):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert third.request("/ping") == "OK ping"
    second.close()


def test_connection_rate_per_address(make_server: ServerFactory) -> None:
    server = make_server(rate={"connections_per_ip": {"rate": 0.01, "burst": 3}})
    for _ in range(3):
        server.client().close()
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, TimeoutError)):
        server.client(timeout=2)

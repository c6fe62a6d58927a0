"""The socket shell: TLS versions, mutual TLS, internal errors, shutdown.

Hostile clients (stalled handshakes, slow consumers, floods, garbage) have their own
``test_security_*.py`` files, one per threat."""

from __future__ import annotations

import socket
import ssl
import time
import warnings
from pathlib import Path

import pytest
import trustme

from helpers import PASSWORD, Client, Server, ServerFactory
from sealroom.session import COMMANDS, Command


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


def test_sessions_resume_until_the_ticket_key_is_renewed(server: Server) -> None:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    first = Client(server.port, server.ca_file, context=ctx)
    ticket = first.sock.session  # arrived with the HELLO line
    first.close()
    raw = socket.create_connection(("127.0.0.1", server.port))
    again = ctx.wrap_socket(raw, server_hostname="localhost", session=ticket)
    assert again.session_reused
    again.close()
    server.app.renew_ticket_key()
    raw = socket.create_connection(("127.0.0.1", server.port))
    after = ctx.wrap_socket(raw, server_hostname="localhost", session=ticket)
    assert not after.session_reused  # the old key is gone: a full handshake
    after.close()

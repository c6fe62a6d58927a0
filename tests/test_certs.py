"""``certs init``: what it writes, checked with cryptography and with real handshakes.

The handshakes use the standard library's ssl module only (not sealroom.tls), and the
negative cases use trustme as an unrelated CA, so our certificates are tested, not
trusted.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sealroom.core.errors import UserError
from sealroom.ops import certs

TIMEOUT = 5.0
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
NAMES = ("ca.crt", "ca.key", "server.crt", "server.key")


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``certs init`` with extra hosts (some duplicates of the defaults)."""
    directory = tmp_path_factory.mktemp("certs") / "certs"
    certs.init_certs(
        directory,
        [
            "Chat.Example.test",
            "192.0.2.7",
            "chat.example.test",
            "::1",
            "2001:db8::0:1",
            "localhost",
        ],
        now=NOW,
    )
    return directory


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


# --- files ------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_writes_four_files_with_modes(tmp_path: Path, mask: int) -> None:
    directory = tmp_path / "a" / "certs"
    with umask(mask):
        written = certs.init_certs(directory)
    assert written == [directory / name for name in NAMES]
    assert sorted(p.name for p in directory.iterdir()) == sorted(NAMES)
    assert mode(directory / "ca.key") == 0o600
    assert mode(directory / "server.key") == 0o600
    assert mode(directory / "ca.crt") == 0o644
    assert mode(directory / "server.crt") == 0o644
    assert mode(directory) & 0o022 == 0
    assert mode(directory) == 0o755 & ~mask


def test_refuses_to_overwrite_without_force(made: Path) -> None:
    before = {name: (made / name).read_bytes() for name in NAMES}
    with pytest.raises(UserError, match="--force") as info:
        certs.init_certs(made)
    for name in NAMES:
        assert str(made / name) in str(info.value)
    assert {name: (made / name).read_bytes() for name in NAMES} == before


def test_one_existing_file_blocks_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "server.key").write_text("keep me\n")
    with pytest.raises(UserError, match=re.escape(f"overwrite {tmp_path / 'server.key'};")):
        certs.init_certs(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["server.key"]
    assert (tmp_path / "server.key").read_text() == "keep me\n"


def test_force_renews_only_the_leaf_under_the_existing_ca(tmp_path: Path) -> None:
    """Issue 13, report 10: `certs init --force --host X` broke every client's ca.crt."""
    certs.init_certs(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in NAMES}
    (tmp_path / "server.key").chmod(0o644)  # replacing must not keep a loosened mode
    written = certs.init_certs(tmp_path, ["other.test"], force=True)
    assert [p.name for p in written] == ["server.crt", "server.key"]
    for name in ("ca.crt", "ca.key"):
        assert (tmp_path / name).read_bytes() == before[name]
    for name in ("server.crt", "server.key"):
        assert (tmp_path / name).read_bytes() != before[name]
    assert mode(tmp_path / "server.key") == 0o600
    server = load_cert(tmp_path / "server.crt")
    server.verify_directly_issued_by(load_cert(tmp_path / "ca.crt"))
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "other.test" in names.get_values_for_type(x509.DNSName)


def test_force_with_a_broken_ca_points_at_new_ca(tmp_path: Path) -> None:
    certs.init_certs(tmp_path)
    (tmp_path / "ca.key").write_text("garbage\n")
    with pytest.raises(UserError, match="--new-ca"):
        certs.init_certs(tmp_path, force=True)


def test_force_new_ca_replaces_everything(tmp_path: Path) -> None:
    certs.init_certs(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in NAMES}
    (tmp_path / "ca.key").chmod(0o644)  # replacing must not keep a loosened mode
    certs.init_certs(tmp_path, ["other.test"], force=True, new_ca=True)
    for name in NAMES:
        assert (tmp_path / name).read_bytes() != before[name]
    assert mode(tmp_path / "ca.key") == 0o600
    assert mode(tmp_path / "server.key") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(NAMES)  # no temporaries
    server = load_cert(tmp_path / "server.crt")
    server.verify_directly_issued_by(load_cert(tmp_path / "ca.crt"))


@pytest.mark.parametrize("host", ["", "bad host", "-leading.test", "under_score.test", "a..b"])
def test_bad_host_is_a_user_error(tmp_path: Path, host: str) -> None:
    with pytest.raises(UserError, match="not a valid host name"):
        certs.init_certs(tmp_path, [host])
    assert list(tmp_path.iterdir()) == []


def test_naive_now_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone"):
        certs.init_certs(tmp_path, now=datetime(2030, 1, 1))  # naive: the point


# --- certificate contents --------------------------------------------------------------------


def test_server_certificate(made: Path) -> None:
    server = load_cert(made / "server.crt")
    ca = load_cert(made / "ca.crt")
    server.verify_directly_issued_by(ca)
    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "chat.example.test"
    )

    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["chat.example.test", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("2001:db8::1"),
        ipaddress.ip_address("127.0.0.1"),
    ]

    basic = server.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is False
    usage = server.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]

    ski = server.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(server.public_key())
    aki = server.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest

    assert server.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert server.not_valid_after_utc - server.not_valid_before_utc <= timedelta(days=90)
    assert server.not_valid_after_utc <= ca.not_valid_after_utc
    assert server.serial_number != ca.serial_number

    public = server.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    assert load_key(made / "server.key").public_key() == public


def test_ca_certificate(made: Path) -> None:
    ca = load_cert(made / "ca.crt")
    ca.verify_directly_issued_by(ca)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is True
    assert basic.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    assert ca.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert ca.not_valid_after_utc - ca.not_valid_before_utc <= timedelta(days=365)
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    assert load_key(made / "ca.key").public_key() == public


def test_defaults_without_hosts(tmp_path: Path) -> None:
    certs.init_certs(tmp_path)
    server = load_cert(tmp_path / "server.crt")
    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    now = datetime.now(UTC)
    assert server.not_valid_before_utc <= now <= server.not_valid_after_utc


def test_two_runs_make_different_cas(tmp_path: Path) -> None:
    first = certs.init_certs(tmp_path / "one")
    second = certs.init_certs(tmp_path / "two")
    ca_one, ca_two = load_cert(first[0]), load_cert(second[0])
    assert ca_one.subject != ca_two.subject
    assert ca_one.serial_number != ca_two.serial_number


# --- real handshakes ----------------------------------------------------------------------


@contextmanager
def serve_once(ctx: ssl.SSLContext) -> Iterator[tuple[int, dict[str, object]]]:
    """Accept one TLS connection on 127.0.0.1 in a thread; yield (port, what it saw)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    seen: dict[str, object] = {}

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            seen["error"] = exc
            return
        with conn:
            conn.settimeout(TIMEOUT)
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls_sock:
                    seen["peer"] = tls_sock.getpeercert()
                    tls_sock.sendall(b"hello\n")
                    tls_sock.recv(1)  # until the client closes
            except Exception as exc:  # recorded for the test to assert on
                seen["error"] = exc

    thread = threading.Thread(target=serve, name="certs-test-server", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        thread.join(TIMEOUT * 2)
        listener.close()
    assert not thread.is_alive(), "test server thread did not finish"


def server_context(directory: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(directory / "server.crt", directory / "server.key")
    return ctx


def client_context(ca_file: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    assert ctx.check_hostname
    return ctx


def talk(port: int, ctx: ssl.SSLContext, hostname: str) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname=hostname) as sock,
    ):
        return sock.recv(6)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificates valid now (``made`` is dated in the future)."""
    directory = tmp_path_factory.mktemp("fresh")
    certs.init_certs(directory, ["chat.example.test"])
    return directory


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "chat.example.test"])
def test_client_trusting_ca_verifies_server(fresh: Path, hostname: str) -> None:
    with serve_once(server_context(fresh)) as (port, seen):
        assert talk(port, client_context(fresh / "ca.crt"), hostname) == b"hello\n"
    assert "error" not in seen


def test_client_trusting_another_ca_fails(fresh: Path, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.crt"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    with (
        serve_once(server_context(fresh)) as (port, _),
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        talk(port, client_context(stranger), "localhost")


def test_wrong_hostname_fails(fresh: Path) -> None:
    with (
        serve_once(server_context(fresh)) as (port, _),
        pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"),
    ):
        talk(port, client_context(fresh / "ca.crt"), "elsewhere.example.test")


# --- client certificates -------------------------------------------------------------------


def test_issue_client_cert(fresh: Path, tmp_path: Path) -> None:
    cert_path, key_path = certs.issue_client_cert(fresh, "Alice", tmp_path / "clients")
    assert (cert_path.name, key_path.name) == ("alice.crt", "alice.key")
    assert mode(key_path) == 0o600
    cert = load_cert(cert_path)
    ca = load_cert(fresh / "ca.crt")
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(days=90)
    assert load_key(key_path).public_key() == cert.public_key()

    # Mutual TLS with the same CA on both sides: the server sees the CN.
    server = server_context(fresh)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(fresh / "ca.crt")
    client = client_context(fresh / "ca.crt")
    client.load_cert_chain(cert_path, key_path)
    with serve_once(server) as (port, seen):
        assert talk(port, client, "localhost") == b"hello\n"
    peer = seen["peer"]
    assert isinstance(peer, dict)
    assert peer["subject"] == ((("commonName", "alice"),),)

    with pytest.raises(UserError, match="--force"):
        certs.issue_client_cert(fresh, "alice", tmp_path / "clients")
    certs.issue_client_cert(fresh, "alice", tmp_path / "clients", force=True)


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 40])
def test_issue_client_cert_refuses_bad_names(fresh: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError, match="not a valid user name"):
        certs.issue_client_cert(fresh, name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_issue_client_cert_without_ca_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "ca.crt"))):
        certs.issue_client_cert(tmp_path, "alice", tmp_path / "out")


def test_issue_client_cert_with_mismatched_ca_key_is_a_user_error(
    fresh: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    certs.init_certs(other)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "ca.crt").write_bytes((fresh / "ca.crt").read_bytes())
    (mixed / "ca.key").write_bytes((other / "ca.key").read_bytes())
    with pytest.raises(UserError, match="does not belong"):
        certs.issue_client_cert(mixed, "alice", tmp_path / "out")

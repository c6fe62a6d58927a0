"""The TLS policy, tested with real handshakes on 127.0.0.1.

Certificates come from trustme, an independent CA, so these tests check sealroom.tls
and not our own certificate code. Each test server handles one connection in a thread
whose sockets all have timeouts, so a refused handshake can never hang the suite.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from sealroom.client.tls import build_client_context
from sealroom.core.errors import UserError
from sealroom.net import tls

TIMEOUT = 5.0
GREETING = b"hello\n"


@dataclass
class ServerFiles:
    cert: Path
    key: Path
    ca: Path  # the CA that signed cert (what a client trusts)


@dataclass
class Outcome:
    """What the server side of one connection saw."""

    error: BaseException | None = None
    version: str | None = None
    cipher: str | None = None
    common_name: str | None = None


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_server_files(
    ca: trustme.CA, directory: Path, key_type: trustme.KeyType = trustme.KeyType.ECDSA
) -> ServerFiles:
    leaf = ca.issue_cert("localhost", "127.0.0.1", key_type=key_type)
    result = ServerFiles(directory / "server.crt", directory / "server.key", directory / "ca.crt")
    leaf.cert_chain_pems[0].write_to_path(str(result.cert))
    leaf.private_key_pem.write_to_path(str(result.key))
    ca.cert_pem.write_to_path(str(result.ca))
    return result


@pytest.fixture(scope="module")
def files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> ServerFiles:
    """An ECDSA P-256 server certificate, like the ones ``certs init`` makes."""
    return write_server_files(ca, tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def rsa_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> ServerFiles:
    return write_server_files(ca, tmp_path_factory.mktemp("tls-rsa"), trustme.KeyType.RSA)


@pytest.fixture(scope="module")
def client_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    """A second CA, for client certificates in mutual TLS."""
    authority = trustme.CA()
    path = tmp_path_factory.mktemp("client-ca") / "client-ca.crt"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


def server_context(files: ServerFiles, profile: str = "intermediate") -> ssl.SSLContext:
    return tls.build_server_context(files.cert, files.key, None, profile)


@contextmanager
def serve_once(ctx: ssl.SSLContext) -> Iterator[tuple[int, Outcome]]:
    """Accept one TLS connection on 127.0.0.1 in a thread; yield (port, outcome)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    outcome = Outcome()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            outcome.error = exc
            return
        with conn:
            conn.settimeout(TIMEOUT)
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls_sock:
                    outcome.version = tls_sock.version()
                    cipher = tls_sock.cipher()
                    outcome.cipher = cipher[0] if cipher else None
                    outcome.common_name = tls.client_common_name(tls_sock)
                    tls_sock.sendall(GREETING)
                    tls_sock.recv(1)  # until the client closes
            except Exception as exc:  # recorded for the test to assert on
                outcome.error = exc

    thread = threading.Thread(target=serve, name="tls-test-server", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], outcome
    finally:
        thread.join(TIMEOUT * 2)
        listener.close()
    assert not thread.is_alive(), "test server thread did not finish"


def talk(port: int, ctx: ssl.SSLContext, hostname: str = "localhost") -> tuple[str, str]:
    """Handshake, read the greeting; return (TLS version, cipher) the client saw."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname=hostname) as sock,
    ):
        assert sock.recv(len(GREETING)) == GREETING
        version = sock.version()
        cipher = sock.cipher()
        assert version is not None
        assert cipher is not None
        return version, cipher[0]


def client(files: ServerFiles, *, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = build_client_context(files.ca)
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


# --- policy as configured ---------------------------------------------------------------


def test_unknown_profile_is_a_value_error(files: ServerFiles) -> None:
    with pytest.raises(ValueError, match="old"):
        tls.build_server_context(files.cert, files.key, None, "old")


@pytest.mark.parametrize(
    ("profile", "minimum"),
    [("intermediate", ssl.TLSVersion.TLSv1_2), ("modern", ssl.TLSVersion.TLSv1_3)],
)
def test_context_settings(files: ServerFiles, profile: str, minimum: ssl.TLSVersion) -> None:
    ctx = server_context(files, profile)
    assert ctx.minimum_version == minimum
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert not ctx.options & ssl.OP_NO_TICKET  # the pointer probe restored what it flipped
    assert ctx.verify_mode == ssl.CERT_NONE
    ciphers = ctx.get_ciphers()
    tls12 = {c["name"] for c in ciphers if c["protocol"] == "TLSv1.2"}
    assert tls12 == set(tls.TLS12_CIPHERS)
    for cipher in ciphers:
        assert cipher["aead"], cipher["name"]
        assert cipher["protocol"] == "TLSv1.3" or cipher["kea"] == "kx-ecdhe", cipher["name"]
    assert tls.configured_groups_method(ctx) in {tls.GROUPS_LIST, tls.ECDH_CURVE}


def test_groups_method_unknown_for_foreign_context() -> None:
    assert tls.configured_groups_method(ssl.create_default_context()) is None


# --- handshakes ---------------------------------------------------------------------------


def test_intermediate_negotiates_tls13(files: ServerFiles) -> None:
    with serve_once(server_context(files)) as (port, outcome):
        version, _ = talk(port, client(files))
    assert version == "TLSv1.3"
    assert outcome.error is None
    assert outcome.version == "TLSv1.3"
    assert outcome.common_name is None  # no client certificate was asked for


def test_intermediate_negotiates_tls13_by_ip_address(files: ServerFiles) -> None:
    with serve_once(server_context(files)) as (port, outcome):
        version, _ = talk(port, client(files), hostname="127.0.0.1")
    assert version == "TLSv1.3"
    assert outcome.error is None


@pytest.mark.parametrize(
    "suite",
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ],
)
def test_intermediate_negotiates_tls12_aead_suites(files: ServerFiles, suite: str) -> None:
    ctx = client(files, maximum=ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers(suite)
    with serve_once(server_context(files)) as (port, outcome):
        version, cipher = talk(port, ctx)
    assert (version, cipher) == ("TLSv1.2", suite)
    assert outcome.error is None


def test_intermediate_tls12_default_client_gets_ecdhe_aead(files: ServerFiles) -> None:
    with serve_once(server_context(files)) as (port, _):
        version, cipher = talk(port, client(files, maximum=ssl.TLSVersion.TLSv1_2))
    assert version == "TLSv1.2"
    assert cipher in tls.TLS12_CIPHERS


def test_intermediate_rsa_certificate_uses_ecdhe_rsa(rsa_files: ServerFiles) -> None:
    with serve_once(server_context(rsa_files)) as (port, _):
        version, cipher = talk(port, client(rsa_files, maximum=ssl.TLSVersion.TLSv1_2))
    assert version == "TLSv1.2"
    assert cipher.startswith("ECDHE-RSA-")
    assert cipher in tls.TLS12_CIPHERS


def assert_refused(server: ssl.SSLContext, ctx: ssl.SSLContext) -> Outcome:
    with serve_once(server) as (port, outcome), pytest.raises(ssl.SSLError):
        talk(port, ctx)
    assert isinstance(outcome.error, ssl.SSLError)
    return outcome


def legacy_client(files: ServerFiles, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    """A client willing to speak TLS 1.0 up to ``maximum`` (the server must refuse)."""
    ctx = client(files)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # we mean to be old here
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
    # OpenSSL 3 allows TLS < 1.2 (SHA-1 signatures) only at security level 0.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def test_intermediate_refuses_tls11(files: ServerFiles) -> None:
    outcome = assert_refused(server_context(files), legacy_client(files, ssl.TLSVersion.TLSv1_1))
    assert "UNSUPPORTED_PROTOCOL" in str(outcome.error)


def test_modern_refuses_tls12(files: ServerFiles) -> None:
    outcome = assert_refused(
        server_context(files, "modern"),
        client(files, maximum=ssl.TLSVersion.TLSv1_2),
    )
    assert "UNSUPPORTED_PROTOCOL" in str(outcome.error)


def test_modern_negotiates_tls13(files: ServerFiles) -> None:
    with serve_once(server_context(files, "modern")) as (port, _):
        version, _ = talk(port, client(files))
    assert version == "TLSv1.3"


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"])
def test_cbc_suite_refused(files: ServerFiles, suite: str) -> None:
    ctx = client(files, maximum=ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers(suite)
    outcome = assert_refused(server_context(files), ctx)
    assert "NO_SHARED_CIPHER" in str(outcome.error)


def test_client_trusting_another_ca_fails(files: ServerFiles) -> None:
    stranger = build_client_context(None)
    trustme.CA().configure_trust(stranger)
    with (
        serve_once(server_context(files)) as (port, _),
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        talk(port, stranger)


def test_wrong_hostname_fails(files: ServerFiles) -> None:
    with (
        serve_once(server_context(files)) as (port, _),
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        talk(port, client(files), hostname="example.com")


# --- key-exchange groups --------------------------------------------------------------------

OPENSSL = shutil.which("openssl")


def s_client(port: int, files: ServerFiles, *args: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run(
        [
            OPENSSL,
            "s_client",
            "-brief",
            "-verify_return_error",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            "localhost",
            "-CAfile",
            str(files.ca),
            *args,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def handshake_with_groups(
    server: ssl.SSLContext, files: ServerFiles, group: str, version: str
) -> tuple[bool, str]:
    """Whether an openssl client offering only ``group`` gets through, and its report."""
    with serve_once(server) as (port, outcome):
        result = s_client(port, files, "-groups", group, version)
    succeeded = result.returncode == 0 and outcome.error is None
    return succeeded, result.stdout + result.stderr


# (group offered by the client, how s_client names the key exchange, or None if refused)
GROUP_CASES = [
    ("X25519", "X25519"),
    ("P-256", "prime256v1"),
    ("P-384", "secp384r1"),
    ("X448", None),
    ("P-521", None),
    ("ffdhe2048", None),
]


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command")
@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
@pytest.mark.parametrize(("group", "temp_key"), GROUP_CASES)
def test_groups_offered(
    files: ServerFiles, rsa_files: ServerFiles, group: str, temp_key: str | None, version: str
) -> None:
    # In TLS 1.2 the client's groups also limit which ECDSA certificate curves it accepts,
    # so a P-256 certificate would fail every group but P-256; an RSA one isolates the
    # key exchange.
    chosen = rsa_files if version == "-tls1_2" else files
    server = server_context(chosen)
    if tls.configured_groups_method(server) != tls.GROUPS_LIST:
        pytest.skip("SSL_CTX_set1_groups_list is not reachable on this Python build")
    succeeded, output = handshake_with_groups(server, chosen, group, version)
    assert succeeded == (temp_key is not None), output
    if temp_key is not None:
        assert f"Server Temp Key: {temp_key}" in output or f", {temp_key}," in output, output


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command")
def test_groups_fallback_is_p256_only_and_warns_once(
    files: ServerFiles, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tls, "_load_libssl", lambda: "pretend this build has no libssl symbols")
    monkeypatch.setattr(tls, "_fallback_warned", threading.Event())
    with caplog.at_level(logging.WARNING, logger="sealroom.tls"):
        server = server_context(files)
        server_context(files)
    assert tls.configured_groups_method(server) == tls.ECDH_CURVE
    warnings_logged = [r for r in caplog.records if r.name == "sealroom.tls"]
    assert len(warnings_logged) == 1
    assert "pretend" in warnings_logged[0].getMessage()
    assert handshake_with_groups(server, files, "P-256", "-tls1_3")[0]
    assert not handshake_with_groups(server, files, "X25519", "-tls1_3")[0]
    assert not handshake_with_groups(server, files, "P-384", "-tls1_3")[0]


# --- mutual TLS ------------------------------------------------------------------------------


def mutual_server(files: ServerFiles, client_ca_file: Path) -> ssl.SSLContext:
    return tls.build_server_context(files.cert, files.key, client_ca_file, "intermediate")


def client_with_cert(
    files: ServerFiles, authority: trustme.CA, name: str, tmp: Path
) -> ssl.SSLContext:
    leaf = authority.issue_cert(f"{name}@example.test", common_name=name)
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return build_client_context(files.ca, cert, key)


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_mutual_tls_accepts_client_from_right_ca(
    files: ServerFiles,
    client_ca: tuple[trustme.CA, Path],
    tmp_path: Path,
    maximum: ssl.TLSVersion,
) -> None:
    authority, ca_file = client_ca
    ctx = client_with_cert(files, authority, "alice", tmp_path)
    ctx.maximum_version = maximum
    server = mutual_server(files, ca_file)
    assert server.verify_mode == ssl.CERT_REQUIRED
    with serve_once(server) as (port, outcome):
        talk(port, ctx)
    assert outcome.error is None
    assert outcome.common_name == "alice"


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_mutual_tls_refuses_client_without_cert(
    files: ServerFiles, client_ca: tuple[trustme.CA, Path], maximum: ssl.TLSVersion
) -> None:
    # In TLS 1.3 the client finishes its handshake first and learns of the refusal on
    # its first read; either way it gets an SSLError.
    outcome = assert_refused(mutual_server(files, client_ca[1]), client(files, maximum=maximum))
    assert outcome.common_name is None


def test_mutual_tls_refuses_client_from_other_ca(
    files: ServerFiles, client_ca: tuple[trustme.CA, Path], tmp_path: Path
) -> None:
    ctx = client_with_cert(files, trustme.CA(), "mallory", tmp_path)
    outcome = assert_refused(mutual_server(files, client_ca[1]), ctx)
    assert isinstance(outcome.error, ssl.SSLCertVerificationError)


# --- files that are missing or wrong ---------------------------------------------------------


def test_missing_certificate_is_a_user_error(files: ServerFiles, tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(UserError, match=re.escape(f"{missing}: No such file")):
        tls.build_server_context(missing, files.key, None, "intermediate")


def test_missing_key_is_a_user_error(files: ServerFiles, tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(UserError, match=re.escape(f"private key {missing}")):
        tls.build_server_context(files.cert, missing, None, "intermediate")


def test_mismatched_key_is_a_user_error(files: ServerFiles, ca: trustme.CA, tmp_path: Path) -> None:
    other_key = tmp_path / "other.key"
    ca.issue_cert("localhost").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(UserError, match=r"other\.key does not match .*server\.crt"):
        tls.build_server_context(files.cert, other_key, None, "intermediate")


def test_garbage_certificate_is_a_user_error(files: ServerFiles, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    with pytest.raises(UserError, match=r"garbage\.crt holds no valid PEM certificate"):
        tls.build_server_context(garbage, files.key, None, "intermediate")


def test_encrypted_key_is_a_user_error_not_a_prompt(
    files: ServerFiles, ca: trustme.CA, tmp_path: Path
) -> None:
    leaf = ca.issue_cert("localhost")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cert = tmp_path / "leaf.crt"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    with pytest.raises(UserError, match=r"encrypted\.key is encrypted"):
        tls.build_server_context(cert, encrypted, None, "intermediate")


def test_missing_client_ca_is_a_user_error(files: ServerFiles, tmp_path: Path) -> None:
    missing = tmp_path / "nope-ca.crt"
    with pytest.raises(UserError, match=re.escape(f"client CA {missing}")):
        tls.build_server_context(files.cert, files.key, missing, "modern")


def test_client_ca_without_certificates_is_a_user_error(files: ServerFiles) -> None:
    with pytest.raises(UserError, match=r"client CA file .*server\.key"):
        tls.build_server_context(files.cert, files.key, files.key, "modern")


def test_client_context_missing_ca_is_a_user_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope-ca.crt"
    with pytest.raises(UserError, match=re.escape(str(missing))):
        build_client_context(missing)


def test_client_context_key_without_cert_is_a_value_error(files: ServerFiles) -> None:
    with pytest.raises(ValueError, match="certificate"):
        build_client_context(files.ca, None, files.key)


def test_idle_connections_release_openssl_buffers(files: ServerFiles) -> None:
    """SSL_MODE_RELEASE_BUFFERS is on wherever the groups could be set the same way."""
    ctx = tls.build_server_context(files.cert, files.key, None, "intermediate")
    if tls.configured_groups_method(ctx) != tls.GROUPS_LIST:
        pytest.skip("the ctypes path is not available on this Python")
    assert tls.release_idle_buffers(ctx) is True
    assert ctx.num_tickets == 1

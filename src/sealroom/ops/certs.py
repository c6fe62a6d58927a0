"""Development certificates: a private CA and the leaf certificates it signs.

``sealroom certs init`` (SPEC.md section 2) calls :func:`init_certs`; it writes
``ca.crt``, ``ca.key``, ``server.crt`` and ``server.key`` (PEM, ECDSA P-256). Run again
with ``--force`` it renews the server certificate under the CA already there (clients keep
trusting ``ca.crt``); only ``--new-ca`` replaces the CA. The CA
exists only to sign these development leaves, so it is short-lived and may not sign
other CAs (``pathlen 0``). :func:`issue_client_cert` signs client certificates with
the same CA for trying out mutual TLS.

Private keys are written to a fresh file created with mode 0600 and renamed into place,
so a key is never readable by others, not even for a moment, and a reader never sees a
half-written file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sealroom.core.errors import UserError
from sealroom.core.text import user_name

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"

CA_LIFETIME = timedelta(days=365)
LEAF_LIFETIME = timedelta(days=90)
# Starting validity a little in the past tolerates clocks that are slightly behind ours.
CLOCK_SKEW = timedelta(minutes=5)

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o755

# One DNS label; a name is labels joined by dots, optionally behind a "*." wildcard.
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_MAX_DNS_NAME = 253
# X.509 limits a commonName to 64 characters (RFC 5280, ub-common-name).
_MAX_COMMON_NAME = 64

_Identity: TypeAlias = x509.DNSName | x509.IPAddress


@dataclass(frozen=True)
class _Issuer:
    """A CA that signs leaves: its certificate and private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def init_certs(
    directory: Path,
    hosts: Sequence[str] = (),
    *,
    force: bool = False,
    new_ca: bool = False,
    now: datetime | None = None,
) -> list[Path]:
    """Create a private CA and a server certificate it signs, in ``directory``.

    ``hosts`` become the server certificate's subject alternative names (an IP address
    if it parses as one, else a DNS name), together with localhost, 127.0.0.1 and ::1.
    The common name is the first host, or ``localhost``. Existing files are replaced
    only when ``force`` is true; otherwise nothing is written and :class:`UserError`
    names the files in the way.

    With ``force``, an existing CA is kept and only the server certificate and key are
    renewed under it, so every client that trusts ``ca.crt`` keeps working; ``new_ca``
    replaces the CA too. Returns the paths written.
    """
    now = _utc_now(now)
    identities = _identities([*hosts, *DEFAULT_HOSTS])
    common_name = _server_common_name(hosts)
    paths = {name: directory / name for name in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)}

    if not force:
        existing = [str(path) for path in paths.values() if path.exists() or path.is_symlink()]
        if existing:
            raise UserError(
                f"refusing to overwrite {', '.join(existing)}; use --force to renew the "
                "server certificate (--force --new-ca to replace the CA as well)"
            )

    keep_ca = not new_ca and (paths[CA_CERT].exists() or paths[CA_KEY].exists())
    ca = _load_ca(directory, hint=" (or replace it with --new-ca)") if keep_ca else _new_ca(now)
    if keep_ca and now >= ca.cert.not_valid_after_utc:
        raise UserError(f"the CA {paths[CA_CERT]} has expired; replace it with --new-ca")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue_leaf(
        ca,
        server_key.public_key(),
        common_name=common_name,
        identities=identities,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        now=now,
    )

    _make_directory(directory)
    # Keys first: a run cut short leaves no certificate whose key is missing.
    if not keep_ca:
        _write_key(paths[CA_KEY], ca.key)
        _write_cert(paths[CA_CERT], ca.cert)
    _write_key(paths[SERVER_KEY], server_key)
    _write_cert(paths[SERVER_CERT], server_cert)
    written = [SERVER_CERT, SERVER_KEY] if keep_ca else [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY]
    return [paths[name] for name in written]


def issue_client_cert(
    ca_dir: Path,
    name: str,
    out_dir: Path,
    *,
    force: bool = False,
    now: datetime | None = None,
) -> tuple[Path, Path]:
    """Sign a client certificate for user ``name`` with the CA in ``ca_dir``.

    The certificate's subject CN is the (lower-case) user name, which mutual TLS compares
    with the login name. Writes ``NAME.crt`` and ``NAME.key`` into ``out_dir`` and
    returns their paths (certificate, key).
    """
    now = _utc_now(now)
    canonical = user_name(name)
    if canonical is None:
        raise UserError(f"not a valid user name for a client certificate: {name!r}")
    cert_path = out_dir / f"{canonical}.crt"
    key_path = out_dir / f"{canonical}.key"
    if not force:
        existing = [str(path) for path in (cert_path, key_path) if path.exists()]
        if existing:
            raise UserError(f"refusing to overwrite {', '.join(existing)}; use --force to replace")

    ca = _load_ca(ca_dir)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue_leaf(
        ca,
        client_key.public_key(),
        common_name=canonical,
        identities=[],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        now=now,
    )
    _make_directory(out_dir)
    _write_key(key_path, client_key)
    _write_cert(cert_path, client_cert)
    return cert_path, key_path


def _utc_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _identities(hosts: Sequence[str]) -> list[_Identity]:
    """Subject alternative names for ``hosts``, in order, without duplicates."""
    seen: set[str] = set()
    identities: list[_Identity] = []
    for host in hosts:
        identity = _identity(host)
        key = f"{type(identity).__name__}:{identity.value}"
        if key not in seen:
            seen.add(key)
            identities.append(identity)
    return identities


def _identity(host: str) -> _Identity:
    text = host.strip()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return x509.IPAddress(ipaddress.ip_address(bare))
    except ValueError:
        pass
    return x509.DNSName(_dns_name(text))


def _dns_name(host: str) -> str:
    """``host`` as a lower-case ASCII DNS name (IDNA for non-ASCII), or UserError."""
    # One trailing dot (a fully qualified name) means the same host.
    text = host.removesuffix(".")
    try:
        name = text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise UserError(f"not a valid host name: {host!r}") from None
    labels = name.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]
    if (
        not name
        or len(name) > _MAX_DNS_NAME
        or not labels
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
    ):
        raise UserError(f"not a valid host name: {host!r}")
    return name


def _server_common_name(hosts: Sequence[str]) -> str:
    # Clients match host names against the SANs only; the CN is for people reading it.
    if hosts:
        first = str(_identity(hosts[0]).value)
        if len(first) <= _MAX_COMMON_NAME:
            return first
    return "localhost"


def _new_ca(now: datetime) -> _Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    # A random suffix keeps two development CAs apart in a trust store or an error.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sealroom development"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"Sealroom development CA {secrets.token_hex(4)}"
            ),
        ]
    )
    not_before = now - CLOCK_SKEW
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Issuer(cert=cert, key=key)


def _issue_leaf(
    ca: _Issuer,
    public_key: ec.EllipticCurvePublicKey,
    *,
    common_name: str,
    identities: Sequence[_Identity],
    usage: x509.ObjectIdentifier,
    now: datetime,
) -> x509.Certificate:
    not_before = now - CLOCK_SKEW
    # A leaf never outlives the CA that vouches for it.
    not_after = min(not_before + LEAF_LIFETIME, ca.cert.not_valid_after_utc)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    if identities:
        builder = builder.add_extension(x509.SubjectAlternativeName(identities), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def _load_ca(ca_dir: Path, hint: str = "") -> _Issuer:
    cert_path = ca_dir / CA_CERT
    key_path = ca_dir / CA_KEY
    cert_pem = _read(cert_path, "CA certificate", hint)
    key_pem = _read(key_path, "CA key", hint)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise UserError(f"{cert_path} is not a PEM certificate{hint}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise UserError(f"{key_path} is not an unencrypted PEM private key{hint}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UserError(f"{key_path} is not an ECDSA key (made by 'sealroom certs init'){hint}")
    if key.public_key() != cert.public_key():
        raise UserError(f"{key_path} does not belong to the certificate {cert_path}{hint}")
    return _Issuer(cert=cert, key=key)


def _read(path: Path, what: str, hint: str = "") -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}{hint}") from None


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create directory {directory}: {exc.strerror or exc}") from None


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(path, pem, KEY_MODE)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_atomically(path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file with ``mode`` beside ``path``, then rename it over."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        # O_EXCL: the file is ours and new (never a symlink planted beforehand), and it
        # is born with the final permissions, so a key is never readable by others.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
        try:
            # The umask may have taken bits away; set exactly the mode we mean.
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as file:
                fd = -1  # the file object owns the descriptor now
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        finally:
            if fd >= 0:
                os.close(fd)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None

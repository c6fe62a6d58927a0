"""The client's TLS context: TLS 1.2 or newer, the server's certificate and name verified.

It lives here, not beside the server's context in :mod:`sealroom.net.tls`, because the
client library must not depend on the server's network layer. The file loading is the same
kind of work the server's does, written again for the three files a client reads, with
errors that name the file (``ssl`` alone would not).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import NoReturn

from cryptography import x509

from sealroom.core.errors import UserError

__all__ = ["build_client_context"]


def build_client_context(
    ca_file: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context: TLS 1.2 or newer, certificate and host name verified.

    Trusts ``ca_file`` if given, else the system's trust store. ``cert`` (with ``key``,
    or a file holding both) is the client certificate for mutual TLS. Unreadable or
    mismatched files raise :class:`UserError` naming the file.
    """
    if key is not None and cert is None:
        raise ValueError("a client key needs a client certificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if ca_file is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_verify_locations(ctx, ca_file, "CA")
    if cert is not None:
        _load_cert_chain(ctx, cert, key)
    return ctx


def _load_cert_chain(ctx: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    _check_readable(cert, "certificate")
    if key is not None:
        _check_readable(key, "private key")
    key_name = key if key is not None else cert

    def refuse_encrypted_key() -> NoReturn:
        # Without a callback OpenSSL would prompt on the terminal for a passphrase.
        raise UserError(f"TLS private key {key_name} is encrypted; use an unencrypted key")

    try:
        ctx.load_cert_chain(cert, key, password=refuse_encrypted_key)
    except ssl.SSLError as exc:
        reason = exc.reason or "not a valid PEM private key"
        if reason == "KEY_VALUES_MISMATCH":
            raise UserError(
                f"TLS private key {key_name} does not match certificate {cert}"
            ) from None
        if not _holds_certificate(cert):
            raise UserError(f"TLS certificate {cert} holds no valid PEM certificate") from None
        raise UserError(f"cannot load TLS private key {key_name}: {reason}") from None
    except OSError as exc:
        raise UserError(
            f"cannot load TLS certificate {cert} with key {key_name}: {exc.strerror or exc}"
        ) from None


def _holds_certificate(path: Path) -> bool:
    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return False
    return True


def _load_verify_locations(ctx: ssl.SSLContext, ca_file: Path, what: str) -> None:
    _check_readable(ca_file, what)
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise UserError(f"cannot load {what} file {ca_file}: {exc.reason or exc}") from None
    except OSError as exc:
        raise UserError(f"cannot load {what} file {ca_file}: {exc.strerror or exc}") from None


def _check_readable(path: Path, what: str) -> None:
    """UserError naming ``path`` unless it is a file we can open (ssl would not name it)."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise UserError(f"cannot read TLS {what} {path}: {exc.strerror or exc}") from None

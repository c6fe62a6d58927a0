"""TLS contexts for the server (the client library builds its own: sealroom.client.tls).

The server policy follows SPEC.md section 1: TLS 1.2 and 1.3 only ("intermediate") or
TLS 1.3 only ("modern"); AEAD ciphers with forward secrecy only; no compression; no
renegotiation; key exchange over X25519, P-256 or P-384.

Python 3.11 can restrict key-exchange groups only to a single curve
(``SSLContext.set_ecdh_curve``). To offer all three groups, :func:`build_server_context`
calls OpenSSL's ``SSL_CTX_set1_groups_list`` through ctypes on the context's own
``SSL_CTX``, after checking that it really has that ``SSL_CTX`` (see
:func:`_set_groups_list`). Where that cannot be done safely it falls back to P-256
alone and logs a warning once; :func:`configured_groups_method` says which path a
context took.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final, NoReturn

from cryptography import x509

from sealroom.core.errors import UserError

logger = logging.getLogger("sealroom.tls")

PROFILES: Final = ("intermediate", "modern")

# Mozilla's "intermediate" TLS 1.2 suites: ECDHE (forward secrecy) with AES-GCM or
# ChaCha20-Poly1305 (AEAD), nothing else. TLS 1.3 suites are all AEAD with (EC)DHE.
TLS12_CIPHERS: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)

GROUPS: Final = "X25519:P-256:P-384"
FALLBACK_CURVE: Final = "prime256v1"

# How a context's key-exchange groups were set.
GROUPS_LIST: Final = "groups-list"  # all of GROUPS, through SSL_CTX_set1_groups_list
ECDH_CURVE: Final = "ecdh-curve"  # P-256 only, through SSLContext.set_ecdh_curve

# SSL_CTX_set1_groups_list(ctx, list) is a macro for this SSL_CTX_ctrl command.
_SSL_CTRL_SET_GROUPS_LIST: Final = 92
# SSL_CTX_set_mode(ctx, mode) is SSL_CTX_ctrl(ctx, SSL_CTRL_MODE, mode, NULL).
_SSL_CTRL_MODE: Final = 33
_OP_PRIORITIZE_CHACHA: Final = ssl.Options(0x00200000)  # SSL_OP_PRIORITIZE_CHACHA, no Python name
_SSL_MODE_RELEASE_BUFFERS: Final = 0x10

_groups_method: weakref.WeakKeyDictionary[ssl.SSLContext, str] = weakref.WeakKeyDictionary()
_fallback_warned = threading.Event()


def build_server_context(
    cert: Path, key: Path, client_ca: Path | None, profile: str
) -> ssl.SSLContext:
    """A server context for ``profile`` serving ``cert``/``key``.

    With ``client_ca`` set, clients must present a certificate signed by that CA (the
    caller then compares its CN, :func:`client_common_name`, with the login name).
    Unreadable or mismatched files raise :class:`UserError` naming the file; an unknown
    profile raises :class:`ValueError` (configuration is validated before this).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown TLS profile {profile!r}; expected one of {PROFILES}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if profile == "modern" else ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(":".join(TLS12_CIPHERS))
    # OP_SINGLE_ECDH_USE is always on in OpenSSL >= 1.1 (the constant is 0); kept so the
    # intent survives an older library. The server's cipher order decides (auditors' scanners
    # such as testssl rate a client-chosen order HIGH), and PRIORITIZE_CHACHA keeps what
    # client preference gave: a client that lists ChaCha20 first (no AES hardware) gets it.
    ctx.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_SINGLE_ECDH_USE
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | _OP_PRIORITIZE_CHACHA
    )
    _configure_groups(ctx)
    release_idle_buffers(ctx)
    # One TLS 1.3 session ticket per handshake is enough to resume; the default is two.
    ctx.num_tickets = 1
    _load_cert_chain(ctx, cert, key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_verify_locations(ctx, client_ca, "client CA")
    return ctx


def client_common_name(sock: ssl.SSLSocket) -> str | None:
    """The subject CN of the peer's verified certificate, or None.

    None when no certificate was required and verified, and when the subject holds no
    CN or more than one (ambiguous: which one would be the login name?).
    """
    peer = sock.getpeercert()
    subject = peer.get("subject") if peer else None
    if not isinstance(subject, tuple):
        return None
    names = [
        pair[1]
        for rdn in subject
        for pair in rdn
        if isinstance(pair, tuple) and len(pair) == 2 and pair[0] == "commonName"
    ]
    if len(names) != 1:
        return None
    return str(names[0])


def configured_groups_method(ctx: ssl.SSLContext) -> str | None:
    """How :func:`build_server_context` set the groups of ``ctx``.

    :data:`GROUPS_LIST` (X25519, P-256 and P-384), :data:`ECDH_CURVE` (the P-256 only
    fallback), or None for a context it did not build.
    """
    return _groups_method.get(ctx)


def _configure_groups(ctx: ssl.SSLContext) -> None:
    """Limit key exchange to :data:`GROUPS`, or to P-256 where that cannot be done.

    The trade-off of the fallback: P-256 alone is sound and supported by every TLS 1.2+
    client, but clients preferring X25519 spend a HelloRetryRequest round trip (TLS 1.3)
    and none can use X25519 or P-384. The alternative, OpenSSL's default list, would
    also allow groups this policy leaves out (X448, P-521, finite-field DH).
    """
    problem = _set_groups_list(ctx, GROUPS)
    if problem is None:
        _groups_method[ctx] = GROUPS_LIST
        return
    ctx.set_ecdh_curve(FALLBACK_CURVE)
    _groups_method[ctx] = ECDH_CURVE
    if not _fallback_warned.is_set():
        _fallback_warned.set()
        logger.warning(
            "cannot offer key-exchange groups %s (%s); offering P-256 only", GROUPS, problem
        )


@dataclass(frozen=True)
class _LibSSL:
    """The few libssl functions we call, bound to the library that ``_ssl`` uses."""

    get_options: Callable[[int], int]
    ctrl: Callable[[int, int, int, bytes | None], int]


@cache
def _load_libssl() -> _LibSSL | str:
    """The libssl functions, or why they are not available here."""
    if sys.implementation.name != "cpython":
        # Elsewhere id() is not an address and the object layout is unknown.
        return f"not CPython ({sys.implementation.name})"
    try:
        import _ssl  # noqa: PLC0415  (private module; only needed on this path)

        # dlopen on the extension itself: symbol lookup through this handle searches its
        # dependencies, i.e. exactly the libssl the ssl module is linked with.
        lib = ctypes.CDLL(_ssl.__file__)
        version_num = lib.OpenSSL_version_num
        get_options = lib.SSL_CTX_get_options
        ctrl = lib.SSL_CTX_ctrl
    except (ImportError, AttributeError, OSError) as exc:
        return f"libssl functions not reachable: {exc}"
    version_num.restype = ctypes.c_ulong
    version_num.argtypes = []
    if version_num() != ssl.OPENSSL_VERSION_NUMBER:
        return "the libssl found is not the one the ssl module was built with"
    # OpenSSL 3 returns uint64_t options; 1.1 returns unsigned long.
    get_options.restype = ctypes.c_uint64 if ssl.OPENSSL_VERSION_INFO[0] >= 3 else ctypes.c_ulong
    get_options.argtypes = [ctypes.c_void_p]
    ctrl.restype = ctypes.c_long
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    return _LibSSL(get_options=get_options, ctrl=ctrl)


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: _LibSSL) -> int | str:
    """The ``SSL_CTX *`` of ``ctx``, or why it cannot be found safely.

    CPython's ``PySSLContext`` struct starts with the object header followed by the
    ``SSL_CTX *`` pointer. Before trusting that pointer we read the context's options
    through it and compare them with ``ctx.options``, twice, around a change made
    through Python; a pointer to anything else would not follow that change.
    """
    offset = object.__basicsize__
    if type(ctx).__basicsize__ < offset + ctypes.sizeof(ctypes.c_void_p):
        return "the SSLContext object is smaller than CPython's layout"
    pointer = ctypes.c_void_p.from_address(id(ctx) + offset).value
    if not pointer:
        return "no SSL_CTX pointer where CPython keeps it"
    before = int(ctx.options)
    if lib.get_options(pointer) != before:
        return "the SSL_CTX pointer does not match the context"
    # OP_NO_TICKET is harmless to flip for a moment: no connection uses ctx yet.
    ctx.options = ssl.Options(before ^ ssl.OP_NO_TICKET)
    changed = int(ctx.options)
    followed = changed != before and lib.get_options(pointer) == changed
    ctx.options = ssl.Options(before)
    if not followed or lib.get_options(pointer) != before:
        return "the SSL_CTX pointer does not follow the context"
    return pointer


def _set_groups_list(ctx: ssl.SSLContext, groups: str) -> str | None:
    """Call ``SSL_CTX_set1_groups_list(ctx, groups)``; None on success, else why not."""
    lib = _load_libssl()
    if isinstance(lib, str):
        return lib
    pointer = _ssl_ctx_pointer(ctx, lib)
    if isinstance(pointer, str):
        return pointer
    if lib.ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii")) != 1:
        return "OpenSSL refused the groups list"
    return None


def release_idle_buffers(ctx: ssl.SSLContext) -> bool:
    """Set ``SSL_MODE_RELEASE_BUFFERS``: an idle connection then gives back its ~34 KiB of
    OpenSSL read and write buffers until it next has data. Python has no API for it.

    Returns whether the mode is on; without it everything still works, with more memory.
    """
    lib = _load_libssl()
    if isinstance(lib, str):
        return False
    pointer = _ssl_ctx_pointer(ctx, lib)
    if isinstance(pointer, str):
        return False
    mode = lib.ctrl(pointer, _SSL_CTRL_MODE, _SSL_MODE_RELEASE_BUFFERS, None)
    return bool(mode & _SSL_MODE_RELEASE_BUFFERS)


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

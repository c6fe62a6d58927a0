"""What the web door answers over HTTP, without I/O: an h11 request in, an answer out.

Four files (the page, its script, its style and an icon) and one WebSocket endpoint; every
other path is 404. Every answer carries the same security headers: a Content-Security-Policy
that allows nothing but this origin's own files (no inline script or style), HSTS,
``nosniff``, no referrer, no caching and no framing. Nothing here sets or reads a cookie.

The upgrade at ``/ws`` is checked here: the request must be a well-formed RFC 6455 opening
handshake, and its ``Origin`` must be one this server answers to (SPEC section 5), which is
what keeps another site's page from talking to Sealroom with a visitor's browser.
"""

from __future__ import annotations

import base64
import binascii
import http
import importlib.resources
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import h11
from wsproto.utilities import generate_accept_token

from sealroom.config import WebSettings

Headers = list[tuple[bytes, bytes]]

WEBSOCKET_PATH = "/ws"
WEBSOCKET_VERSION = b"13"

# The page and what it loads; each path names a file in the static folder beside this one.
ROUTES: Mapping[str, tuple[str, bytes]] = {
    "/": ("index.html", b"text/html; charset=utf-8"),
    "/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "/app.css": ("app.css", b"text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", b"image/svg+xml"),
}

CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    b"frame-ancestors 'none'"
)

SECURITY_HEADERS: Headers = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY),
    (b"strict-transport-security", b"max-age=63072000"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete HTTP response; ``close`` ends the connection after it."""

    status: int
    headers: Headers
    body: bytes = b""
    close: bool = False

    def events(self, method: bytes) -> list[h11.Event]:
        """The h11 events that send this answer (no body for HEAD)."""
        headers = [*self.headers, (b"content-length", str(len(self.body)).encode())]
        if self.close:
            headers.append((b"connection", b"close"))
        body = [] if method == b"HEAD" or not self.body else [h11.Data(data=self.body)]
        reason = http.HTTPStatus(self.status).phrase.encode()
        response = h11.Response(status_code=self.status, headers=headers, reason=reason)
        return [response, *body, h11.EndOfMessage()]


@dataclass(frozen=True, slots=True)
class Upgrade:
    """The WebSocket handshake succeeded: send ``101 Switching Protocols`` with these."""

    headers: Headers

    def event(self) -> h11.InformationalResponse:
        return h11.InformationalResponse(
            status_code=101, headers=self.headers, reason=b"Switching Protocols"
        )


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request got an error answer, for the log (never sent to the client)."""

    answer: Answer
    reason: str


def allowed_origins(server_name: str, port: int, extra: Iterable[str]) -> frozenset[str]:
    """``https://SERVER_NAME[:PORT]`` as a browser writes it (no port for 443), and ``extra``."""
    own = f"https://{server_name.lower()}" + ("" if port == 443 else f":{port}")
    return frozenset({own, *extra})


class Site:
    """The web door's HTTP answers, built once from the static files."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self._pages: dict[str, tuple[bytes, bytes]] = {}
        for path, (name, content_type) in ROUTES.items():
            self._pages[path] = (files[name], content_type)

    @classmethod
    def from_package(cls) -> Site:
        """The web client shipped in ``sealroom/net/web/static`` (package data)."""
        folder = importlib.resources.files(__package__ or "sealroom.net.web") / "static"
        return cls({name: (folder / name).read_bytes() for name, _ in ROUTES.values()})

    def answer(
        self, request: h11.Request, *, origins: frozenset[str], limits: WebSettings
    ) -> Answer | Upgrade | Refusal:
        """What to send for ``request`` (its body, if any, is never read).

        h11 bounds a request head only while it is incomplete: one that arrives whole is
        measured here, against the same ``web.max_request_bytes``.
        """
        if len(request.headers) > limits.max_headers:
            return _refuse(431, "too many header fields", close=True)
        if _head_size(request) > limits.max_request_bytes:
            return _refuse(431, "request head too large", close=True)
        headers = _Headers(request.headers)
        if headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
            # Nothing here takes a body; not reading it means closing after the answer.
            return _refuse(413, "request with a body", close=True)
        target = request.target
        if not target.startswith(b"/"):
            return _refuse(400, "target is not a path", close=True)
        path = target.split(b"?", 1)[0].decode("ascii", "replace")
        method = request.method
        if path == WEBSOCKET_PATH:
            if method != b"GET":
                return _refuse(405, f"{_text(method)} {path}", allow=b"GET")
            return _websocket(headers, origins)
        page = self._pages.get(path)
        if page is None:
            return _refuse(404, f"no page {path}")
        if method not in (b"GET", b"HEAD"):
            return _refuse(405, f"{_text(method)} {path}", allow=b"GET, HEAD")
        body, content_type = page
        return Answer(200, [*SECURITY_HEADERS, (b"content-type", content_type)], body)


class _Headers:
    """Header fields by lower-case name; a repeated field's values joined with commas."""

    def __init__(self, fields: Iterable[tuple[bytes, bytes]]) -> None:
        self._fields: dict[bytes, bytes] = {}
        for name, value in fields:
            known = self._fields.get(name)
            self._fields[name] = value if known is None else known + b", " + value

    def __contains__(self, name: bytes) -> bool:
        return name in self._fields

    def get(self, name: bytes, default: bytes = b"") -> bytes:
        return self._fields.get(name, default)

    def tokens(self, name: bytes) -> set[bytes]:
        """A comma-separated field's items, lower case (``Connection: keep-alive, Upgrade``)."""
        return {item.strip().lower() for item in self.get(name).split(b",")}


def _websocket(headers: _Headers, origins: frozenset[str]) -> Upgrade | Refusal:
    """RFC 6455 section 4.2.1, and the origin rule of SPEC section 5 before anything else.
    A refused upgrade closes the connection: a WebSocket client does not reuse it."""
    origin = _text(headers.get(b"origin")).lower()
    if origin not in origins:
        return _refuse(403, f"origin {origin or '(none)'} is not allowed", close=True)
    if b"websocket" not in headers.tokens(b"upgrade"):
        return _refuse(426, "not a WebSocket upgrade", close=True, upgrade=True)
    if b"upgrade" not in headers.tokens(b"connection"):
        return _refuse(400, "Connection does not name upgrade", close=True)
    if headers.get(b"sec-websocket-version") != WEBSOCKET_VERSION:
        return _refuse(426, "unsupported WebSocket version", close=True, upgrade=True)
    key = headers.get(b"sec-websocket-key")
    if not _is_websocket_key(key):
        return _refuse(400, "bad Sec-WebSocket-Key", close=True)
    return Upgrade(
        [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", generate_accept_token(key)),
        ]
    )


def _head_size(request: h11.Request) -> int:
    """The size of the request line and header fields as sent (give or take whitespace)."""
    line = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n")
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers)


def _is_websocket_key(key: bytes) -> bool:
    """A base64-encoded 16-byte value (RFC 6455 section 4.1)."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def error_answer(status: int, *, close: bool = False) -> Answer:
    """A short plain-text error page with the security headers."""
    body = f"{status} {http.HTTPStatus(status).phrase}\n".encode()
    return Answer(
        status,
        [*SECURITY_HEADERS, (b"content-type", b"text/plain; charset=utf-8")],
        body,
        close=close,
    )


def _refuse(
    status: int,
    reason: str,
    *,
    close: bool = False,
    allow: bytes | None = None,
    upgrade: bool = False,
) -> Refusal:
    answer = error_answer(status, close=close)
    if allow is not None:
        answer.headers.append((b"allow", allow))
    if upgrade:
        answer.headers.extend([(b"upgrade", b"websocket"), (b"sec-websocket-version", b"13")])
    return Refusal(answer, reason)


def _text(value: bytes) -> str:
    """Header bytes as text for comparisons and logs (obs-text survives as U+FFFD)."""
    return value.decode("ascii", "replace")

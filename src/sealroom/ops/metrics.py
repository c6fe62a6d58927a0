"""An optional Prometheus endpoint: ``GET /metrics`` in the text exposition format, and
``GET /ready`` for a load balancer's health check: 200 while this server serves, 503 with
the reason while it does not (shutting down; a cluster node cut off from Redis, which
fences itself, or whose database refuses). A balancer that only connects to the chat port
would keep sending clients to a fenced node, which accepts them and answers server-busy.

Off unless ``metrics.listen`` is set. It has no authentication, so it belongs on loopback
(or behind a proxy that adds it); binding any other address is logged as a warning. The
numbers come from a ``collect`` callable, called once per scrape on the endpoint's own
thread, so the server's hot paths only ever bump plain integers.

Each connection is served on a thread of its own (CPython's socketserver), so both what a
connection may hold and how long are bounded: at most ``MAX_CONCURRENT_SCRAPES`` connections
are served at once (the next one is closed at once, unread), and a request must arrive
whole, within ``MAX_REQUEST_HEAD_BYTES``, before ``REQUEST_DEADLINE_S`` has passed since the
connection was accepted. That deadline is absolute: a client that drips one byte at a time
does not extend it, as it would a socket timeout. A scraper sends its request at once, so
the bounds cost it nothing; under a slow flood the endpoint may refuse scrapes for a while,
but never holds more than its few threads.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from sealroom.core.errors import UserError
from sealroom.core.text import escape_for_log

log = logging.getLogger("sealroom.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
READY_TYPE = "text/plain; charset=utf-8"
MAX_CONCURRENT_SCRAPES: Final = 4  # connections served at once; one thread each
REQUEST_DEADLINE_S: Final = 3.0  # from accept to the request's blank line, however it drips
MAX_REQUEST_HEAD_BYTES: Final = 8192  # request line and headers; a GET has no body
Labels = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric: a name, its type (``counter`` or ``gauge``), help text and samples."""

    name: str
    kind: str
    help: str
    samples: Sequence[tuple[Labels, float]]

    @classmethod
    def single(cls, name: str, kind: str, help_text: str, value: float) -> Family:
        return cls(name, kind, help_text, [({}, value)])


def render(families: Sequence[Family]) -> str:
    """The Prometheus text format (version 0.0.4) for ``families``."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            lines.append(f"{family.name}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_label_value(value)}"' for key, value in sorted(labels.items()))
    return "{" + inner + "}"


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class MetricsServer(ThreadingHTTPServer):
    """``GET /metrics`` on ``address``; everything else is 404 or 405."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        collect: Callable[[], Sequence[Family]],
        *,
        unready: Callable[[], str | None] = lambda: None,
        max_concurrent: int = MAX_CONCURRENT_SCRAPES,
        request_deadline_s: float = REQUEST_DEADLINE_S,
    ) -> None:
        if max_concurrent < 1 or request_deadline_s <= 0:
            raise ValueError("max_concurrent and request_deadline_s must be positive")
        self.collect = collect
        self.unready = unready  # why this server does not serve now, or None
        self.max_concurrent = max_concurrent
        self.request_deadline_s = request_deadline_s
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.refused = 0  # connections closed unread because every slot was taken
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__(address, _MetricsHandler)
        except OSError as error:
            raise UserError(
                f"cannot listen for metrics on {host}:{address[1]}: {error.strerror or error}"
            ) from None
        if not _is_loopback(host):
            log.warning(
                "metrics endpoint on %s is not loopback: anyone who reaches it reads the numbers",
                self.bound,
            )

    @property
    def bound(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # The cap, in socketserver's own hooks: a slot is taken on the accepting thread before a
    # connection gets a thread, and given back when that thread is done with it.

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self._slots.acquire(blocking=False):
            return True
        self.refused += 1  # written by the accepting thread only
        log.debug(
            "metrics endpoint: %d scrapes in progress, closing a new connection",
            self.max_concurrent,
        )
        return False  # socketserver closes it, unread

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started: it will not give the slot back
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("metrics endpoint: unexpected error")


class _MetricsHandler(BaseHTTPRequestHandler):
    server: MetricsServer
    timeout = 5.0  # each write; reading the request has the server's absolute deadline
    server_version = "sealroom"
    sys_version = ""

    def handle(self) -> None:
        head = self._read_head()
        if head is None:
            self.close_connection = True
            return  # too slow or too long: closed without a word
        # http.server parses the request from memory: it can no longer wait on the socket.
        self.rfile.close()
        self.rfile = io.BytesIO(head)
        super().handle()

    def _read_head(self) -> bytes | None:
        """The request line and headers, if they arrive whole and in time; else None."""
        deadline = time.monotonic() + self.server.request_deadline_s
        head = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            room = MAX_REQUEST_HEAD_BYTES - len(head)
            if remaining <= 0 or room <= 0:
                return None
            self.connection.settimeout(remaining)
            try:
                chunk = self.connection.recv(room)
            except OSError:  # the deadline (TimeoutError) or a reset
                return None
            if not chunk:
                return None
            searched = max(0, len(head) - 3)  # an end may straddle the chunks
            head += chunk
            if head.find(b"\n\r\n", searched) >= 0 or head.find(b"\n\n", searched) >= 0:
                self.connection.settimeout(self.timeout)
                return bytes(head)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(HTTPStatus.OK, CONTENT_TYPE, render(self.server.collect()))
        elif path == "/ready":
            why = self.server.unready()
            if why is None:
                self._answer(HTTPStatus.OK, READY_TYPE, "ready\n")
            else:
                self._answer(HTTPStatus.SERVICE_UNAVAILABLE, READY_TYPE, f"not ready: {why}\n")
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def _answer(self, status: HTTPStatus, content_type: str, text: str) -> None:
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # http.server writes to stderr by default; scrapes are routine, so debug level.
        log.debug("%s [-]: metrics %s", self.address_string(), escape_for_log(format % args))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"

"""An optional Prometheus endpoint: ``GET /metrics`` in the text exposition format.

Off unless ``metrics.listen`` is set. It has no authentication, so it belongs on loopback
(or behind a proxy that adds it); binding any other address is logged as a warning. The
numbers come from a ``collect`` callable, called once per scrape on the endpoint's own
thread, so the server's hot paths only ever bump plain integers.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sealroom.core.errors import UserError
from sealroom.core.text import escape_for_log

log = logging.getLogger("sealroom.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
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

    def __init__(self, address: tuple[str, int], collect: Callable[[], Sequence[Family]]) -> None:
        self.collect = collect
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("metrics endpoint: unexpected error")


class _MetricsHandler(BaseHTTPRequestHandler):
    server: MetricsServer
    timeout = 5.0
    server_version = "sealroom"
    sys_version = ""

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        body = render(self.server.collect()).encode("utf-8")
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", CONTENT_TYPE)
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

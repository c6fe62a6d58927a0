"""What the tests share: fake clocks, config files, a line-oriented TLS client and a real
in-process server to point it at.

The fixtures that hand these out (a trustme CA, its server certificate, ``make_server``)
are in conftest.py; everything else a test imports comes from here.
"""

from __future__ import annotations

import contextlib
import http.client
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from sealroom.config import Settings, load_settings
from sealroom.ops.app import App
from sealroom.ops.notify import Notifier
from sealroom.policy.auth import password_hasher

PASSWORD = "correct horse battery"
CHEAP_ARGON2 = {"time_cost": 1, "memory_cost_kib": 8, "parallelism": 1}


# -- time ------------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock in seconds that moves only when the test moves ``now``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeWallClock:
    """A wall clock (aware datetimes) that moves only when the test moves ``now``."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def http_get(port: int, path: str) -> tuple[int, str, str]:
    """(status, Content-Type, body) of ``GET path`` on 127.0.0.1:``port`` (the metrics
    endpoint: ``/metrics`` and ``/ready``)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode()
        return response.status, response.getheader("Content-Type") or "", body
    finally:
        connection.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what or predicate}")
        time.sleep(0.02)


# -- configuration ---------------------------------------------------------------------------


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, nested mappings merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def write_config(folder: Path, data: Mapping[str, Any]) -> Path:
    """``data`` as ``folder/sealroom.yaml``; returns its path."""
    path = folder / "sealroom.yaml"
    path.write_text(yaml.safe_dump(dict(data)))
    return path


def server_config(tls_files: Mapping[str, Path], extra: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration of an in-process test server: an ephemeral loopback port, cheap
    argon2, short waits and rate limits no test hits by accident, then ``extra``."""
    return merge(
        {
            "listen": ["127.0.0.1:0"],
            "tls": {"cert": str(tls_files["cert"]), "key": str(tls_files["key"])},
            "storage": {"database": "sealroom.db"},
            "auth": {"argon2": CHEAP_ARGON2},
            "limits": {"shutdown_grace_s": 2, "handshake_timeout_s": 5},
            "rate": {
                "messages": {"rate": 1000, "burst": 1000},
                "logins_per_ip": {"rate": 100, "burst": 100},
                "connections_per_ip": {"rate": 100, "burst": 100},
            },
        },
        extra,
    )


# -- reading a subprocess --------------------------------------------------------------------


class LineReader:
    """Lines from a subprocess pipe, read on a thread so each wait can have a timeout."""

    def __init__(self, stream: object) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line.rstrip("\n"))

    def until(self, pattern: str, timeout: float = 10) -> str:
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; saw {seen}") from None
            seen.append(line)
            if re.search(pattern, line):
                return line


# -- talking to a server ---------------------------------------------------------------------


def tls_connection(
    port: int,
    ca_file: Path,
    *,
    host: str = "127.0.0.1",
    context: ssl.SSLContext | None = None,
    timeout: float = 5.0,
    source: str | None = None,
    rcvbuf: int | None = None,
    sndbuf: int | None = None,
    preface: bytes = b"",
) -> ssl.SSLSocket:
    """A TLS connection to a test server with the handshake done and nothing read.

    ``source`` is the loopback address to connect from; ``rcvbuf`` and ``sndbuf`` shrink the
    kernel's buffers before connecting (TCP settles its window then), for a peer that must
    fall behind quickly; ``preface`` is sent in the clear before TLS (a PROXY protocol
    header, as a load balancer sends it).
    """
    ctx = context or ssl.create_default_context(cafile=str(ca_file))
    raw = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        for option, size in ((socket.SO_RCVBUF, rcvbuf), (socket.SO_SNDBUF, sndbuf)):
            if size is not None:
                raw.setsockopt(socket.SOL_SOCKET, option, size)
        raw.settimeout(timeout)
        if source:
            raw.bind((source, 0))
        # Wrapped before connecting: wrapping a connection the server has already reset
        # raises from inside wrap_socket (its pre-handshake check), leaking the SSLSocket.
        tls = ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
    except BaseException:
        raw.close()
        raise
    try:
        tls.connect((host, port))
        socket.socket.sendall(tls, preface)
        tls.do_handshake()
    except BaseException:
        tls.close()
        raise
    return tls


class Client:
    """A line-oriented TLS client for tests: blocking, with a timeout on every read."""

    def __init__(
        self,
        port: int,
        ca_file: Path,
        *,
        host: str = "127.0.0.1",
        context: ssl.SSLContext | None = None,
        timeout: float = 5.0,
        source: str | None = None,
        preface: bytes = b"",
    ) -> None:
        self.sock = tls_connection(
            port,
            ca_file,
            host=host,
            context=context,
            timeout=timeout,
            source=source,
            preface=preface,
        )
        self._buf = b""
        try:
            self.hello = self.line()
        except BaseException:
            self.sock.close()
            raise

    def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode()
        self.sock.sendall(data if data.endswith(b"\n") else data + b"\n")

    def line(self, timeout: float = 5.0) -> str:
        """The next line from the server; raises TimeoutError, or EOFError when closed."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line within {timeout}s; have {self._buf!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise EOFError(f"connection closed; have {self._buf!r}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def request(self, line: str, timeout: float = 5.0) -> str:
        """Send ``line`` and return its final reply, skipping events that come before it."""
        self.send(line)
        while True:
            reply = self.line(timeout)
            if reply.startswith(("OK ", "ERR ", "BYE ")) or reply in ("OK",):
                return reply

    def expect(self, prefix: str, timeout: float = 5.0) -> str:
        line = self.line(timeout)
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
        return line

    def login(self, name: str, password: str = PASSWORD) -> str:
        reply = self.request(f"/login {name} {password}")
        assert reply.startswith(f"OK login {name}"), reply
        return reply

    def closed(self, timeout: float = 5.0) -> list[str]:
        """Read until the server closes; returns the lines read."""
        lines = []
        try:
            while True:
                lines.append(self.line(timeout))
        except (EOFError, ConnectionError, ssl.SSLError):
            return lines

    def close(self) -> None:
        self.sock.close()


class WebClient:
    """A WebSocket client of the web door for tests: one text message per line, each way.

    It speaks like :class:`Client` (``line``, ``request``, ``login``), over ``wss://`` to
    127.0.0.1 with the test CA, sending ``origin`` (by default the server's own).
    """

    def __init__(
        self,
        port: int,
        ca_file: Path,
        *,
        origin: str | None = None,
        timeout: float = 5.0,
        max_size: int | None = 1 << 20,
        max_queue: int = 16,
        rcvbuf: int | None = None,
    ) -> None:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if rcvbuf is not None:  # set before any data: TCP sizes its window from it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._stack = contextlib.ExitStack()  # websockets wants connect() used with "with"
        self.ws: ClientConnection = self._stack.enter_context(
            connect(
                f"wss://127.0.0.1:{port}/ws",
                sock=sock,
                ssl=ctx,
                server_hostname="localhost",
                origin=Origin(origin or f"https://localhost:{port}"),
                proxy=None,  # never through a proxy from the environment: loopback only
                compression=None,
                open_timeout=timeout,
                close_timeout=2,
                ping_interval=None,
                max_size=max_size,
                max_queue=max_queue,
            )
        )
        try:
            self.hello = self.line()
        except BaseException:
            self._stack.close()
            raise

    def send(self, line: str | bytes) -> None:
        self.ws.send(line)

    def line(self, timeout: float = 5.0) -> str:
        """The next message; TimeoutError, or EOFError when the server closed."""
        try:
            message = self.ws.recv(timeout=timeout)
        except ConnectionClosed as closed:
            raise EOFError(f"closed: {closed}") from None
        assert isinstance(message, str), f"a binary message: {message!r}"
        return message

    def request(self, line: str, timeout: float = 5.0) -> str:
        """Send ``line`` and return its final reply, skipping events that come before it."""
        self.send(line)
        while True:
            reply = self.line(timeout)
            if reply.startswith(("OK ", "ERR ", "BYE ")) or reply == "OK":
                return reply

    def expect(self, prefix: str, timeout: float = 5.0) -> str:
        line = self.line(timeout)
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
        return line

    def login(self, name: str, password: str = PASSWORD) -> str:
        reply = self.request(f"/login {name} {password}")
        assert reply.startswith(f"OK login {name}"), reply
        return reply

    def closed(self, timeout: float = 5.0) -> list[str]:
        """Read until the server closes; returns the messages read."""
        lines = []
        try:
            while True:
                lines.append(self.line(timeout))
        except EOFError:
            return lines

    @property
    def close_code(self) -> int | None:
        """The code of the close frame the server sent, once it did."""
        frame = self.ws.protocol.close_rcvd
        return None if frame is None else int(frame.code)

    def close(self) -> None:
        self._stack.close()


# -- an in-process server --------------------------------------------------------------------


class Server:
    """A running in-process server plus what tests need to talk to it."""

    def __init__(self, app: App, ca_file: Path, config: Path) -> None:
        self.app = app
        self.ca_file = ca_file
        self.config = config
        self.port = app.servers[0].server_address[1]
        self._clients: list[Client | WebClient] = []

    @property
    def settings(self) -> Settings:
        return self.app.settings

    def add_user(self, name: str, password: str = PASSWORD, *, admin: bool = False) -> None:
        hasher = password_hasher(**CHEAP_ARGON2)
        self.app.store.add_account(name, hasher.hash(password), is_admin=admin)

    @property
    def web_port(self) -> int:
        """The web door's port (the server must have been started with ``web.listen``)."""
        assert self.app.web is not None, "started without web.listen"
        return self.app.web.door.port

    def web_client(self, **kwargs: Any) -> WebClient:
        """A new WebSocket connection (see `WebClient`), closed when the server stops."""
        client = WebClient(self.web_port, self.ca_file, **kwargs)
        self._clients.append(client)
        return client

    def web_user(self, name: str, *, admin: bool = False) -> WebClient:
        """A logged-in WebSocket client for a new account ``name``."""
        if self.app.store.get_account(name) is None:
            self.add_user(name, admin=admin)
        client = self.web_client()
        client.login(name)
        return client

    def client(self, **kwargs: Any) -> Client:
        """A new connection (see `Client` for the options), closed when the server stops."""
        client = Client(self.port, self.ca_file, **kwargs)
        self._clients.append(client)
        return client

    def user(self, name: str, *, admin: bool = False) -> Client:
        """A logged-in client for a new account ``name``."""
        if self.app.store.get_account(name) is None:
            self.add_user(name, admin=admin)
        client = self.client()
        client.login(name)
        return client

    def restart(self) -> None:
        """Stop gracefully and start again on the same configuration and database."""
        self.close_clients()
        self.app.stop(grace_s=1.0)
        self.app = App(load_settings(self.config))
        self.app.start()
        self.port = self.app.servers[0].server_address[1]

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()

    def stop(self) -> None:
        self.close_clients()
        self.app.stop(grace_s=1.0)


ServerFactory = Callable[..., Server]


def start_server(
    folder: Path,
    tls_files: Mapping[str, Path],
    extra: Mapping[str, Any],
    notifier: Notifier | None = None,
) -> Server:
    """A server started in-process on ``server_config(tls_files, extra)``, its files in
    ``folder``; ``notifier`` stands in for a service manager."""
    config = write_config(folder, server_config(tls_files, extra))
    app = App(load_settings(config), notifier)
    server = Server(app, tls_files["ca"], config)
    app.start()
    return server

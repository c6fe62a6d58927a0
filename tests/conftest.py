"""Shared fixtures: a trustme CA (independent of our own `certs init`), a real server on
127.0.0.1 port 0 with a real SQLite file, and a small line-oriented TLS client."""

from __future__ import annotations

import logging
import os
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from sealroom.config import Settings, load_settings
from sealroom.ops.app import App

# A database or argon2 call on the reactor thread raises instead of being logged: in this
# process and in every `sealroom serve` the tests start (they inherit the environment).
os.environ["SEALROOM_STRICT_BLOCKING"] = "1"

PASSWORD = "correct horse battery"
CHEAP_ARGON2 = {"time_cost": 1, "memory_cost_kib": 8, "parallelism": 1}


@pytest.fixture(autouse=True)
def _sealroom_log_handlers() -> Iterator[None]:
    """In-process `sealroom serve` installs a stderr handler bound to pytest's capture of
    that test; drop it afterwards so later server threads never log into a closed stream."""
    yield
    logger = logging.getLogger("sealroom")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls")
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    return files


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def write_config(folder: Path, tls_files: dict[str, Path], extra: dict[str, Any]) -> Path:
    data = merge(
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
    path = folder / "sealroom.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


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
    ) -> None:
        ctx = context or ssl.create_default_context(cafile=str(ca_file))
        source_address = (source, 0) if source else None
        raw = socket.create_connection((host, port), timeout=timeout, source_address=source_address)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        except BaseException:
            raw.close()
            raise
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


class Server:
    """A running in-process server plus what tests need to talk to it."""

    def __init__(self, app: App, ca_file: Path, config: Path) -> None:
        self.app = app
        self.ca_file = ca_file
        self.config = config
        self.port = app.servers[0].server_address[1]
        self._clients: list[Client] = []

    @property
    def settings(self) -> Settings:
        return self.app.settings

    def add_user(self, name: str, password: str = PASSWORD, *, admin: bool = False) -> None:
        from argon2 import PasswordHasher

        hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        self.app.store.add_account(name, hasher.hash(password), is_admin=admin)

    def client(self, **kwargs: Any) -> Client:
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


ServerFactory = Callable[..., Server]


@pytest.fixture
def make_server(tmp_path: Path, tls_files: dict[str, Path]) -> Iterator[ServerFactory]:
    started: list[Server] = []

    def factory(**extra: Any) -> Server:
        folder = tmp_path / f"server{len(started)}"
        folder.mkdir()
        config = write_config(folder, tls_files, extra)
        app = App(load_settings(config))
        app.start()
        server = Server(app, tls_files["ca"], config)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.close_clients()
        server.app.stop(grace_s=1.0)


@pytest.fixture
def server(make_server: ServerFactory) -> Server:
    return make_server()

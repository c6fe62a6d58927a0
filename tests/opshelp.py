"""Helpers for the operations tests: a service manager's notify socket, certificates to
rotate, the certificate a server presents, and the sealroom log lines as they happen."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import trustme

from helpers import CHEAP_ARGON2, PASSWORD, LineReader, tls_connection, write_config
from sealroom.ops.logs import configure_logging
from sealroom.policy.auth import password_hasher
from sealroom.store.sqlite import SqliteStore


class NotifyListener:
    """The service manager's end of ``NOTIFY_SOCKET``: a real datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[dict[str, str]] = []

    def next(self, timeout: float = 10.0) -> dict[str, str]:
        """The next datagram as a field mapping; TimeoutError if none comes in time."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.received.append(fields)
        return fields

    def until(self, key: str, value: str = "1", timeout: float = 10.0) -> dict[str, str]:
        """Read datagrams until one sets ``key`` to ``value``; returns that one."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {key}={value} in {self.received}")
            fields = self.next(remaining)
            if fields.get(key) == value:
                return fields

    def drain(self) -> list[dict[str, str]]:
        """Whatever is queued right now, without waiting."""
        found = []
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536)
                found.append(dict(x.split("=", 1) for x in data.decode().split("\n") if x))
        except BlockingIOError:
            return found

    def close(self) -> None:
        self.sock.close()


def write_leaf(
    ca: trustme.CA,
    folder: Path,
    stem: str,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[Path, Path]:
    """A new localhost certificate and key from ``ca``, as ``stem.crt`` and ``stem.key``."""
    leaf = ca.issue_cert("localhost", "127.0.0.1", not_before=not_before, not_after=not_after)
    cert, key = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def fingerprint(port: int, ca_file: Path) -> str:
    """SHA-256 of the certificate a new connection to ``port`` is shown."""
    with tls_connection(port, ca_file) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def file_fingerprint(cert: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


class LogLines(logging.Handler):
    """Every formatted sealroom log line, with a wait for the one a test expects."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        with self._cond:
            found = self._cond.wait_for(lambda: any(text in line for line in self.lines), timeout)
            assert found, f"no log line with {text!r}; saw {self.lines}"
            return next(line for line in self.lines if text in line)


@contextmanager
def sealroom_logs(level: str = "debug", fmt: str = "text", stream: object = None) -> Iterator[None]:
    """Configure sealroom's logging as ``serve`` does, and put it back afterwards."""
    logger = logging.getLogger("sealroom")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        configure_logging(level, fmt, stream)  # type: ignore[arg-type]
        yield
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in saved[0]:
            logger.addHandler(handler)
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


@contextmanager
def captured_lines() -> Iterator[LogLines]:
    """Collect sealroom log lines, whatever else is configured (propagation may be off)."""
    logger = logging.getLogger("sealroom")
    handler = LogLines()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    saved = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


@dataclass
class ServeProcess:
    """A ``sealroom serve`` process with its own certificate, accounts and notify socket."""

    process: subprocess.Popen[str]
    port: int
    ca_file: Path
    cert: Path
    notify: NotifyListener
    log: LineReader


@contextmanager
def serve_process(
    ca: trustme.CA, folder: Path, accounts: tuple[str, ...], prefix: tuple[str, ...] = ()
) -> Iterator[ServeProcess]:
    """Start ``python [prefix…] -m sealroom serve`` and wait for READY=1 on its notify socket."""
    cert, key = write_leaf(ca, folder, "server")
    config = write_config(
        folder,
        {
            "listen": ["127.0.0.1:0"],
            "tls": {"cert": str(cert), "key": str(key)},
            "auth": {"argon2": CHEAP_ARGON2},
            "limits": {"shutdown_grace_s": 2},
        },
    )
    hasher = password_hasher(**CHEAP_ARGON2)
    with SqliteStore(folder / "var" / "sealroom.db") as store:
        for name in accounts:
            store.add_account(name, hasher.hash(PASSWORD), is_admin=False)
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    notify = NotifyListener(folder / "notify")
    env = {**os.environ, "SEALROOM_CONFIG": str(config), "NOTIFY_SOCKET": str(notify.path)}
    env.pop("JOURNAL_STREAM", None)
    process = subprocess.Popen(
        [sys.executable, *prefix, "-m", "sealroom", "serve"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    try:
        log = LineReader(process.stderr)
        port = int(log.until(r"listening on 127\.0\.0\.1:\d+").rsplit(":", 1)[1])
        notify.until("READY")
        yield ServeProcess(process, port, ca_file, cert, notify, log)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        process.stderr.close()
        notify.close()


@contextmanager
def pristine_sealroom_logger() -> Iterator[None]:
    """The ``sealroom`` logger as if nothing had configured it (an in-process ``serve`` in
    another test does), so stderr holds only what a command itself prints."""
    logger = logging.getLogger("sealroom")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    for handler in saved[0]:
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    try:
        yield
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in saved[0]:
            logger.addHandler(handler)
        logger.setLevel(saved[1])
        logger.propagate = saved[2]

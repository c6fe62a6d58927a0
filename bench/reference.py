"""Reference servers for the handshakes scenario, each a process of its own beside Sealroom:
a minimal asyncio TLS line server (``bench/refserver.py``) and Debian's Mosquitto broker
with TLS, both with the workspace's certificate, TLS 1.3 only, on 127.0.0.1.

Their CPU is read from /proc exactly as Sealroom's is (``process_cpu_seconds``).
Mosquitto is optional: ``sh scripts/ensure-mosquitto.sh`` installs it; without it
:func:`mosquitto` yields None and says so on stderr.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench.harness import Workspace, process_cpu_seconds, wait_for

REFSERVER = Path(__file__).with_name("refserver.py")


@dataclass
class Reference:
    """A running reference server; ``greeting`` is how a client knows the connection is up:
    ``line`` (the server writes a first line) or ``mqtt`` (CONNECT, then CONNACK)."""

    name: str
    process: subprocess.Popen[str]
    port: int
    greeting: str
    log: IO[str] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout:
            self.process.stdout.close()
        if self.log:
            self.log.close()


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def asyncio_server(space: Workspace) -> Iterator[Reference]:
    """``bench/refserver.py`` on the workspace's certificate; it prints its port."""
    log = (space.root / "asyncio.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            str(REFSERVER),
            "--cert",
            str(space.root / "certs" / "server.crt"),
            "--key",
            str(space.root / "certs" / "server.key"),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    ref = Reference("asyncio", process, 0, "line", log)
    try:
        assert process.stdout is not None
        first = process.stdout.readline().strip()  # the port, or EOF if it failed
        if not first.isdigit():
            raise RuntimeError(
                "asyncio reference server did not start:\n"
                + (space.root / "asyncio.log").read_text()[-2000:]
            )
        ref.port = int(first)
        yield ref
    finally:
        ref.stop()


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    beside = Path("/usr/sbin/mosquitto")  # sbin is not on every user's PATH
    return str(beside) if beside.exists() else None


@contextmanager
def mosquitto(space: Workspace) -> Iterator[Reference | None]:
    """A private Mosquitto broker with TLS on a free port, or None if it is not installed.

    Anonymous clients, no persistence, errors logged only (a clean MQTT DISCONNECT from
    the client leaves nothing to log). Run as root it would drop to the ``mosquitto``
    user, who cannot read the workspace's key: ``user root`` keeps it as it is started
    (the option does nothing for anyone else).
    """
    binary = mosquitto_binary()
    if binary is None:
        print(
            "  note: mosquitto is not installed (sh scripts/ensure-mosquitto.sh); "
            "the handshakes scenario skips it",
            file=sys.stderr,
        )
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = space.root / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                "per_listener_settings false",
                "allow_anonymous true",
                "persistence false",
                "log_dest stderr",
                "log_type error",
                "user root",
                f"listener {port} 127.0.0.1",
                f"certfile {space.root / 'certs' / 'server.crt'}",
                f"keyfile {space.root / 'certs' / 'server.key'}",
                "tls_version tlsv1.3",
                "set_tcp_nodelay true",  # as Sealroom and asyncio set on accepted sockets
                "",
            ]
        )
    )
    log_path = space.root / "mosquitto.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, text=True
    )
    ref = Reference("mosquitto", process, port, "mqtt", log)
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError("mosquitto exited:\n" + log_path.read_text()[-2000:])
            return _accepting(port)

        if not wait_for(up, 30, interval=0.05):
            raise RuntimeError("mosquitto did not start:\n" + log_path.read_text()[-2000:])
        yield ref
    finally:
        ref.stop()

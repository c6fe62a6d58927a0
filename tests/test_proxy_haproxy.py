"""A real HAProxy in front of the server, sending the PROXY protocol (v2 and v1).

The test starts Debian's ``haproxy`` in the foreground (``-db``) on a free port of
127.0.0.1, in TCP mode, forwarding to an in-process server with
``cluster.trusted_proxies: [127.0.0.1]`` and ``send-proxy-v2`` (or ``send-proxy``), and
stops it by its PID. Clients connect to HAProxy from 127.0.0.2 and 127.0.0.3; the server
must see those addresses, not HAProxy's, in its per-address limits, its logs and
``sealroom sessions``.

``make test`` installs haproxy when it is missing (scripts/ensure-test-deps.sh); without
it these tests fail, never skip.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from adversary import closed_by_server, raw_connection
from helpers import Client, Server, ServerFactory, wait_until
from sealroom.core.proxy import V2_SIGNATURE

BALANCER = "127.0.0.1"  # where HAProxy connects to the server from: trusted
CLIENTS = ("127.0.0.2", "127.0.0.3")


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/bin")
    assert found, "haproxy is not installed: run `make system-deps` (Debian package haproxy)"
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    """Whether a TCP socket listens on 127.0.0.1:``port`` (from /proc, without connecting:
    a probe through HAProxy would be one more connection to the server)."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
            return True
    return False


@dataclass
class Balancer:
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    clients: list[Client]


@pytest.fixture(params=["send-proxy-v2", "send-proxy"])
def send_proxy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def behind(make_server: ServerFactory) -> Server:
    """The server HAProxy forwards to: trusts 127.0.0.1, one connection per address."""
    server = make_server(
        cluster={"trusted_proxies": [BALANCER]}, limits={"max_connections_per_ip": 1}
    )
    for name in ("alice", "bob", "carol"):
        server.add_user(name)
    return server


@pytest.fixture
def opened() -> Iterator[list[Client]]:
    """Clients through HAProxy, closed when the test ends."""
    clients: list[Client] = []
    yield clients
    for client in clients:
        client.close()


@pytest.fixture
def haproxy(
    behind: Server, send_proxy: str, tmp_path: Path, opened: list[Client]
) -> Iterator[Balancer]:
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        f"""\
global
    maxconn 200

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend sealroom
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    server node1 127.0.0.1:{behind.port} {send_proxy}
"""
    )
    log = tmp_path / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [haproxy_binary(), "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: listening(port) or process.poll() is not None,
            timeout=10,
            what="haproxy listening",
        )
        assert process.poll() is None, f"haproxy exited: {log.read_text()}"
        yield Balancer(port, process, log, opened)
    finally:
        process.terminate()  # SIGTERM, to this PID only
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def through(balancer: Balancer, behind: Server, source: str) -> Client:
    """A TLS client of the server, connected to HAProxy from ``source``."""
    client = Client(balancer.port, behind.ca_file, source=source)
    balancer.clients.append(client)
    return client


def refused_through(balancer: Balancer, behind: Server, source: str) -> bool:
    try:
        through(balancer, behind, source)
    except (ssl.SSLError, EOFError, OSError):
        return True
    return False


def sessions(config: Path) -> list[dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-m", "sealroom", "sessions", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


def test_clients_behind_haproxy_are_limited_by_their_own_address(
    behind: Server, haproxy: Balancer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealroom")
    admission = behind.app.shared.admission
    alice = through(haproxy, behind, CLIENTS[0])
    alice.login("alice")
    # A second connection of 127.0.0.2, through the same HAProxy: over its cap of one.
    assert refused_through(haproxy, behind, CLIENTS[0])
    assert admission.rejected["per_address"] == 1
    # 127.0.0.3 through the same HAProxy is another client, and served.
    bob = through(haproxy, behind, CLIENTS[1])
    bob.login("bob")
    assert alice.request("hello from .2").startswith("OK say")
    assert bob.expect("MSG ").endswith("alice hello from .2")

    rows = sessions(behind.config)
    assert sorted((row["user"], row["address"]) for row in rows) == [
        ("alice", "127.0.0.2"),
        ("bob", "127.0.0.3"),
    ]
    alice.send("/quit")
    alice.closed()
    wait_until(lambda: "127.0.0.2 [alice]: connection closed" in caplog.text, what="log")
    assert f"{BALANCER} [" not in caplog.text  # no line names HAProxy's address
    # Alice's slot is free again: she may come back through HAProxy.
    wait_until(lambda: admission.total == 1, what="alice's slot released")
    carol = through(haproxy, behind, CLIENTS[0])
    carol.login("carol")
    assert haproxy.process.poll() is None


def test_a_proxy_header_sent_directly_from_an_untrusted_address_is_closed(
    behind: Server, haproxy: Balancer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealroom")
    body = socket.inet_aton("192.0.2.7") + socket.inet_aton("127.0.0.1") + b"\x9c\x40\x1d\x13"
    header = V2_SIGNATURE + b"\x21\x11\x00\x0c" + body
    with raw_connection(behind.port, source=CLIENTS[0]) as sock:
        sock.sendall(header + b"\x16\x03\x01\x00\x05hello")
        assert closed_by_server(sock, timeout=5)
    wait_until(lambda: "TLS handshake failed" in caplog.text, what="the log line")
    assert "192.0.2.7" not in caplog.text
    # HAProxy's own clients are still served.
    through(haproxy, behind, CLIENTS[1]).login("bob")


def test_the_trusted_address_without_a_header_is_closed(
    behind: Server, haproxy: Balancer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealroom")
    with pytest.raises((ssl.SSLError, EOFError, OSError)):
        Client(behind.port, behind.ca_file, source=BALANCER)
    wait_until(
        lambda: "refused: bad PROXY protocol header: not a PROXY protocol header" in caplog.text,
        what="the log line",
    )
    through(haproxy, behind, CLIENTS[1]).login("bob")

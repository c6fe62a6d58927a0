"""Spoofed client addresses through the PROXY protocol (``cluster.trusted_proxies``).

A PROXY header says who the client is, so whoever may send one chooses the address that
per-address limits, login buckets and logs see. Only an address in ``trusted_proxies`` may;
from any other the header is never read (it reaches TLS as garbage, and the connection
closes), and a trusted address must send one (a connection without it is closed, not served
as the balancer's own).

Here the test plays the load balancer itself, from 127.0.0.1, writing headers by hand;
tests/test_proxy_haproxy.py does the same through a real HAProxy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect
from websockets.typing import Origin

from adversary import closed_by_server, raw_connection
from helpers import Client, Server, ServerFactory, tls_connection, wait_until
from sealroom.core.proxy import V2_SIGNATURE
from sealroom.net.connection import Connection, State

BALANCER = "127.0.0.1"  # trusted: the test speaks as the load balancer from here
OUTSIDER = "127.0.0.2"  # not trusted


def v1(client: str, port: int = 40000) -> bytes:
    family = "TCP6" if ":" in client else "TCP4"
    server = "::1" if ":" in client else "127.0.0.1"
    return f"PROXY {family} {client} {server} {port} 7443\r\n".encode()


def v2(client: str, port: int = 40000, *, local: bool = False) -> bytes:
    if local:
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    packed = socket.inet_pton(socket.AF_INET, client)
    body = packed + socket.inet_pton(socket.AF_INET, "127.0.0.1") + struct.pack("!HH", port, 7443)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body


@pytest.fixture
def behind(make_server: ServerFactory) -> Server:
    """A server behind a load balancer at 127.0.0.1."""
    return make_server(cluster={"trusted_proxies": [BALANCER]})


def peers(server: Server) -> list[str]:
    return sorted(connection.peer for connection in server.app.shared.registry.snapshot())


def refused(server: Server, *, source: str, preface: bytes) -> bool:
    """Whether a TLS client sending ``preface`` first from ``source`` is closed unserved."""
    try:
        server.client(source=source, preface=preface, timeout=5)
    except (ssl.SSLError, EOFError, OSError):
        return True
    return False


# -- the header names the client ------------------------------------------------------------------


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_the_client_in_the_header_is_the_connections_address(
    behind: Server, header: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealroom")
    assert callable(header)
    behind.add_user("alice")
    alice = behind.client(source=BALANCER, preface=header("192.0.2.7"))
    assert alice.hello.startswith("HELLO ")
    alice.login("alice")
    assert alice.request("/ping") == "OK ping"
    assert peers(behind) == ["192.0.2.7"]
    alice.send("/quit")
    alice.closed()
    wait_until(lambda: "192.0.2.7 [alice]: connection closed" in caplog.text, what="log line")
    assert f"{BALANCER} [alice]" not in caplog.text


def test_an_ipv6_client_behind_an_ipv4_balancer(behind: Server) -> None:
    client = behind.client(source=BALANCER, preface=v1("2001:db8::7"))
    assert client.request("/ping") == "OK ping"
    assert peers(behind) == ["2001:db8::7"]


def test_a_local_header_is_the_balancers_own_connection(behind: Server) -> None:
    """LOCAL (a health check) names no client: the balancer's address stays, and counts."""
    client = behind.client(source=BALANCER, preface=v2("", local=True))
    assert client.request("/ping") == "OK ping"
    assert peers(behind) == [BALANCER]


def test_per_address_limits_count_clients_not_the_balancer(make_server: ServerFactory) -> None:
    server = make_server(
        cluster={"trusted_proxies": [BALANCER]}, limits={"max_connections_per_ip": 1}
    )
    admission = server.app.shared.admission
    first = server.client(source=BALANCER, preface=v2("192.0.2.7"))
    assert first.request("/ping") == "OK ping"
    # The same client again, through the same balancer: over its cap of one.
    assert refused(server, source=BALANCER, preface=v2("192.0.2.7", port=40001))
    assert admission.rejected["per_address"] == 1
    # Other clients through the same balancer: one each, all served.
    others = [server.client(source=BALANCER, preface=v1(f"192.0.2.{n}")) for n in (8, 9)]
    assert [client.request("/ping") for client in others] == ["OK ping", "OK ping"]
    assert peers(server) == ["192.0.2.7", "192.0.2.8", "192.0.2.9"]
    # Their slots come back when they close, the refused one's too.
    for client in [first, *others]:
        client.close()
    wait_until(lambda: admission.total == 0, what="every slot released")
    again = server.client(source=BALANCER, preface=v2("192.0.2.7"))
    assert again.request("/ping") == "OK ping"


def test_login_buckets_count_the_client_in_the_header(make_server: ServerFactory) -> None:
    server = make_server(
        cluster={"trusted_proxies": [BALANCER]},
        rate={"logins_per_ip": {"rate": 0.001, "burst": 1}},
    )
    server.add_user("alice")
    first = server.client(source=BALANCER, preface=v2("192.0.2.7"))
    first.login("alice")
    same = server.client(source=BALANCER, preface=v2("192.0.2.7", port=40001))
    assert same.request("/login alice x").startswith("ERR rate-limited")
    other = server.client(source=BALANCER, preface=v2("192.0.2.8"))
    other.login("alice")


# -- who may send one, and what must be sent -----------------------------------------------


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_a_header_from_an_untrusted_address_closes_the_connection(
    behind: Server, header: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealroom")
    assert callable(header)
    assert refused(behind, source=OUTSIDER, preface=header("192.0.2.7"))
    wait_until(lambda: behind.app.shared.admission.total == 0, what="slot released")
    failures = [r.message for r in caplog.records if "TLS handshake failed" in r.message]
    assert len(failures) == 1
    assert failures[0].startswith(f"{OUTSIDER} [-]:")
    assert "192.0.2.7" not in caplog.text
    # The same address without a header is an ordinary client.
    assert behind.client(source=OUTSIDER).request("/ping") == "OK ping"
    assert peers(behind) == [OUTSIDER]


def test_without_trusted_proxies_nobody_is_trusted(server: Server) -> None:
    assert refused(server, source=BALANCER, preface=v2("192.0.2.7"))
    assert server.client(source=BALANCER).request("/ping") == "OK ping"


@pytest.mark.parametrize(
    ("preface", "reason"),
    [
        (b"", "not a PROXY protocol header"),  # straight into TLS
        (b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\n", "v1 header does not end in CRLF"),
        (b"PROXY TCP4 192.0.2.777 127.0.0.1 1 2\r\n", "v1 header holds a bad IPv4 address"),
        (V2_SIGNATURE + b"\x21\x11\x02\x09", "v2 header longer than 536 bytes"),
        (b"\r\n\r\n\x00\r\nQUIT!", "not a PROXY protocol header"),
    ],
    ids=["missing", "lf", "address", "v2-too-long", "v2-signature"],
)
def test_a_trusted_address_without_a_good_header_is_closed(
    behind: Server, preface: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealroom")
    assert refused(behind, source=BALANCER, preface=preface)
    wait_until(lambda: behind.app.shared.admission.total == 0, what="slot released")
    lines = [r.message for r in caplog.records if r.name == "sealroom.server"]
    assert lines == [f"{BALANCER} [-]: refused: bad PROXY protocol header: {reason}"]


def test_a_header_cut_short_is_closed_when_the_handshake_time_is_up(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealroom")
    server = make_server(
        cluster={"trusted_proxies": [BALANCER]}, limits={"handshake_timeout_s": 0.5}
    )
    with raw_connection(server.port, source=BALANCER) as sock:
        sock.sendall(v1("192.0.2.7")[:20])
        started = time.monotonic()
        assert closed_by_server(sock, timeout=5)
        assert time.monotonic() - started < 2
    assert f"{BALANCER} [-]: PROXY protocol header timed out" in caplog.text
    wait_until(lambda: server.app.shared.admission.total == 0, what="slot released")


def test_a_balancer_closing_before_its_header_is_logged(
    behind: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealroom")
    with raw_connection(behind.port, source=BALANCER) as sock:
        sock.sendall(b"PROXY TCP")
        sock.shutdown(socket.SHUT_WR)
        assert closed_by_server(sock, timeout=5)
    wait_until(
        lambda: f"{BALANCER} [-]: closed before its PROXY protocol header" in caplog.text,
        what="log line",
    )


def test_a_bare_tcp_check_from_the_balancer_is_not_logged_at_info(
    behind: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """What a balancer's plain TCP health check does: connect, then close."""
    caplog.set_level(logging.INFO, logger="sealroom")
    with raw_connection(behind.port, source=BALANCER):
        pass
    wait_until(lambda: behind.app.shared.admission.total == 0, what="slot released")
    assert not [r for r in caplog.records if r.name == "sealroom.server"]


# -- reading the header: not a byte too many, never spinning ---------------------------------


def _buffered(connection: Connection) -> int | None:
    return None if connection.proxy_header is None else len(connection.proxy_header)


def test_a_header_dripped_byte_by_byte_then_tls(behind: Server) -> None:
    header = v1("192.0.2.7")
    sock = raw_connection(behind.port, source=BALANCER)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        wait_until(lambda: len(behind.app.shared.registry) == 1, what="adopted")
        (connection,) = behind.app.shared.registry.snapshot()
        for size in range(1, len(header)):
            sock.sendall(header[size - 1 : size])
            wait_until(lambda n=size: _buffered(connection) == n, what=f"{size} bytes buffered")
        sock.sendall(header[-1:])
        wait_until(lambda: peers(behind) == ["192.0.2.7"], what="the header read")
        ctx = ssl.create_default_context(cafile=str(behind.ca_file))
        tls = ctx.wrap_socket(sock, server_hostname="localhost")
    except BaseException:
        sock.close()
        raise
    with tls:
        assert tls.recv(1024).startswith(b"HELLO ")


def test_the_header_and_the_client_hello_in_one_segment(behind: Server) -> None:
    """Nothing after the header is taken from the socket: it is OpenSSL's ClientHello."""
    ctx = ssl.create_default_context(cafile=str(behind.ca_file))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with raw_connection(behind.port, source=BALANCER) as sock:
        preface = v2("192.0.2.7")
        for _ in range(10):  # a TLS handshake is a few flights
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            sock.sendall(preface + outgoing.read())  # one write: header and ClientHello
            preface = b""
            if done:
                break
            data = sock.recv(65536)
            assert data, "closed during the handshake"
            incoming.write(data)
        assert done
        hello = b""
        for _ in range(10):
            with contextlib.suppress(ssl.SSLWantReadError):
                hello += tls.read(1024)
            if b"\n" in hello:
                break
            incoming.write(sock.recv(65536))
        assert hello.startswith(b"HELLO ")
        assert peers(behind) == ["192.0.2.7"]


def _cpu_ticks(thread_id: int) -> int:
    fields = Path(f"/proc/self/task/{thread_id}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_a_partial_header_does_not_make_the_reactor_spin(behind: Server) -> None:
    thread_id = behind.app.reactor.thread.native_id
    assert thread_id is not None
    with raw_connection(behind.port, source=BALANCER) as sock:
        sock.sendall(v1("192.0.2.7")[:20])
        wait_until(
            lambda: any(c.state is State.PROXY for c in behind.app.shared.registry.snapshot()),
            what="the connection waiting for the rest of its header",
        )
        before = _cpu_ticks(thread_id)
        time.sleep(0.5)  # measuring idleness takes time passing
        spent = (_cpu_ticks(thread_id) - before) / os.sysconf("SC_CLK_TCK")
        assert spent < 0.1, f"the reactor used {spent:.2f}s of CPU in 0.5s"
        sock.sendall(v1("192.0.2.7")[20:])
        wait_until(lambda: peers(behind) == ["192.0.2.7"], what="the header completed")


def test_shutdown_closes_a_connection_waiting_for_its_header(behind: Server) -> None:
    with raw_connection(behind.port, source=BALANCER) as sock:
        sock.sendall(b"PROXY ")
        wait_until(lambda: len(behind.app.shared.registry) == 1, what="adopted")
        behind.app.stop(grace_s=1.0)
        assert closed_by_server(sock, timeout=5)


def test_a_client_is_not_a_balancer_by_claiming_it(behind: Server) -> None:
    """The client's own bytes after a header are TLS; a second header is garbage there."""
    preface = v2("192.0.2.7") + v2("192.0.2.8")
    assert refused(behind, source=BALANCER, preface=preface)


def test_clients_still_connect_directly_beside_a_balancer(behind: Server) -> None:
    direct = Client(behind.port, behind.ca_file, source=OUTSIDER)
    try:
        assert direct.request("/ping") == "OK ping"
    finally:
        direct.close()


def test_the_web_door_reads_the_header_too(make_server: ServerFactory) -> None:
    server = make_server(cluster={"trusted_proxies": [BALANCER]}, web={"listen": "127.0.0.1:0"})
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    sock = raw_connection(server.web_port, source=BALANCER)
    sock.sendall(v2("192.0.2.7"))
    with connect(
        f"wss://127.0.0.1:{server.web_port}/ws",
        sock=sock,
        ssl=ctx,
        server_hostname="localhost",
        origin=Origin(f"https://localhost:{server.web_port}"),
        proxy=None,
        open_timeout=5,
        close_timeout=2,
    ) as ws:
        hello = ws.recv(timeout=5)
        assert isinstance(hello, str)
        assert hello.startswith("HELLO ")
        assert peers(server) == ["192.0.2.7"]
    # And a header from an untrusted address fails there as on the TLS port.
    assert not refused_web(server, source=OUTSIDER, preface=b"")
    assert refused_web(server, source=OUTSIDER, preface=v2("192.0.2.7"))


def refused_web(server: Server, *, source: str, preface: bytes) -> bool:
    """Whether a TLS handshake with the web door after ``preface`` from ``source`` fails."""
    try:
        with tls_connection(server.web_port, server.ca_file, source=source, preface=preface):
            return False
    except (ssl.SSLError, OSError):
        return True

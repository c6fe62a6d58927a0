"""Slowloris: clients that hold sockets and threads by going slowly, not by going fast.

A stalled or dripped TLS handshake ends at ``handshake_timeout_s`` (an absolute deadline,
not reset by each byte); a line dripped without its LF ends at the login or idle timeout
(bytes are not activity, complete lines are); and none of them delays anybody else.
"""

from __future__ import annotations

import socket
import threading
import time

from adversary import (
    ATTACKER_ADDRESSES,
    closed_by_server,
    connection_threads,
    many,
    raw_connection,
    round_trip,
)
from helpers import ServerFactory, wait_until


def test_stalled_handshake_blocks_nobody(make_server: ServerFactory) -> None:
    server = make_server(limits={"handshake_timeout_s": 1})
    silent = socket.create_connection(("127.0.0.1", server.port))  # never sends a ClientHello
    try:
        started = time.monotonic()
        alice = server.user("alice")
        assert alice.request("/ping") == "OK ping"
        assert time.monotonic() - started < 1  # not queued behind the silent client
        silent.settimeout(5)
        assert silent.recv(1) == b""  # closed once its handshake deadline passed
    finally:
        silent.close()


def test_many_stalled_handshakes_from_other_addresses(make_server: ServerFactory) -> None:
    server = make_server(
        limits={"handshake_timeout_s": 1.5, "max_connections_per_ip": 20},
        rate={"connections_per_ip": {"rate": 100, "burst": 100}},
    )
    threads_before = connection_threads()
    alice = server.user("alice")
    with many([]) as stalled:
        for source in ATTACKER_ADDRESSES:
            stalled.extend(raw_connection(server.port, source) for _ in range(20))
        wait_until(lambda: server.app.shared.admission.total >= 41, what="stalled ones admitted")
        # Each holds a thread, yet a ping and a new login from 127.0.0.1 go straight through.
        assert round_trip(alice, "during") < 1.0
        started = time.monotonic()
        server.user("bob")
        assert time.monotonic() - started < 2.0
        # The deadline ends them all, at about the same time.
        for sock in stalled:
            assert closed_by_server(sock, timeout=5.0)
    wait_until(lambda: server.app.shared.admission.total == 2, what="stalled slots released")
    wait_until(lambda: connection_threads() <= threads_before + 2, what="their threads ended")
    assert server.app.shared.handshake_failures == 0  # timed out, not failed: counted apart


def test_dripped_client_hello_ends_at_the_handshake_deadline(make_server: ServerFactory) -> None:
    from adversary import client_hello

    server = make_server(limits={"handshake_timeout_s": 1})
    hello = client_hello(server.ca_file)
    stop = threading.Event()
    with many([raw_connection(server.port, ATTACKER_ADDRESSES[0])]) as (dripper,):

        def drip() -> None:
            for i in range(len(hello)):  # about 250 ms per byte: far slower than the deadline
                if stop.wait(0.25):
                    return
                try:
                    dripper.send(hello[i : i + 1])
                except OSError:
                    return

        thread = threading.Thread(target=drip)
        thread.start()
        try:
            started = time.monotonic()
            assert closed_by_server(dripper, timeout=6.0)
            assert time.monotonic() - started < 4.0  # each byte did not extend the deadline
        finally:
            stop.set()
            thread.join()


def test_line_dripped_before_login_ends_at_login_timeout(make_server: ServerFactory) -> None:
    server = make_server(limits={"login_timeout_s": 1})
    client = server.client()
    started = time.monotonic()
    lines: list[str] = []
    while time.monotonic() - started < 6:
        try:
            client.sock.sendall(b"x")  # a line that never ends
        except OSError:
            break
        try:
            lines.append(client.line(timeout=0.1))
        except TimeoutError:
            continue
        except (EOFError, ConnectionError):
            break
        if lines[-1].startswith("BYE"):
            break
    assert lines[-1:] == ["BYE login-timeout"]
    assert time.monotonic() - started < 4.0


def test_line_dripped_after_login_ends_at_idle_timeout(make_server: ServerFactory) -> None:
    server = make_server(limits={"idle_timeout_s": 1})
    client = server.user("alice")
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < 6 and not last.startswith("BYE"):
        try:
            client.sock.sendall(b"y")
            last = client.line(timeout=0.1)
        except TimeoutError:
            continue
        except (EOFError, OSError):
            break
    assert last == "BYE idle-timeout"
    assert time.monotonic() - started < 4.0


def test_dripping_whole_lines_is_served_and_costs_others_nothing(
    make_server: ServerFactory,
) -> None:
    """A very slow but honest client (complete lines, byte by byte) is served normally."""
    server = make_server()
    slow = server.user("slow")
    fast = server.user("fast")
    for byte in b"/ping drip\n":
        slow.sock.sendall(bytes([byte]))
        assert round_trip(fast, "meanwhile") < 1.0
    assert slow.expect("JOIN #lobby fast")
    assert slow.line() == "OK ping drip"

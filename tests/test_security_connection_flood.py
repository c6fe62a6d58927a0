"""Connection floods, from one address and from several (127.0.0.2, 127.0.0.3).

Admission runs on the accepting thread before a connection thread exists: a per-address
cap, a per-address token bucket for new connections and a total cap. A refused connection
costs one ``accept`` and is closed at once; honest clients from other addresses keep being
served, and every slot is released when the flood ends.
"""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from adversary import (
    ATTACKER_ADDRESSES,
    closed_by_server,
    connection_threads,
    many,
    raw_connection,
    round_trip,
)
from helpers import Server, ServerFactory, wait_until


def test_connection_caps(make_server: ServerFactory) -> None:
    server = make_server(limits={"max_connections_per_ip": 2})
    first, second = server.client(), server.client()
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, TimeoutError)):
        server.client(timeout=2)
    first.close()
    deadline = time.monotonic() + 5
    while True:  # the slot is released once the server notices the close
        try:
            third = server.client(timeout=2)
            break
        except (ssl.SSLError, ConnectionError, EOFError):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert third.request("/ping") == "OK ping"
    second.close()


def test_connection_rate_per_address(make_server: ServerFactory) -> None:
    server = make_server(rate={"connections_per_ip": {"rate": 0.01, "burst": 3}})
    for _ in range(3):
        server.client().close()
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, TimeoutError)):
        server.client(timeout=2)


def _flood(server: Server, source: str, count: int) -> list[socket.socket]:
    """Open ``count`` connections as fast as possible and hold them (no handshake)."""
    opened = []
    for _ in range(count):
        try:
            opened.append(raw_connection(server.port, source))
        except OSError:  # a full backlog may refuse: also fine
            continue
    return opened


def test_flood_from_one_address_is_capped_and_others_are_served(
    make_server: ServerFactory,
) -> None:
    server = make_server(
        limits={"max_connections_per_ip": 20, "handshake_timeout_s": 3},
        rate={"connections_per_ip": {"rate": 5, "burst": 30}},
    )
    admission = server.app.shared.admission
    threads_before = connection_threads()
    server.add_user("honest")
    honest = server.client(source=ATTACKER_ADDRESSES[1])  # a neighbour on another address
    honest.login("honest")
    with many(_flood(server, ATTACKER_ADDRESSES[0], 300)) as flood:
        wait_until(
            lambda: admission.total + sum(admission.rejected.values()) >= len(flood) + 1,
            what="every flood connection accepted or refused",
        )
        assert admission.total == 21  # 20 from the flooding address plus the honest one
        assert admission.rejected["per_address"] + admission.rejected["rate"] == len(flood) - 20
        assert connection_threads() <= threads_before + 21
        assert round_trip(honest, "during-flood") < 1.0
        # A refused connection is closed straight away, not left to a timeout.
        refused = flood[20:40]
        assert all(closed_by_server(sock, timeout=2.0) for sock in refused)
    wait_until(lambda: admission.total == 1, what="flood slots released")
    wait_until(lambda: connection_threads() <= threads_before + 1, what="flood threads ended")
    honest.close()


def test_flood_from_several_addresses_meets_the_total_cap(make_server: ServerFactory) -> None:
    server = make_server(
        limits={"max_connections": 40, "max_connections_per_ip": 20, "handshake_timeout_s": 3},
        rate={"connections_per_ip": {"rate": 5, "burst": 50}},
    )
    admission = server.app.shared.admission
    alice = server.user("alice")  # already in: keeps being served
    with many([]) as flood:
        for source in ("127.0.0.1", *ATTACKER_ADDRESSES):
            flood.extend(_flood(server, source, 30))
        wait_until(
            lambda: admission.total + sum(admission.rejected.values()) >= len(flood) + 1,
            what="every flood connection accepted or refused",
        )
        assert admission.total == 40
        assert admission.rejected["max_connections"] > 0
        assert admission.rejected["per_address"] > 0
        assert round_trip(alice, "during-flood") < 1.0
        with pytest.raises((ssl.SSLError, ConnectionError, EOFError, TimeoutError)):
            server.client(timeout=2)  # the server is full: refused, not queued
    wait_until(lambda: admission.total == 1, what="flood slots released")
    assert server.user("bob").request("/ping") == "OK ping"  # open again

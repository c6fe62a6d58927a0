"""Slowloris on the metrics endpoint: scrapers that hold threads by going slowly.

The endpoint serves each connection on a thread of its own (CPython's socketserver). With no
cap and a socket timeout that each byte renews, one byte every 2 s held a thread per
connection for as long as the attacker liked: the review held 100. Now a few scrapes run at
once (more connections are closed at once), and a request must arrive whole within an
absolute deadline, which dripping bytes does not extend.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from adversary import connection_threads
from helpers import http_get, wait_until
from sealroom.ops.metrics import Family, MetricsServer

SLOW_CONNECTIONS = 100
DRIP_EVERY_S = 2.0
ATTACK_S = 7.0  # longer than any request deadline we accept, and three drips
THREAD_BOUND = 8  # connection threads the endpoint may hold at once, with room to spare
REQUEST_DEADLINE_BOUND_S = 5.0  # a request that has not arrived by then is cut


def collect() -> list[Family]:
    return [Family.single("sealroom_up", "gauge", "1 while serving", 1)]


@pytest.fixture
def endpoint() -> Iterator[MetricsServer]:
    server = MetricsServer(("127.0.0.1", 0), collect)
    thread = threading.Thread(target=server.serve_forever, args=(0.5,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def scrape(server: MetricsServer) -> tuple[int, str]:
    status, _, body = http_get(server.server_address[1], "/metrics")
    return status, body


def is_closed(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (it sends nothing to a request never finished)."""
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset
    finally:
        sock.setblocking(True)


def test_slow_scrapers_hold_no_threads_and_scrapes_go_on(endpoint: MetricsServer) -> None:
    threads_before = connection_threads()
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    slow: list[socket.socket] = []
    peak = 0
    closed_at: dict[int, float] = {}
    try:
        started = time.monotonic()
        for _ in range(SLOW_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", endpoint.server_address[1]))
            slow.append(sock)
            with contextlib.suppress(OSError):
                sock.send(request[:1])
            # Paced, so that the listen backlog (5) is not what keeps them out.
            time.sleep(0.01)
        sent = 1
        next_drip = started + DRIP_EVERY_S
        while time.monotonic() - started < ATTACK_S:
            if time.monotonic() >= next_drip:
                for sock in slow:  # one more byte each, never the request's end
                    with contextlib.suppress(OSError):
                        sock.send(request[sent : sent + 1])
                sent += 1
                next_drip += DRIP_EVERY_S
            peak = max(peak, connection_threads() - threads_before)
            for number, sock in enumerate(slow):
                if number not in closed_at and is_closed(sock):
                    closed_at[number] = time.monotonic() - started
            time.sleep(0.05)
        assert peak <= THREAD_BOUND, f"{peak} connection threads held by slow scrapers"
        assert len(closed_at) == SLOW_CONNECTIONS, (
            f"{SLOW_CONNECTIONS - len(closed_at)} slow connections still open after {ATTACK_S}s"
        )
        latest = max(closed_at.values())
        print(f"peak {peak} connection threads; the last slow connection cut after {latest:.2f}s")
        assert latest <= REQUEST_DEADLINE_BOUND_S + 1, f"the last was cut after {latest:.1f}s"
    finally:
        for sock in slow:
            sock.close()
    wait_until(lambda: connection_threads() <= threads_before, what="their threads ended")
    status, body = scrape(endpoint)
    assert status == 200
    assert "sealroom_up 1" in body


def test_an_endless_request_head_is_cut_at_once(endpoint: MetricsServer) -> None:
    """A request head is bounded while it arrives: 64 KiB of headers end the connection
    right away, without waiting for any timeout."""
    with socket.create_connection(("127.0.0.1", endpoint.server_address[1])) as sock:
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the server may close while we still send
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            for _ in range(64):
                sock.sendall(b"X-Filler: " + b"x" * 1000 + b"\r\n")
        sock.settimeout(REQUEST_DEADLINE_BOUND_S + 1)
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(4096):
                pass  # an error reply or nothing, then the close
        assert time.monotonic() - started < 1.0
    status, _ = scrape(endpoint)
    assert status == 200

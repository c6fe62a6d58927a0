"""Threat: a long reply drops its reader, so members make a room's history unreadable.

`/history` at `max_query` over maximal lines is bigger than the outbound bound: it must be
written as the client reads it, whole and with no event between its lines, while a client
that does not read is still cut off as a slow consumer.
"""

from __future__ import annotations

from helpers import ServerFactory, tls_connection, wait_until

BIG = "x" * 4000


def test_long_history_reaches_a_reading_client(make_server: ServerFactory) -> None:
    server = make_server(
        limits={"outbound_queue_bytes": 262144},
        rate={"messages": {"rate": 100_000, "burst": 100_000}},
        history={"max_query": 300},
    )
    poster = server.user("poster")
    assert poster.request("/join #big").startswith("OK join")
    for n in range(260):
        assert poster.request(f"{n} {BIG}").startswith("OK say #big")
    reader = server.user("reader")
    assert reader.request("/join #big").startswith("OK join")
    reader.send("/history #big 260")
    poster.send(f"during the reply {BIG}")  # an event that must not split the reply
    lines: list[str] = []
    while "OK history #big 260" not in lines or not any(m.startswith("MSG") for m in lines):
        lines.append(reader.line(timeout=10))
    hist = [line for line in lines if line.startswith("HIST ")]
    assert len(hist) == 260
    first = lines.index(hist[0])
    # The event came before or after the reply, never between its data lines and its end.
    assert lines[first : first + 261] == [*hist, "OK history #big 260"]


def test_a_client_that_does_not_read_is_still_cut(make_server: ServerFactory) -> None:
    server = make_server(
        limits={"outbound_queue_bytes": 65536},
        rate={"messages": {"rate": 100_000, "burst": 100_000}},
    )
    poster = server.user("poster")
    assert poster.request("/join #big").startswith("OK join")
    for n in range(40):
        assert poster.request(f"{n} {BIG}").startswith("OK say #big")
    server.add_user("stalled")
    sock = tls_connection(server.port, server.ca_file, rcvbuf=4096)
    sock.sendall(b"/login stalled correct horse battery\n/join #big\n/history #big 40\n")
    wait_until(lambda: "stalled" in server.app.hub.who("#big"), what="stalled joined")
    for n in range(2000):  # it never reads: its reply stalls, and what others say piles up
        poster.request(f"more {n} {BIG}")
        if server.app.counters.closed.get("slow-consumer"):
            break
    # Cut as a slow consumer (after the close grace: BYE cannot be written either).
    wait_until(lambda: "stalled" not in server.app.hub.who("#big"), what="stalled dropped")
    assert server.app.counters.closed.get("slow-consumer") == 1
    sock.close()

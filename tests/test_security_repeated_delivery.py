"""Repeated delivery: after a server crash, stored private messages may come again.

SPEC section 1: stored private messages are delivered at login as ``HIST`` lines, each exactly
once, except that a crash in the middle of that delivery may repeat some, with their same
IDs; a client keeps the IDs it has seen. The review's ``kill -9`` during delivery re-sent
100 messages in 3 of 4 rounds. The client library hands each stored message out once:
a repeated ID is dropped, across reconnects too, while ``history()`` still answers in full.
Against a scripted server, which can crash on cue.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sealroom.client import Bye, History, Reconnected
from test_client import FAST, Peer, ScriptedServer, client_for


def stored(message_id: int, text: str = "") -> str:
    return (
        f"HIST alice {message_id} 2024-05-01T10:00:0{message_id % 10}.000Z bob {text or message_id}"
    )


def as_history(message_id: int) -> History:
    when = datetime(2024, 5, 1, 10, 0, message_id % 10, tzinfo=UTC)
    return History("alice", message_id, when, "bob", str(message_id))


@pytest.fixture
def crashing_server(tls_files: dict[str, Path]) -> Iterator[ScriptedServer]:
    def script(peer: Peer, number: int) -> None:
        if number == 0:
            peer.expect("/login alice pw")
            peer.send("OK login alice #lobby", stored(7), stored(8), stored(8))
            peer.expect("/token")
            peer.send("ERR bad-command unknown command")
            return  # a crash: the connection ends without BYE, delivery not yet marked
        peer.expect("/login alice pw")
        # Delivery again, from the start: 7 and 8 are repeats, 9 is new.
        peer.send("OK login alice #lobby", stored(7), stored(8), stored(9))
        peer.expect("/join #lobby")
        peer.send("OK join #lobby")
        peer.expect("/history bob 5")
        peer.send(stored(7), stored(9), "OK history bob 2")
        peer.expect("/quit")
        peer.send("OK quit", "BYE quit")

    server = ScriptedServer(tls_files, script)
    yield server
    server.close()


def test_a_repeated_stored_message_is_handed_out_once(
    crashing_server: ScriptedServer, tls_files: dict[str, Path]
) -> None:
    with client_for(crashing_server, tls_files, reconnect=FAST) as client:
        client.login("alice", "pw")
        events = list(client.events(timeout=2))
        assert [event.id for event in events if isinstance(event, History)] == [7, 8, 9]
        assert [event for event in events if not isinstance(event, History)] == [
            Bye("connection-lost"),
            Reconnected(("#lobby",)),
        ]
        assert as_history(9) in events
        # An explicit query is an answer, not a delivery: it is never filtered.
        assert [entry.id for entry in client.history("bob", 5)] == [7, 9]
        assert client.repeated_events == 3
        client.quit()


def test_seen_ids_are_bounded() -> None:
    from sealroom.client.blocking import SeenIds

    seen = SeenIds(3)
    assert [seen.first_time(number) for number in (1, 2, 1, 3, 4)] == [
        True,
        True,
        False,
        True,
        True,
    ]
    assert len(seen) == 3  # 1 was forgotten, the oldest
    assert seen.first_time(1)
    assert not seen.first_time(4)
    with pytest.raises(ValueError, match="at least 1"):
        SeenIds(0)

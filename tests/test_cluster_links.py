"""The bus's two Redis links on the reactor. What the reader takes from Redis: bytes from an
engine are hostile, so an XREAD reply is bounded and checked for its shape before any entry
is applied (the entries' fields are checked field by field afterwards: test_cluster.py's
malformed bus entries). What the publisher does with its script calls: one in flight, the
next at its answer, a refusal handed back, a lost call said at once. Their own paths run
here over a socket pair playing Redis; with real Redis, every cluster test."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from sealroom.cluster import link as link_module
from sealroom.cluster.caller import ScriptCaller
from sealroom.cluster.link import RedisLink
from sealroom.cluster.plane import RedisBus
from sealroom.cluster.reader import BusReader, Entry, _entries
from sealroom.cluster.requests import Op, Waiter
from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.state.hub import Hub, HubLimits
from sealroom.store.sqlite import SqliteStore


def test_a_reply_becomes_entries_in_order() -> None:
    reply = [[b"sealroom:bus", [[b"1-0", [b"k", b"say", b"room", b"#a"]], [b"2-0", []]]]]
    assert _entries(reply) == [("1-0", {b"k": b"say", b"room": b"#a"}), ("2-0", {})]


def test_a_read_that_timed_out_brings_nothing() -> None:
    assert _entries(None) == []


def test_resp3s_map_is_read_alike() -> None:
    assert _entries({b"sealroom:bus": [[b"1-0", [b"k", b"v"]]]}) == [("1-0", {b"k": b"v"})]


@pytest.mark.parametrize(
    "reply",
    [
        [],
        [[b"sealroom:bus", [[b"1-0", [b"k", b"v"]]]], [b"other", []]],  # two streams
        [[b"sealroom:bus"]],
        [[b"sealroom:bus", b"not a list"]],
        [[b"sealroom:bus", [[b"1-0"]]]],  # an entry without fields
        [[b"sealroom:bus", [[1, [b"k", b"v"]]]]],  # an id that is not bytes
        [[b"sealroom:bus", [[b"1-0", [b"k"]]]]],  # an odd field list
        [[b"sealroom:bus", [[b"1-0", [b"k", 7]]]]],  # a value that is not bytes
        [[b"sealroom:bus", [[b"1-0", [b"k", [b"nested"]]]]]],
        b"OK",
        42,
    ],
)
def test_any_other_shape_is_refused_whole(reply: object) -> None:
    assert _entries(reply) is None


class _Connection:
    """What the reader takes from redis-py once connected: the socket it reads, a command
    packer and a close. The socket is a real one (a socket pair); the test plays Redis."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @staticmethod
    def pack_command(*args: object) -> list[bytes]:
        parts = [str(arg).encode() for arg in args]
        return [f"*{len(parts)}\r\n".encode(), *(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)]

    def disconnect(self) -> None:
        self._sock.close()


class _Played:
    """A Redis link over a socket pair, the test playing Redis: handed a connection as its
    connecting thread would, its turn taken; the reactor's hands given to it recorded."""

    def __init__(self, link: RedisLink, prepared: object) -> None:
        ours, self.redis = socket.socketpair()
        ours.setblocking(False)
        self.link = link
        self.watched: list[int] = []
        self.writable: list[bool] = []
        link.attach(
            lambda fd, *_: self.watched.append(fd),
            self.watched.remove,
            list,
            lambda fd, wanted: self.writable.append(wanted),
        )
        link._handed.append((_Connection(ours), prepared))
        link.on_turn()  # installs it, and asks or calls

    def close(self) -> None:
        self.link._close()
        self.redis.close()

    def asked(self) -> bytes:
        return self.redis.recv(1 << 20)

    def answer(self, data: bytes) -> None:
        self.redis.sendall(data)
        time.sleep(0.05)
        self.link.on_readable()


class _Reader(_Played):
    """A BusReader, what it delivers recorded."""

    def __init__(self) -> None:
        self.delivered: list[tuple[int, list[Entry]]] = []
        self.reader = BusReader(
            cast(Any, None),
            "sealroom:bus",
            count=10,
            block_ms=500,
            position=lambda: (7, "1-0"),
            deliver=lambda generation, entries: self.delivered.append((generation, entries)),
            reading=lambda: True,
        )
        super().__init__(self.reader, None)


@pytest.fixture
def bus() -> Iterator[_Reader]:
    made = _Reader()
    yield made
    made.close()


def test_a_read_is_asked_from_the_position_and_its_entries_delivered(bus: _Reader) -> None:
    assert bus.asked().endswith(b"$12\r\nsealroom:bus\r\n$3\r\n1-0\r\n")
    bus.answer(
        b"*1\r\n*2\r\n$12\r\nsealroom:bus\r\n*1\r\n*2\r\n$3\r\n2-0\r\n*2\r\n$1\r\nk\r\n$3\r\nsay\r\n"
    )
    assert bus.delivered == [(7, [("2-0", {b"k": b"say"})])]
    assert bus.asked().startswith(b"*8\r\n$5\r\nXREAD")  # the next read, at once
    assert bus.watched


@pytest.mark.parametrize(
    "reply",
    [
        b"-ERR wrong\r\n",  # an error
        b"*1\r\n$3\r\nbus\r\n",  # another shape
        b"?garbage\r\n",  # not Redis's protocol
    ],
)
def test_a_bad_reply_drops_the_connection_and_delivers_nothing(bus: _Reader, reply: bytes) -> None:
    bus.asked()
    bus.answer(reply)
    assert bus.delivered == []
    assert bus.watched == []  # unwatched before it was closed
    assert bus.reader._need.is_set()  # the connecting thread is asked for a new one


def test_a_reply_beyond_the_bound_is_not_buffered(
    bus: _Reader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link_module, "MAX_REPLY_BYTES", 4096)
    bus.asked()
    bus.answer(b"$100000\r\n" + b"x" * 8192)  # a bulk string that would not end soon
    assert bus.delivered == []
    assert bus.watched == []
    assert bus.reader._need.is_set()


# -- the publisher: the bus script called from the reactor ------------------------------------


class _Caller(_Played):
    """A ScriptCaller, what it tells the bus recorded."""

    def __init__(self, timeout_s: float = 1.0) -> None:
        self.calls: list[list[Any]] = [["node", 1, "say", 1]]  # what next_call gives, in turn
        self.told: list[tuple[str, Any]] = []
        self.caller = ScriptCaller(
            cast(Any, None),
            "return 1",
            timeout_s=timeout_s,
            next_call=lambda: self.calls.pop(0) if self.calls else None,
            answered=lambda reply: self.told.append(("answered", reply)),
            refused=lambda text: self.told.append(("refused", text)),
            lost=lambda: self.told.append(("lost", None)),
        )
        super().__init__(self.caller, b"abc123")  # the script's digest, as SCRIPT LOAD gives it


@pytest.fixture
def caller() -> Iterator[_Caller]:
    made = _Caller()
    yield made
    made.close()


def test_a_call_goes_out_with_the_loaded_script_and_the_next_at_its_answer(
    caller: _Caller,
) -> None:
    sent = caller.asked()
    assert sent.startswith(b"*7\r\n$7\r\nEVALSHA\r\n$6\r\nabc123\r\n$1\r\n0\r\n$4\r\nnode\r\n")
    caller.calls.append(["node", 1, "say", 2])
    caller.caller.on_turn()  # one call in flight: the next waits for its answer
    caller.redis.setblocking(False)
    with pytest.raises(BlockingIOError):
        caller.redis.recv(100)
    caller.redis.setblocking(True)
    caller.answer(b"*1\r\n:41\r\n")
    assert caller.told == [("answered", [41])]
    assert caller.asked().endswith(b"$3\r\nsay\r\n$1\r\n2\r\n")  # sent in the same turn


def test_an_error_reply_is_the_scripts_refusal_and_the_connection_stays(caller: _Caller) -> None:
    caller.asked()
    caller.answer(b"-FENCED this node is not registered\r\n")
    assert caller.told == [("refused", "FENCED this node is not registered")]
    assert caller.watched


@pytest.mark.parametrize(
    "reply",
    [
        b"-NOSCRIPT No matching script\r\n",  # flushed: the connecting thread loads it again
        b"?garbage\r\n",  # not Redis's protocol
    ],
)
def test_a_lost_script_or_a_broken_reply_loses_the_call_and_connects_again(
    caller: _Caller, reply: bytes
) -> None:
    caller.asked()
    caller.answer(reply)
    assert caller.told == [("lost", None)]
    assert caller.watched == []
    assert caller.caller._need.is_set()
    caller.caller.on_turn()  # down: what waits meanwhile hears so at once, every turn
    assert caller.told == [("lost", None), ("lost", None)]


def test_an_answer_to_no_call_drops_the_connection(caller: _Caller) -> None:
    caller.asked()
    caller.answer(b"*1\r\n:1\r\n*1\r\n:2\r\n")  # one more than asked
    assert caller.told == [("answered", [1])]
    assert caller.watched == []


def test_a_call_left_unanswered_is_lost_at_the_timeout() -> None:
    made = _Caller(timeout_s=0.05)
    try:
        made.asked()
        made.caller.on_turn()
        assert made.told == []
        time.sleep(0.1)
        made.caller.on_turn()
        assert made.told == [("lost", None)]
        assert made.watched == []
    finally:
        made.close()


def test_a_call_larger_than_the_socket_takes_is_sent_as_it_drains(caller: _Caller) -> None:
    caller.asked()
    caller.answer(b"*1\r\n:1\r\n")
    big = "x" * 4_000_000
    caller.calls.append(["node", 1, "say", big])
    caller.caller.on_turn()
    assert caller.writable == [True]  # the rest waits for the socket
    received = b""
    deadline = time.monotonic() + 10
    while not received.endswith(big[-64:].encode() + b"\r\n"):
        assert time.monotonic() < deadline
        received += caller.redis.recv(1 << 20)
        caller.caller.on_writable()
    assert caller.writable == [True, False]
    caller.answer(b"*1\r\n:2\r\n")
    assert caller.told[-1] == ("answered", [2])


def test_a_script_answer_that_is_not_one_integer_per_request_answers_busy(
    tmp_path: Path,
) -> None:
    # Bytes from Redis are hostile: an answer of the wrong length or kind is not matched to
    # the batch by position (a wrong id acknowledged, a join applied twice); every sender
    # hears server-busy instead. (The bus is made, never started: nothing connects.)
    with SqliteStore(tmp_path / "sealroom.db") as store:
        bus = RedisBus(
            "redis://127.0.0.1:1",
            "one",
            5.0,
            Hub(HubLimits(100, 10, 100, True, "#lobby"), replica=True),
            store,
            keep_per_room=10,
            keep_per_recipient=10,
        )
        for answer in ([1], [1, b"2"], b"OK", [1, 2, 3]):
            waiters = [Waiter(), Waiter()]
            bus._in_flight = [Op("id", n, [], waiter) for n, waiter in enumerate(waiters)]
            bus._answered(answer)
            for waiter in waiters:
                assert waiter.done.is_set()
                assert isinstance(waiter.error, ProtocolError)
                assert waiter.error.code is ErrorCode.SERVER_BUSY
        waiters = [Waiter(), Waiter()]
        bus._in_flight = [Op("id", n, [], waiter) for n, waiter in enumerate(waiters)]
        bus._answered([41, 42])
        assert [waiter.result for waiter in waiters] == [41, 42]

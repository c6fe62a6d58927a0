"""The client's sans-I/O protocol (sealroom.client.protocol) with bytes only: no socket,
no clock, no thread. What it decides -- which lines are a reply's and which are events --
is checked here line by line; tests/test_client.py checks the socket shell around it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealroom import PROTOCOL_VERSION
from sealroom.client.events import (
    Banned,
    Bye,
    Destroyed,
    ErrorReply,
    Hello,
    History,
    Info,
    Invited,
    Joined,
    Message,
    ModeChanged,
    PrivateMessage,
    Reply,
    RoomListing,
    ServerLine,
    TopicChanged,
    Wall,
    parse_line,
    parse_room,
)
from sealroom.client.protocol import (
    BadGreeting,
    ClientProtocol,
    LineTooLong,
    RemoteProtocolError,
    State,
)
from sealroom.core.errors import ErrorCode

HELLO = f"HELLO sealroom {PROTOCOL_VERSION} localhost welcome\n".encode()


def drain(protocol: ClientProtocol) -> list[ServerLine]:
    items: list[ServerLine] = []
    while (item := protocol.next_event()) is not None:
        items.append(item)
    return items


def greeted(**kwargs: int) -> ClientProtocol:
    protocol = ClientProtocol(**kwargs)
    protocol.receive_data(HELLO)
    assert drain(protocol) == [Hello(str(PROTOCOL_VERSION), "localhost")]
    assert protocol.state is State.OPEN
    return protocol


def in_one_chunk(protocol: ClientProtocol, data: bytes) -> list[ServerLine]:
    protocol.receive_data(data)
    return drain(protocol)


def byte_by_byte(protocol: ClientProtocol, data: bytes) -> list[ServerLine]:
    items: list[ServerLine] = []
    for index in range(len(data)):
        protocol.receive_data(data[index : index + 1])
        items.extend(drain(protocol))
    return items


Feeder = Callable[[ClientProtocol, bytes], list[ServerLine]]
FEEDERS: list[Feeder] = [in_one_chunk, byte_by_byte]


# -- the greeting ---------------------------------------------------------------------------------


def test_nothing_but_a_greeting_opens_the_connection() -> None:
    protocol = ClientProtocol()
    assert protocol.next_event() is None
    protocol.receive_data(b"HELLO sealroom 1 name")  # no line end yet
    assert protocol.next_event() is None
    assert protocol.state is State.GREETING

    protocol = ClientProtocol()
    protocol.receive_data(b"SSH-2.0-OpenSSH_9.6\r\n")
    with pytest.raises(BadGreeting) as refused:
        protocol.next_event()
    assert refused.value.version is None
    assert protocol.state is State.CLOSED

    protocol = ClientProtocol()
    protocol.receive_data(b"HELLO sealroom 99 future hi\n")
    with pytest.raises(BadGreeting) as refused:
        protocol.next_event()
    assert refused.value.version == "99"


# -- replies and their data lines ----------------------------------------------------------------


@pytest.mark.parametrize("feed", FEEDERS, ids=["one-chunk", "byte-by-byte"])
def test_data_lines_attach_to_their_reply(feed: Feeder) -> None:
    protocol = greeted()
    assert protocol.send_request("/help", expect="help", data=("INFO",)) == b"/help\n"
    items = feed(protocol, b"INFO /join #ROOM\r\nINFO /quit\r\nOK help\r\n")
    assert items == [Reply("help", "", ("INFO /join #ROOM", "INFO /quit"))]
    assert not protocol.has_buffered


def test_one_chunk_and_byte_by_byte_give_the_same_items() -> None:
    data = (
        b"MSG #tea bob early\n"
        b"INFO notice\n"
        b"JOIN #tea carol\n"
        b"INFO /ping - liveness\n"
        b"OK help\n"
        b"DM bob \xff psst\n"
        b"ERR rate-limited retry in 2s\n"
    )
    results = []
    for feed in FEEDERS:
        protocol = greeted()
        protocol.send_request("/help", expect="help", data=("INFO",))
        protocol.send_request("hello", expect="say")
        results.append(feed(protocol, data))
    assert results[0] == results[1]
    assert results[0] == [
        Message("#tea", "bob", "early"),
        Info("notice"),  # data lines followed by an event were events
        Joined("#tea", "carol"),
        Reply("help", "", ("INFO /ping - liveness",)),
        PrivateMessage("bob", "\ufffd psst"),
        ErrorReply("rate-limited", "retry in 2s"),
    ]


@given(st.lists(st.integers(min_value=0, max_value=160), max_size=12))
def test_any_chunking_gives_the_same_items(cuts: list[int]) -> None:
    data = (
        b"HIST alice 7 2024-05-01T10:00:00Z bob stored\n"
        b"HIST #tea 1 2024-05-01T09:00:00Z bob one\n"
        b"OK history #tea 1\n"
        b"WALL root maintenance\n"
        b"OK ping x\n"
    )
    expected = None
    for points in ([], sorted(cuts)):
        protocol = greeted()
        protocol.send_request("/history #tea 1", expect="history", data=("HIST",), counted=True)
        protocol.send_request("/ping x", expect="ping")
        items: list[ServerLine] = []
        start = 0
        for point in [*points, len(data)]:
            protocol.receive_data(data[start : max(start, point)])
            start = max(start, point)
            items.extend(drain(protocol))
        if expected is None:
            expected = items
        assert items == expected
    assert expected is not None
    assert [type(item) for item in expected] == [History, Reply, Wall, Reply]


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("feed", FEEDERS, ids=["one-chunk", "byte-by-byte"])
def test_an_err_maps_to_its_error_code(feed: Feeder) -> None:
    protocol = greeted()
    protocol.send_request("/join #x", expect="join")
    protocol.send_request("/ping", expect="ping")
    items = feed(protocol, b"ERR no-such-room no room #x\nERR what-is-this strange\n")
    assert items == [
        ErrorReply("no-such-room", "no room #x"),
        ErrorReply("what-is-this", "strange"),
    ]
    assert isinstance(items[0], ErrorReply)
    assert items[0].code is ErrorCode.NO_SUCH_ROOM
    assert isinstance(items[1], ErrorReply)
    assert items[1].code is None  # unknown, but it answered its request: still in step
    assert protocol.state is State.OPEN


def test_lines_before_an_err_were_events() -> None:
    protocol = greeted()
    protocol.send_request("/bogus", data=("INFO", "HIST"))
    items = in_one_chunk(protocol, b"INFO stray notice\nERR bad-command unknown command\n")
    assert items == [Info("stray notice"), ErrorReply("bad-command", "unknown command")]


# -- events between replies --------------------------------------------------------------------


@pytest.mark.parametrize("feed", FEEDERS, ids=["one-chunk", "byte-by-byte"])
def test_events_interleaved_between_replies_are_events(feed: Feeder) -> None:
    protocol = greeted()
    protocol.send_request("/who", expect="who")
    protocol.send_request("hi", expect="say")
    protocol.send_request("/rooms", expect="rooms")
    items = feed(
        protocol,
        b"DM bob before\n"
        b"OK who #tea alice bob\n"
        b"MSG #tea bob between\n"
        b"INFO between too\n"
        b"OK say #tea 42\n"
        b"HIST alice 3 2024-05-01T10:00:00Z bob stored\n"
        b"OK rooms #tea\n",
    )
    assert items == [
        PrivateMessage("bob", "before"),
        Reply("who", "#tea alice bob"),
        Message("#tea", "bob", "between"),
        Info("between too"),  # no data lines for /say: an event
        Reply("say", "#tea 42"),
        History("alice", 3, datetime(2024, 5, 1, 10, tzinfo=UTC), "bob", "stored"),
        Reply("rooms", "#tea"),
    ]


def test_events_with_nothing_awaited() -> None:
    protocol = greeted()
    items = in_one_chunk(protocol, b"INFO hi\nPART #tea bob\nFUTURE thing\n\nHELLO again\n")
    assert items == [Info("hi"), parse_line("PART #tea bob")]


# -- the history count ------------------------------------------------------------------------


def test_history_count_settles_which_lines_are_the_reply() -> None:
    protocol = greeted()
    protocol.send_request("/history #tea 2", expect="history", data=("HIST",), counted=True)
    items = in_one_chunk(
        protocol,
        b"HIST alice 7 2024-05-01T10:00:00Z bob stored for you\n"
        b"HIST #tea 1 2024-05-01T09:00:00Z bob one\n"
        b"HIST #tea 2 2024-05-01T09:00:01Z carol two\n"
        b"OK history #tea 2\n",
    )
    assert items == [
        History("alice", 7, datetime(2024, 5, 1, 10, tzinfo=UTC), "bob", "stored for you"),
        Reply(
            "history",
            "#tea 2",
            (
                "HIST #tea 1 2024-05-01T09:00:00Z bob one",
                "HIST #tea 2 2024-05-01T09:00:01Z carol two",
            ),
        ),
    ]


def test_history_counting_more_lines_than_came_is_a_violation() -> None:
    protocol = greeted()
    protocol.send_request("/history #tea", expect="history", data=("HIST",), counted=True)
    protocol.receive_data(b"HIST #tea 1 2024-05-01T09:00:00Z bob one\nOK history #tea 5\n")
    with pytest.raises(RemoteProtocolError, match="counts more lines"):
        protocol.next_event()
    assert protocol.state is State.CLOSED


# -- rooms: the /list reply and the room events --------------------------------------------------


@pytest.mark.parametrize("feed", FEEDERS, ids=["one-chunk", "byte-by-byte"])
def test_room_lines_are_the_list_replys_data(feed: Feeder) -> None:
    """As HIST for /history: ROOM lines (and the INFO saying the list was cut) before
    ``OK list`` are the reply's; the events around them stay events."""
    protocol = greeted()
    protocol.send_request("/list", expect="list", data=("ROOM", "INFO"))
    items = feed(
        protocol,
        b"MSG #tea bob before\n"
        b"ROOM #lobby 2 open\n"
        b"ROOM #tea 1 private tea,  and cake \n"
        b"INFO more rooms than the 2 shown\n"
        b"OK list 2\n"
        b"TOPIC #tea alice after\n",
    )
    data = (
        "ROOM #lobby 2 open",
        "ROOM #tea 1 private tea,  and cake ",
        "INFO more rooms than the 2 shown",
    )
    assert items == [
        Message("#tea", "bob", "before"),
        Reply("list", "2", data),
        TopicChanged("#tea", "alice", "after"),
    ]
    assert [parse_room(line) for line in data] == [
        RoomListing("#lobby", 2, "open", ""),
        RoomListing("#tea", 1, "private", "tea,  and cake "),
        None,
    ]


def test_room_lines_are_never_events() -> None:
    """A ROOM line is only ever data: outside a /list reply, or in a run that an event
    broke, it is dropped, not handed out."""
    protocol = greeted()
    assert in_one_chunk(protocol, b"ROOM #stray 1 open\n") == []
    protocol.send_request("/list", expect="list", data=("ROOM", "INFO"))
    items = in_one_chunk(protocol, b"ROOM #early 1 open\nJOIN #tea bob\nOK list 0\n")
    assert items == [Joined("#tea", "bob"), Reply("list", "0")]


@pytest.mark.parametrize(
    ("line", "item"),
    [
        ("TOPIC #tea alice tea,  and cake ", TopicChanged("#tea", "alice", "tea,  and cake ")),
        ("TOPIC #tea alice", TopicChanged("#tea", "alice", "")),
        ("MODE #tea alice private", ModeChanged("#tea", "alice", "private")),
        ("INVITE #tea alice", Invited("#tea", "alice")),
        ("BANNED #tea alice go away, now", Banned("#tea", "alice", "go away, now")),
        ("BANNED #tea alice ", Banned("#tea", "alice", "")),  # no reason: an empty last field
        ("BANNED #tea alice", Banned("#tea", "alice", "")),
        ("DESTROYED #tea alice", Destroyed("#tea", "alice")),
        ("TOPIC #tea", None),
        ("MODE #tea alice", None),
        ("INVITE #tea", None),
        ("BANNED #tea", None),
        ("DESTROYED #tea", None),
        ("ROOM #tea 1 open", None),  # data, not an event: parse_room reads it
    ],
)
def test_room_events_parse(line: str, item: ServerLine | None) -> None:
    assert parse_line(line) == item


@pytest.mark.parametrize(
    ("line", "listing"),
    [
        ("ROOM #tea 3 open", RoomListing("#tea", 3, "open", "")),
        ("ROOM #tea 0 private ", RoomListing("#tea", 0, "private", "")),
        ("ROOM #tea 12 open a topic", RoomListing("#tea", 12, "open", "a topic")),
        ("ROOM #tea many open", None),
        ("ROOM #tea \u0663 open", None),  # a digit, but not an ASCII one
        ("ROOM #tea 3", None),
        ("TOPIC #tea 3 open", None),
    ],
)
def test_parse_room(line: str, listing: RoomListing | None) -> None:
    assert parse_room(line) == listing


# -- keepalives ---------------------------------------------------------------------------------


def test_keepalive_replies_are_consumed() -> None:
    protocol = greeted()
    assert protocol.send_keepalive() == b"/ping keepalive\n"
    assert protocol.keepalives_unanswered == 1
    protocol.send_request("/help", expect="help", data=("INFO",))
    items = in_one_chunk(protocol, b"OK ping keepalive\nINFO /quit\nOK help\n")
    assert items == [Reply("help", "", ("INFO /quit",))]
    assert protocol.keepalives_unanswered == 0


# -- the server breaking the protocol ---------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"OK ping\n", "a reply to no request"),
        (b"ERR bad-command no\n", "a reply to no request"),
    ],
)
def test_a_reply_to_no_request_is_a_violation(data: bytes, problem: str) -> None:
    protocol = greeted()
    protocol.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=problem):
        protocol.next_event()
    assert protocol.state is State.CLOSED
    assert protocol.next_event() is None


def test_a_reply_with_the_wrong_verb_is_a_violation() -> None:
    protocol = greeted()
    protocol.send_request("/join #tea", expect="join")
    protocol.receive_data(b"OK part #tea\n")
    with pytest.raises(RemoteProtocolError, match="expected OK join, got OK part"):
        protocol.next_event()


def test_too_many_data_lines_is_a_violation() -> None:
    protocol = greeted(max_data_lines=3)
    protocol.send_request("/help", expect="help", data=("INFO",))
    protocol.receive_data(b"INFO x\n" * 4)
    with pytest.raises(RemoteProtocolError, match="too many data lines"):
        drain(protocol)


def test_a_line_over_the_bound_ends_the_stream_after_the_lines_before_it() -> None:
    protocol = greeted(max_line_bytes=64)
    protocol.receive_data(b"INFO fine\n" + b"MSG #a evil " + b"x" * 100 + b"\nINFO after\n")
    assert protocol.next_event() == Info("fine")
    with pytest.raises(LineTooLong):
        protocol.next_event()
    assert protocol.next_event() is None


def test_bye_ends_the_connection() -> None:
    protocol = greeted()
    protocol.send_request("/help", expect="help", data=("INFO",))
    items = in_one_chunk(protocol, b"INFO half a reply\nBYE\nMSG #a bob too late\n")
    assert items == [Info("half a reply"), Bye("bye")]
    assert protocol.state is State.CLOSED
    assert not protocol.has_buffered


def test_a_request_is_one_line() -> None:
    protocol = greeted()
    with pytest.raises(ValueError, match="single line"):
        protocol.send_request("/say #a hi\n/quit")
    protocol.receive_data(b"OK say #a 1\n")
    with pytest.raises(RemoteProtocolError, match="no request"):
        protocol.next_event()  # the refused request is not awaited

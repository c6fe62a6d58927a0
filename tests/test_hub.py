"""The hub on its own: rooms, sessions and fan-out against fake outboxes, no sockets.

A session is a `Member` whose outbox only records what the hub queues for it. Sessions are
named ``amy``, ``bob``, ... and ``amy2`` is a second session of the account ``amy``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.model import RoomRecord
from sealroom.state.hub import Hub, HubLimits, Member
from sealroom.state.outbox import Outbox

JOINED = b"OK join\n"  # what the session layer would reply; the hub only queues it


class FakeOutbox:
    """Records the lines the hub queues (without their newline) and the BYEs it asks for."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.closed: list[str] = []

    def push(
        self, data: bytes, *, wake: bool = True, on_sent: Callable[[], None] | None = None
    ) -> bool:
        assert data.endswith(b"\n")
        self.lines.append(data.decode()[:-1])
        return True

    def close(self, reason: str, *, wake: bool = True) -> None:
        self.closed.append(reason)

    def drain(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


def limits(**overrides: Any) -> HubLimits:
    values: dict[str, Any] = {
        "max_rooms": 10,
        "max_rooms_per_session": 10,
        "max_room_members": 10,
        "allow_create": True,
        "default_room": "#lobby",
    }
    return HubLimits(**(values | overrides))


class Scene:
    """A hub and its fake sessions, each made and attached on first mention."""

    def __init__(self, **overrides: Any) -> None:
        ids = iter(range(1, 1000))
        self.hub = Hub(limits(**overrides), next_id=lambda: next(ids))
        self.hub.apply(RoomRecord("#lobby", None, "open", "", "now"))  # as the server starts
        self.sessions: dict[str, Member] = {}

    def __getitem__(self, session: str) -> Member:
        if session not in self.sessions:
            name = session.rstrip("0123456789")
            member = Member(name, cast(Outbox, FakeOutbox()))
            self.hub.attach(member)
            self.sessions[session] = member
        return self.sessions[session]

    def attach(self, session: str) -> None:
        """Log ``session`` in without joining any room."""
        self[session]

    def inbox(self, session: str) -> FakeOutbox:
        return cast(FakeOutbox, self[session].outbox)

    def drain(self) -> None:
        for session in self.sessions:
            self.inbox(session).drain()

    def do(self, step: str) -> None:
        """``"join amy #tea"``, ``"part amy2 #tea"`` or ``"detach bob"``."""
        verb, session, *room = step.split()
        if verb == "join":
            member = self[session]
            try:
                self.hub.view(room[0])
            except ProtocolError:  # as the session does: may it create one, then store it
                self.hub.may_create(member)
                self.hub.apply(RoomRecord(room[0], member.name, "open", "", "now"))
            self.hub.join(member, room[0], JOINED)
        elif verb == "part":
            self.hub.part(self[session], room[0])
        elif verb == "detach":
            self.hub.detach(self[session])
        else:
            raise AssertionError(f"no such step {step!r}")


# -- JOIN and PART: once per account, on its first and last session --------------------------


@pytest.mark.parametrize(
    ("steps", "seen"),
    [
        pytest.param(["join amy #tea"], ["JOIN #tea amy"], id="first session joins"),
        pytest.param(["join amy #tea", "join amy2 #tea"], ["JOIN #tea amy"], id="second: quiet"),
        pytest.param(["join amy #tea", "join amy #tea"], ["JOIN #tea amy"], id="rejoin: quiet"),
        pytest.param(
            ["join amy #tea", "join amy2 #tea", "part amy #tea"],
            ["JOIN #tea amy"],
            id="one of two parts: quiet",
        ),
        pytest.param(
            ["join amy #tea", "join amy2 #tea", "part amy #tea", "part amy2 #tea"],
            ["JOIN #tea amy", "PART #tea amy"],
            id="last session parts",
        ),
        pytest.param(
            ["join amy #tea", "join amy2 #tea", "detach amy2", "detach amy"],
            ["JOIN #tea amy", "PART #tea amy"],
            id="last session goes away",
        ),
        pytest.param(
            ["join amy #tea", "part amy #tea", "join amy2 #tea"],
            ["JOIN #tea amy", "PART #tea amy", "JOIN #tea amy"],
            id="back after leaving",
        ),
        pytest.param(["join amy #other"], [], id="another room: nothing"),
    ],
)
def test_join_and_part_events(steps: list[str], seen: list[str]) -> None:
    scene = Scene()
    scene.do("join cat #tea")  # the observer
    scene.drain()
    for step in steps:
        scene.do(step)
    assert scene.inbox("cat").drain() == seen


def test_a_joiner_gets_its_reply_and_no_event_of_its_own() -> None:
    scene = Scene()
    scene.do("join cat #tea")
    scene.drain()
    scene.do("join amy #tea")
    scene.do("join amy2 #tea")
    assert scene.inbox("amy").drain() == ["OK join"]
    assert scene.inbox("amy2").drain() == ["OK join"]


def test_part_of_a_room_one_is_not_in() -> None:
    scene = Scene()
    scene.do("join amy #tea")
    with pytest.raises(ProtocolError) as raised:
        scene.do("part bob #tea")
    assert raised.value.code is ErrorCode.NOT_IN_ROOM


def test_an_emptied_room_stays_until_destroyed() -> None:
    scene = Scene()
    scene.do("join amy #tea")
    assert scene.hub.counts() == (1, 2)  # #lobby and #tea
    scene.do("part amy #tea")
    assert scene.hub.counts() == (1, 2)
    assert scene.hub.who("#tea") == []
    scene.hub.destroy("#tea", "amy")
    with pytest.raises(ProtocolError) as raised:
        scene.hub.who("#tea")
    assert raised.value.code is ErrorCode.NO_SUCH_ROOM


# -- who ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("joiners", "names"),
    [
        pytest.param(["amy"], ["amy"], id="one"),
        pytest.param(["zed", "amy", "mia"], ["amy", "mia", "zed"], id="sorted"),
        pytest.param(["zed", "amy", "amy2", "zed2"], ["amy", "zed"], id="each account once"),
        pytest.param(["amy", "amy2", "bob"], ["amy", "bob"], id="sessions do not repeat names"),
    ],
)
def test_who_is_sorted_with_each_account_once(joiners: list[str], names: list[str]) -> None:
    scene = Scene()
    for session in joiners:
        scene.do(f"join {session} #tea")
    assert scene.hub.who("#tea") == names


# -- messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "sender", "recipients"),
    [
        pytest.param(["amy", "bob", "cat"], "amy", ["bob", "cat"], id="all but the sender"),
        pytest.param(["amy", "amy2", "bob"], "amy", ["amy2", "bob"], id="sender's other session"),
        pytest.param(["amy"], "amy", [], id="alone in the room"),
    ],
)
def test_say_reaches_the_room_but_not_the_sender(
    members: list[str], sender: str, recipients: list[str]
) -> None:
    scene = Scene()
    for session in members:
        scene.do(f"join {session} #tea")
    scene.do("join dan #other")  # in another room: never sees it
    scene.drain()
    assert scene.hub.say(scene[sender], "#tea", "hello there") == 1
    got = {session: scene.inbox(session).drain() for session in scene.sessions}
    name = sender.rstrip("0123456789")
    assert got == {
        session: [f"MSG #tea {name} hello there"] if session in recipients else []
        for session in scene.sessions
    }
    assert scene.hub.deliveries == len(recipients)


def test_say_from_outside_an_existing_room_reaches_its_members() -> None:
    """Issue 13, report 8: posting needs no JOIN and PART around it, where the poster may
    join (the session passes the room policy as ``admit``); without it, members only."""
    scene = Scene()
    scene.do("join amy #tea")
    scene.do("join bob #other")
    with pytest.raises(ProtocolError) as raised:
        scene.hub.say(scene["bob"], "#tea", "hi")
    assert raised.value.code is ErrorCode.NOT_IN_ROOM

    def refuse(view: object) -> None:
        raise ProtocolError(ErrorCode.FORBIDDEN, "not you")

    with pytest.raises(ProtocolError) as raised:
        scene.hub.say(scene["bob"], "#tea", "hi", refuse)
    assert raised.value.code is ErrorCode.FORBIDDEN
    scene.hub.say(scene["bob"], "#tea", "hi", lambda view: None)
    assert scene.inbox("amy").drain() == ["OK join", "MSG #tea bob hi"]
    assert scene.inbox("bob").drain() == ["OK join"]
    assert scene["bob"].rooms == {"#other"}  # still not a member


def test_say_to_a_missing_room_is_refused() -> None:
    scene = Scene()
    scene.do("join bob #other")
    with pytest.raises(ProtocolError) as raised:
        scene.hub.say(scene["bob"], "#tea", "hi")
    assert raised.value.code is ErrorCode.NO_SUCH_ROOM


@pytest.mark.parametrize(
    ("online", "recipient", "reached"),
    [
        pytest.param(["bob"], "bob", ["bob"], id="one session"),
        pytest.param(["bob", "bob2", "bob3"], "bob", ["bob", "bob2", "bob3"], id="every session"),
        pytest.param(["cat"], "bob", [], id="offline"),
        pytest.param(["amy2"], "amy", ["amy", "amy2"], id="to oneself: the sender's too"),
    ],
)
def test_direct_reaches_every_session_of_the_recipient(
    online: list[str], recipient: str, reached: list[str]
) -> None:
    scene = Scene()
    sender = scene["amy"]
    for session in online:
        scene.attach(session)
    message_id, count = scene.hub.direct(sender.name, recipient, "psst")
    assert (message_id, count) == (1, len(reached))
    for session in scene.sessions:
        expected = ["DM amy psst"] if session in reached else []
        assert scene.inbox(session).drain() == expected, session


@pytest.mark.parametrize(
    ("sessions", "steps"),
    [
        pytest.param(["root"], [], id="only the sender"),
        pytest.param(
            ["root", "amy", "amy2", "bob"],
            ["join amy #tea", "join amy2 #other"],
            id="every session, in a room or not",
        ),
    ],
)
def test_wall_reaches_every_session(sessions: list[str], steps: list[str]) -> None:
    scene = Scene()
    for session in sessions:
        scene.attach(session)
    for step in steps:
        scene.do(step)
    scene.drain()
    assert scene.hub.wall("root", "maintenance at noon") == len(sessions)
    for session in sessions:
        assert scene.inbox(session).drain() == ["WALL root maintenance at noon"]


def test_message_ids_come_from_the_counter_in_order() -> None:
    scene = Scene()
    scene.do("join amy #tea")
    assert scene.hub.say(scene["amy"], "#tea", "one") == 1
    assert scene.hub.direct("amy", "bob", "two") == (2, 0)
    assert scene.hub.say(scene["amy"], "#tea", "three") == 3


# -- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "before", "refused", "code"),
    [
        pytest.param(
            {"max_rooms": 3},
            ["join amy #a", "join bob #b"],
            "join cat #c",
            ErrorCode.SERVER_BUSY,
            id="max rooms on the server",
        ),
        pytest.param(
            {"max_rooms_per_session": 2},
            ["join amy #a", "join amy #b"],
            "join amy #c",
            ErrorCode.FORBIDDEN,
            id="max rooms per session",
        ),
        pytest.param(
            {"max_room_members": 2},
            ["join amy #a", "join bob #a"],
            "join cat #a",
            ErrorCode.FORBIDDEN,
            id="room full",
        ),
        pytest.param(
            {"max_room_members": 2},
            ["join amy #a", "join amy2 #a"],
            "join bob #a",
            ErrorCode.FORBIDDEN,
            id="room full of one account's sessions",
        ),
        pytest.param(
            {"allow_create": False},
            ["join amy #lobby"],
            "join amy #new",
            ErrorCode.NO_SUCH_ROOM,
            id="no creating rooms",
        ),
    ],
)
def test_limits_refuse_a_join_and_change_nothing(
    overrides: dict[str, Any], before: list[str], refused: str, code: ErrorCode
) -> None:
    scene = Scene(**overrides)
    for step in before:
        scene.do(step)
    _, session, room = refused.split()
    joiner = scene[session]
    scene.drain()
    counts = scene.hub.counts()
    with pytest.raises(ProtocolError) as raised:
        scene.do(refused)
    assert raised.value.code is code
    assert scene.hub.counts() == counts
    assert room not in joiner.rooms
    assert all(scene.inbox(session).drain() == [] for session in scene.sessions)


@pytest.mark.parametrize(
    ("overrides", "before", "allowed"),
    [
        pytest.param({"max_rooms": 3}, ["join amy #a", "join bob #b"], "join cat #a", id="rooms"),
        pytest.param(
            {"max_rooms_per_session": 2},
            ["join amy #a", "join amy #b"],
            "join amy #b",
            id="rejoining at the per-session limit",
        ),
        pytest.param(
            {"max_rooms_per_session": 1}, ["join amy #a"], "join amy2 #b", id="per session"
        ),
        pytest.param(
            {"allow_create": False}, [], "join amy #lobby", id="the default room may be created"
        ),
        pytest.param(
            {"allow_create": False}, ["join amy #lobby"], "join bob #lobby", id="and joined"
        ),
    ],
)
def test_limits_let_what_is_within_them_through(
    overrides: dict[str, Any], before: list[str], allowed: str
) -> None:
    scene = Scene(**overrides)
    for step in before:
        scene.do(step)
    scene.do(allowed)
    _, session, room = allowed.split()
    assert room in scene[session].rooms


# -- detach ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stays", "parts", "online"),
    [
        pytest.param(None, ["PART #a amy", "PART #b amy"], False, id="last session"),
        pytest.param("amy2", [], True, id="another session stays"),
    ],
)
def test_detach_leaves_every_room(stays: str | None, parts: list[str], online: bool) -> None:
    scene = Scene()
    for room in ("#a", "#b", "#c"):
        scene.do(f"join amy {room}")
        if stays:
            scene.do(f"join {stays} {room}")
    scene.do("join cat #a")
    scene.do("join cat #b")
    scene.drain()
    scene.do("detach amy")
    assert scene["amy"].rooms == set()
    assert sorted(scene.inbox("cat").drain()) == parts  # a session's rooms are a set
    assert scene.hub.is_online("amy") is online
    assert ("amy" in scene.hub.online_names()) is online
    assert scene.hub.counts() == (1 + bool(stays), 4)  # #lobby too: rooms stay, empty or not


def test_disconnect_closes_every_session_of_an_account() -> None:
    scene = Scene()
    for session in ("amy", "amy2", "bob"):
        scene.attach(session)
    assert scene.hub.disconnect("amy", "kicked by root") == 2
    assert [scene.inbox(s).closed for s in ("amy", "amy2", "bob")] == [
        ["kicked by root"],
        ["kicked by root"],
        [],
    ]


# -- a replica's room messages from the bus, delivered a read at a time -----------------------


class CountingOutbox(Outbox):
    """A real outbox that counts the pushes it takes."""

    def __init__(self, limit: int, wake: Callable[[], None]) -> None:
        super().__init__(limit, wake)
        self.pushes = 0

    def push(
        self, data: bytes, *, wake: bool = True, on_sent: Callable[[], None] | None = None
    ) -> bool:
        self.pushes += 1
        return super().push(data, wake=wake, on_sent=on_sent)


def test_relay_many_keeps_the_order_and_sends_each_member_one_chunk() -> None:
    """What the cluster's reader delivers at once: every member gets the lines of every room
    it is in, in the bus's order, in one push; a sender's session does not get its own."""
    hub = Hub(limits(), replica=True)
    for room in ("#lobby", "#tea"):
        hub.apply(RoomRecord(room, None, "open", "", "now"))

    def member(session: str, rooms: list[str]) -> Member:
        made = Member(session, CountingOutbox(1 << 20, lambda: None))
        hub.attach(made)
        for room in rooms:
            assert hub.enter_replica(made, room, JOINED)
        return made

    amy = member("amy", ["#lobby", "#tea"])
    bob = member("bob", ["#lobby"])
    cat = member("cat", ["#tea"])
    for each in (amy, bob, cat):
        each.outbox.take()
        cast(CountingOutbox, each.outbox).pushes = 0
    line = {
        n: f"MSG {r} {s} {n}\n".encode()
        for n, (r, s) in enumerate(
            [("#lobby", "bob"), ("#lobby", "amy"), ("#tea", "cat"), ("#lobby", "zed")]
        )
    }
    hub.relay_many(
        [
            ("#lobby", line[0], bob.serial),
            ("#lobby", line[1], amy.serial),
            ("#tea", line[2], 0),
            ("#lobby", line[3], 0),
            ("#gone", b"MSG #gone zed x\n", 0),  # a room this node does not know: nobody
        ]
    )
    assert amy.outbox.take()[0] == line[0] + line[2] + line[3]
    assert bob.outbox.take()[0] == line[1] + line[3]
    assert cat.outbox.take()[0] == line[2]
    assert [cast(CountingOutbox, each.outbox).pushes for each in (amy, bob, cat)] == [1, 1, 1]
    assert hub.deliveries == 6

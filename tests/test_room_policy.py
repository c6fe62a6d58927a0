"""The room policy as a table: every role x request x mode, no sockets.

The table below is written from SPEC.md §1 "Rooms: owners, operators, private rooms", not
from the code: each cell says whether a user holding that role may make that request in an
open (``o``) or a private (``p``) room. A role with ``+`` is a user who also has a session
in the room now (a *member* in the spec's sense, which is what ``/history`` asks for).

The rules the cells come from:

- open rooms: anyone not banned may join, ``/who`` and ``/topic``; private rooms: the owner,
  operators (server admins are operators in every room) and invited users may join, and
  ``/who`` and ``/topic`` are for members and those who may join;
- ``/history`` only for members (a session in the room), in either mode;
- operators (owner, ``/op``-made, admins) set the topic and the mode, invite, ban, unban;
- only the owner or an admin may ``/op``, ``/deop``, ``/destroy``;
- a banned user may do none of it; the owner and admins cannot be banned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from sealroom.policy import rooms
from sealroom.policy.rooms import Mode, Role, RoomView

OWNER = "ann"


@dataclass(frozen=True)
class Asker:
    """The user behind one column of the table."""

    name: str
    role: Role  # what the policy must call this user in the room
    is_admin: bool = False
    present: bool = False


ASKERS = {
    "owner": Asker(OWNER, Role.OWNER),
    "owner+": Asker(OWNER, Role.OWNER, present=True),
    "op": Asker("olga", Role.OPERATOR),
    "op+": Asker("olga", Role.OPERATOR, present=True),
    "admin": Asker("root", Role.ADMIN, is_admin=True),
    "admin+": Asker("root", Role.ADMIN, is_admin=True, present=True),
    "invited": Asker("ivy", Role.INVITED),
    "invited+": Asker("ivy", Role.INVITED, present=True),
    "member": Asker("mel", Role.MEMBER, present=True),  # in the room, holds no role
    "banned": Asker("ben", Role.BANNED),  # a ban removed them: never present
    "stranger": Asker("sam", Role.STRANGER),  # no role, not in the room
}

# Each row: a request, then per column "o" (open only), "p" (private only), "op" (both),
# "-" (neither).
TABLE = """
request     owner owner+ op  op+ admin admin+ invited invited+ member banned stranger
join        op    op     op  op  op    op     op      op       o      -      o
history     -     op     -   op  -     op     -       op       op     -      -
who         op    op     op  op  op    op     op      op       op     -      o
topic-read  op    op     op  op  op    op     op      op       op     -      o
topic-set   op    op     op  op  op    op     -       -        -      -      -
mode        op    op     op  op  op    op     -       -        -      -      -
invite      op    op     op  op  op    op     -       -        -      -      -
ban         op    op     op  op  op    op     -       -        -      -      -
unban       op    op     op  op  op    op     -       -        -      -      -
op          op    op     -   -   op    op     -       -        -      -      -
deop        op    op     -   -   op    op     -       -        -      -      -
destroy     op    op     -   -   op    op     -       -        -      -      -
"""

# Which policy question each request is.
Question = Callable[[RoomView, Asker, Role], bool]
QUESTIONS: dict[str, Question] = {
    "join": lambda view, _asker, role: rooms.may_join(view, role),
    "history": lambda view, asker, role: rooms.may_read_history(view, asker.name, role),
    "who": lambda view, asker, role: rooms.may_see(view, asker.name, role),
    "topic-read": lambda view, asker, role: rooms.may_see(view, asker.name, role),
    **{
        verb: (lambda _view, _asker, role: rooms.may_moderate(role))
        for verb in ("topic-set", "mode", "invite", "ban", "unban")
    },
    **{
        verb: (lambda _view, _asker, role: rooms.may_manage(role))
        for verb in ("op", "deop", "destroy")
    },
}


def _cells() -> dict[tuple[str, str, Mode], bool]:
    lines = [line.split() for line in TABLE.strip().splitlines()]
    head, rows = lines[0][1:], lines[1:]
    cells = {}
    for request, *marks in rows:
        assert len(marks) == len(head), request
        for column, mark in zip(head, marks, strict=True):
            assert mark in {"o", "p", "op", "-"}, (request, column, mark)
            for mode in Mode:
                cells[request, column, mode] = mode.value[0] in mark
    return cells


CELLS = _cells()


def _id(value: object) -> str:
    return value.value if isinstance(value, Mode) else str(value)


def test_the_table_is_complete() -> None:
    """Every request of the spec's rooms section, every role, both modes."""
    assert {request for request, _, _ in CELLS} == set(QUESTIONS)
    assert {column for _, column, _ in CELLS} == set(ASKERS)
    assert len(CELLS) == len(QUESTIONS) * len(ASKERS) * len(Mode)


def room(mode: Mode, asker: Asker) -> RoomView:
    """A room owned by ann with one user of each role (as the store keeps them: the owner
    is also an operator), and the asker in it if the column says so."""
    members = {"mel"} | ({asker.name} if asker.present else set())
    return RoomView(
        owner=OWNER,
        mode=mode,
        operators=frozenset({OWNER, "olga"}),
        invited=frozenset({"ivy"}),
        banned=frozenset({"ben"}),
        members=frozenset(members),
    )


@pytest.mark.parametrize(
    ("request_", "column", "mode"),
    sorted(CELLS, key=lambda cell: (cell[0], cell[1], cell[2].value)),
    ids=_id,
)
def test_policy_table(request_: str, column: str, mode: Mode) -> None:
    asker = ASKERS[column]
    view = room(mode, asker)
    role = rooms.role_of(view, asker.name, is_admin=asker.is_admin)
    assert role is asker.role
    allowed = QUESTIONS[request_](view, asker, role)
    assert allowed is CELLS[request_, column, mode], (
        f"{column} {'may' if allowed else 'may not'} {request_} in a {mode.value} room"
    )


@pytest.mark.parametrize(
    ("request_", "column", "mode"),
    [
        # a stranger cannot read a private room's history or /who (nor its topic)
        ("history", "stranger", Mode.PRIVATE),
        ("who", "stranger", Mode.PRIVATE),
        ("topic-read", "stranger", Mode.PRIVATE),
        # /history is for members: holding a role is not enough
        ("history", "owner", Mode.OPEN),
        ("history", "admin", Mode.OPEN),
        # a banned user cannot rejoin, read, look or moderate, open room or not
        ("join", "banned", Mode.OPEN),
        ("join", "banned", Mode.PRIVATE),
        ("history", "banned", Mode.OPEN),
        ("who", "banned", Mode.OPEN),
        ("topic-read", "banned", Mode.OPEN),
        # an operator cannot /op, /deop or /destroy
        ("op", "op+", Mode.OPEN),
        ("deop", "op+", Mode.OPEN),
        ("destroy", "op+", Mode.OPEN),
        # a member of a private room that was not invited may not come back
        ("join", "member", Mode.PRIVATE),
    ],
    ids=_id,
)
def test_the_negatives_the_issue_names(request_: str, column: str, mode: Mode) -> None:
    """The refusals issue 15 names, so that editing the table cannot drop them."""
    assert CELLS[request_, column, mode] is False
    asker = ASKERS[column]
    view = room(mode, asker)
    role = rooms.role_of(view, asker.name, is_admin=asker.is_admin)
    assert not QUESTIONS[request_](view, asker, role)


@pytest.mark.parametrize(
    ("column", "bannable"),
    [
        ("owner", False),
        ("admin", False),
        ("op", True),
        ("invited", True),
        ("member", True),
        ("stranger", True),
        ("banned", True),  # again: harmless
    ],
)
def test_nobody_can_ban_the_owner_or_an_admin(column: str, bannable: bool) -> None:
    asker = ASKERS[column]
    for mode in Mode:
        view = room(mode, asker)
        assert rooms.may_be_banned(view, asker.name, is_admin=asker.is_admin) is bannable


@pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.value)
def test_a_ban_outweighs_any_role_but_owner_and_admin(mode: Mode) -> None:
    """An operator or invited user who is banned is banned: the ban decides."""
    view = RoomView(
        owner=OWNER,
        mode=mode,
        operators=frozenset({OWNER, "olga"}),
        invited=frozenset({"olga"}),
        banned=frozenset({"olga"}),
        members=frozenset(),
    )
    role = rooms.role_of(view, "olga", is_admin=False)
    assert role is Role.BANNED
    assert not rooms.may_join(view, role)
    assert not rooms.may_see(view, "olga", role)
    assert not rooms.may_moderate(role)


@pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.value)
def test_an_admin_who_owns_the_room_is_its_owner(mode: Mode) -> None:
    view = room(mode, ASKERS["stranger"])
    role = rooms.role_of(view, OWNER, is_admin=True)
    assert role is Role.OWNER
    assert rooms.may_manage(role)
    assert not rooms.may_be_banned(view, OWNER, is_admin=True)


@pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.value)
def test_a_room_without_owner_is_managed_by_admins_only(mode: Mode) -> None:
    """The default room and rooms from an old database have no owner."""
    view = RoomView(
        owner=None,
        mode=mode,
        operators=frozenset(),
        invited=frozenset(),
        banned=frozenset(),
        members=frozenset({"mel"}),
    )
    member = rooms.role_of(view, "mel", is_admin=False)
    admin = rooms.role_of(view, "root", is_admin=True)
    assert member is Role.MEMBER
    assert admin is Role.ADMIN
    assert not rooms.may_moderate(member)
    assert not rooms.may_manage(member)
    assert rooms.may_moderate(admin)
    assert rooms.may_manage(admin)
    assert rooms.may_join(view, admin)

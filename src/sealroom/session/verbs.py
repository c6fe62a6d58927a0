"""What the verbs' handlers share: their arguments, the member and the account as stored, the
login budget, and telling the cluster of a room change. The handlers live in
:mod:`sealroom.session.commands` (logging in, rooms, messages, the rest, and the table) and
:mod:`sealroom.session.room_settings` (topic, mode, invitations, bans, operators, destroy).
"""

from __future__ import annotations

from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.model import Account, RoomRecord, RoomView
from sealroom.core.protocol import Request
from sealroom.core.text import room_name, user_name
from sealroom.policy import rooms
from sealroom.policy.ratelimit import retry_after_text
from sealroom.session.bus import room_payload
from sealroom.session.effects import Effect, Pool, Step
from sealroom.session.machine import Session, SessionEnded
from sealroom.state.hub import OPERATOR, Member


def room_arg(session: Session, request: Request, index: int = 0) -> str:
    """The room named in the request, else the current room."""
    if len(request.args) > index:
        name = room_name(request.args[index])
        if name is None:
            raise ProtocolError(ErrorCode.BAD_ARGUMENT, "a room is # then [a-z0-9_-]")
        return name
    if session.current_room is None:
        raise ProtocolError(ErrorCode.NOT_IN_ROOM, "you are in no room; /join #ROOM")
    return session.current_room


def require_member(session: Session) -> Member:
    assert session.member is not None  # the dispatch table guarantees it  # noqa: S101
    return session.member


def take_login_token(session: Session) -> None:
    """Every credential check draws on the client address's bucket, before any hashing."""
    login_limited(session.services.login_buckets.take(session.peer))


def login_limited(wait: float) -> None:
    if wait:
        text = f"too many login attempts; {retry_after_text(wait)}"
        raise ProtocolError(ErrorCode.RATE_LIMITED, text)


def shared_login_token(session: Session) -> None:
    """Blocking: in a cluster an address has one login budget, not one per node."""
    bus = session.services.bus
    if bus is not None:
        rate = session.services.settings.rate.logins_per_ip
        login_limited(bus.take("logins", session.peer, rate.rate, rate.burst))


def share_room(
    session: Session,
    record: RoomRecord,
    reply: str,
    *,
    by: str = OPERATOR,
    reason: str = "",
    line: bytes | None = None,
    notify: str | None = None,
) -> Step:
    """``reply``, once the cluster's other nodes have the change this node just applied
    in the bus's order: a join ordered after it is judged by it, on every node. (They
    also poll the store for room changes, should the bus be away.)"""
    bus = session.services.bus
    if bus is None:
        return reply
    payload: dict[str, object] = {"record": room_payload(record), "by": by, "reason": reason}
    if line is not None:
        payload["line"] = line.decode().rstrip("\n")
    if notify is not None:
        payload["notify"] = notify
    return Effect(Pool.BUS, lambda: bus.broadcast("room", payload), lambda _: reply)


def user_arg(raw: str) -> str:
    name = user_name(raw)
    if name is None:
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, "a user name is [a-z0-9][a-z0-9_.-]")
    return name


def account_exists(session: Session, name: str) -> bool:
    """Blocking: for an effect's work."""
    services = session.services
    if services.bus is None and services.hub.is_online(name):
        return True
    return services.store.get_account(name) is not None


def current_account(session: Session) -> Account:
    """The account record this session logged in as, read now; blocking, for an effect's
    work. Every decision on the account's authority (mint a token, send or read as it,
    moderate) goes through this: a record that was removed, disabled or changed since the
    login ends the session instead."""
    member = require_member(session)
    account = session.services.store.get_account(member.name)
    if account is None:
        raise SessionEnded("account-removed")
    if not account.enabled:
        raise SessionEnded("account-disabled")
    if account.stamp != member.stamp:
        raise SessionEnded("account-changed")
    return account


def loggable_name(raw: str) -> str:
    """What the log may show of a name a client typed: the name if it is a valid one, else
    nothing of it (a password typed in the name field must never reach the log)."""
    name = user_name(raw)
    return name if name is not None else "(not a valid name)"


def role_in(session: Session, view: RoomView) -> rooms.Role:
    member = require_member(session)
    return rooms.role_of(view, member.name, is_admin=member.is_admin)

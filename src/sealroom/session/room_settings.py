"""The verbs that change a room's settings: ``/topic``, ``/mode``, ``/invite``, ``/ban`` and
``/unban``, ``/op`` and ``/deop``, ``/destroy``, and ``/list``, which shows them. Each checks
the member's role in the room (:mod:`sealroom.policy.rooms`), stores the change on a worker,
applies it to the hub and, in a cluster, tells the other nodes in the bus's order.
"""

from __future__ import annotations

from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.model import Account, Mode, RoomRecord, RoomView
from sealroom.core.protocol import Request, encode_line
from sealroom.policy import rooms
from sealroom.session.effects import Effect, Pool, Step
from sealroom.session.machine import Session
from sealroom.session.verbs import (
    current_account,
    require_member,
    role_in,
    room_arg,
    share_room,
    user_arg,
)

TOPIC_MAX = 300


def _moderated(session: Session, name: str, *, manage: bool = False) -> RoomView:
    """The room's view, if this session may moderate it (or manage it: op, deop, destroy)."""
    view = session.services.hub.view(name)
    role = role_in(session, view)
    allowed = rooms.may_manage(role) if manage else rooms.may_moderate(role)
    if not allowed:
        who = "the owner" if manage else "operators"
        raise ProtocolError(ErrorCode.FORBIDDEN, f"only {who} of {name} may do that")
    return view


def _target_account(session: Session, raw: str) -> Account:
    """Blocking: the account a room request names (it must exist)."""
    name = user_arg(raw)
    account = session.services.store.get_account(name)
    if account is None:
        raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no account {name}")
    return account


def _stored(session: Session, name: str) -> RoomRecord:
    """Blocking: the room as stored now, after a change."""
    record = session.services.store.get_room(name)
    if record is None:
        raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"{name} does not exist")
    return record


def cmd_topic(session: Session, request: Request) -> Step:
    name = room_arg(session, request)
    hub, member = session.services.hub, require_member(session)
    text = request.text
    if text is None or not text.strip():
        view = hub.view(name)
        if not rooms.may_see(view, member.name, role_in(session, view)):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{name} is private")
        topic = hub.topic(name)
        return f"OK topic {name} {topic}" if topic else f"OK topic {name}"
    if len(text) > TOPIC_MAX:
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, f"a topic is at most {TOPIC_MAX} characters")
    _moderated(session, name)
    store = session.services.store

    def write() -> RoomRecord:
        current_account(session)
        store.set_room(name, topic=text)
        return _stored(session, name)

    def done(record: RoomRecord) -> Step:
        hub.apply(record)
        line = encode_line("TOPIC", name, member.name, text)
        hub.announce(name, line)
        return share_room(session, record, f"OK topic {name} {text}", line=line)

    return Effect(Pool.STORE, write, done)


def cmd_mode(session: Session, request: Request) -> Step:
    name = room_arg(session, request)
    try:
        mode = Mode(request.args[1])
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, "a mode is open or private") from None
    view = _moderated(session, name)
    hub, store, member = session.services.hub, session.services.store, require_member(session)

    def write() -> RoomRecord:
        current_account(session)
        if mode is Mode.PRIVATE:  # the members it has count as invited
            for present in hub.view(name).members:
                if present not in view.invited:
                    store.set_role(name, present, "invited", True)
        store.set_room(name, mode=mode.value)
        return _stored(session, name)

    def done(record: RoomRecord) -> Step:
        hub.apply(record)
        line = encode_line("MODE", name, member.name, mode.value)
        hub.announce(name, line)
        return share_room(session, record, f"OK mode {name} {mode.value}", line=line)

    return Effect(Pool.STORE, write, done)


def cmd_invite(session: Session, request: Request) -> Step:
    name = room_arg(session, request, 1)
    _moderated(session, name)
    hub, store, by = session.services.hub, session.services.store, require_member(session).name

    def write() -> tuple[str, RoomRecord]:
        current_account(session)
        invited = _target_account(session, request.args[0]).name
        store.set_role(name, invited, "invited", True)
        return invited, _stored(session, name)

    def done(result: tuple[str, RoomRecord]) -> Step:
        invited, record = result
        hub.apply(record)
        line = encode_line("INVITE", name, by)
        hub.notify(invited, line)
        reply = f"OK invite {invited} {name}"
        return share_room(session, record, reply, line=line, notify=invited)

    return Effect(Pool.STORE, write, done)


def cmd_ban(session: Session, request: Request) -> Step:
    name = room_arg(session, request, 1)
    view = _moderated(session, name)
    reason = (request.text or "").strip()
    hub, store, by = session.services.hub, session.services.store, require_member(session).name

    def write() -> tuple[str, RoomRecord]:
        current_account(session)
        target = _target_account(session, request.args[0])
        if not rooms.may_be_banned(view, target.name, is_admin=target.is_admin):
            raise ProtocolError(ErrorCode.FORBIDDEN, "the owner and admins cannot be banned")
        store.set_role(name, target.name, "banned", True)
        return target.name, _stored(session, name)

    def done(result: tuple[str, RoomRecord]) -> Step:
        banned, record = result
        # At once, under the hub's lock: after this no message of theirs reaches the room.
        hub.apply(record, by=by, reason=reason)
        return share_room(session, record, f"OK ban {banned} {name}", by=by, reason=reason)

    return Effect(Pool.STORE, write, done)


def _role_change(session: Session, request: Request, role: str, held: bool, verb: str) -> Step:
    name = room_arg(session, request, 1)
    view = _moderated(session, name, manage=role == "operator")
    hub, store = session.services.hub, session.services.store

    def write() -> tuple[str, RoomRecord]:
        current_account(session)
        target = _target_account(session, request.args[0]).name
        if role == "operator" and not held:
            if target == view.owner:
                raise ProtocolError(ErrorCode.FORBIDDEN, "the owner is always an operator")
            # As when a room goes private: an operator in a private room keeps its place
            # as an invited member, so no one is left in a room they may not join.
            now = hub.view(name)
            if now.mode is Mode.PRIVATE and target in now.members and target not in now.invited:
                store.set_role(name, target, "invited", True)
        store.set_role(name, target, role, held)
        return target, _stored(session, name)

    def done(result: tuple[str, RoomRecord]) -> Step:
        target, record = result
        hub.apply(record)
        return share_room(session, record, f"OK {verb} {target} {name}")

    return Effect(Pool.STORE, write, done)


def cmd_unban(session: Session, request: Request) -> Step:
    return _role_change(session, request, "banned", False, "unban")


def cmd_op(session: Session, request: Request) -> Step:
    return _role_change(session, request, "operator", True, "op")


def cmd_deop(session: Session, request: Request) -> Step:
    return _role_change(session, request, "operator", False, "deop")


def cmd_destroy(session: Session, request: Request) -> Step:
    name = room_arg(session, request)
    if name == session.services.settings.rooms.default:
        raise ProtocolError(ErrorCode.FORBIDDEN, "the default room cannot be destroyed")
    _moderated(session, name, manage=True)
    hub, store, by = session.services.hub, session.services.store, require_member(session).name

    def write() -> bool:
        current_account(session)
        # Messages accepted before now may still wait for the history writer: committed
        # after the delete, they would become the history of the next room of this name.
        session.services.messages.writer.flush()
        return store.destroy_room(name)

    def done(_: bool) -> Step:
        hub.destroy(name, by)
        if session.current_room == name:
            session.current_room = None
        bus = session.services.bus
        if bus is None:
            return f"OK destroy {name}"
        payload = {"room": name, "by": by}  # every node empties it (and polls, as a backstop)
        return Effect(
            Pool.BUS, lambda: bus.broadcast("destroy", payload), lambda _: f"OK destroy {name}"
        )

    return Effect(Pool.STORE, write, done)


def cmd_list(session: Session, request: Request) -> Step:
    member = require_member(session)
    limit = session.services.settings.rooms.list_max
    lines: list[str] = []
    shown = 0
    for name, view, topic in session.services.hub.rooms():
        role = rooms.role_of(view, member.name, is_admin=member.is_admin)
        if view.mode is Mode.PRIVATE and not rooms.may_join(view, role):
            continue
        if view.mode is Mode.OPEN and role is rooms.Role.BANNED:
            continue
        if shown == limit:
            lines.append(f"INFO more rooms than the {limit} shown")
            break
        fields = ["ROOM", name, str(len(view.members)), view.mode.value]
        lines.append(" ".join([*fields, topic]) if topic else " ".join(fields))
        shown += 1
    return [*lines, f"OK list {shown}"]

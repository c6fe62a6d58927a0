"""The requests of protocol version 1: one handler per verb, and the table that routes them.
The verbs that change a room's settings are in :mod:`sealroom.session.room_settings`, and
what every handler shares in :mod:`sealroom.session.verbs`.

A handler decides from memory. What needs the database or argon2 it returns as an
:class:`~sealroom.session.effects.Effect` whose ``work`` runs on a worker and whose ``then``
finishes the request back on the session's thread — so a handler that blocks cannot be
written by accident: the store and the hasher are only ever named inside ``work``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.model import Account, RoomRecord, RoomView, StoredMessage
from sealroom.core.protocol import SAY_CURRENT, Request, Rest, Syntax, encode_line
from sealroom.core.text import password_problem, user_name
from sealroom.policy import rooms
from sealroom.session.bus import Bus, room_payload
from sealroom.session.effects import Effect, Pool, Reply, Step
from sealroom.session.machine import Command, Session, SessionEnded, hist_line
from sealroom.session.room_settings import (
    cmd_ban,
    cmd_deop,
    cmd_destroy,
    cmd_invite,
    cmd_list,
    cmd_mode,
    cmd_op,
    cmd_topic,
    cmd_unban,
)
from sealroom.session.verbs import (
    account_exists,
    current_account,
    loggable_name,
    require_member,
    role_in,
    room_arg,
    shared_login_token,
    take_login_token,
    user_arg,
)
from sealroom.state.hub import OPERATOR, Member
from sealroom.state.messages import IdsExhausted

log = logging.getLogger("sealroom.session")

DEFAULT_HISTORY = 20


# -- logging in -------------------------------------------------------------------------------


def cmd_login(session: Session, request: Request) -> Step:
    if session.member is not None:
        raise ProtocolError(ErrorCode.ALREADY_LOGGED_IN, f"you are {session.member.name}")
    take_login_token(session)
    auth = session.services.auth
    raw_name, password = request.args[0], request.text or ""
    # An invalid name cannot exist: it takes the unknown-account path, same reply, same time.
    name = user_name(raw_name) or ""
    if session.services.settings.tls.client_ca is not None and session.client_cn != name:
        # The certificate names someone else: fail, at the cost of a real check, and without
        # touching the account (not even its last-login time).
        name = ""

    def verify() -> Account | None:
        shared_login_token(session)
        return auth.verify_login(name, password)  # ServerBusy is an ERR server-busy

    return Effect(Pool.ARGON2, verify, lambda account: _complete_login(session, account, raw_name))


def cmd_resume(session: Session, request: Request) -> Step:
    if session.member is not None:
        raise ProtocolError(ErrorCode.ALREADY_LOGGED_IN, f"you are {session.member.name}")
    take_login_token(session)
    raw_name, token = request.args
    tokens = session.services.tokens
    name = user_name(raw_name) or ""

    def verify() -> Account | None:
        shared_login_token(session)
        return tokens.verify(name, token)

    return Effect(Pool.STORE, verify, lambda account: _complete_login(session, account, raw_name))


def cmd_token(session: Session, request: Request) -> Step:
    tokens, member = session.services.tokens, require_member(session)

    def mint() -> tuple[str, str]:
        current_account(session)
        issued = tokens.issue(member.name, member.stamp)
        if issued is None:  # changed between the check and the write
            raise SessionEnded("account-changed")
        return issued

    return Effect(Pool.STORE, mint, lambda issued: f"OK token {issued[0]} {issued[1]}")


def _complete_login(session: Session, account: Account | None, raw_name: str) -> Step:
    """Shared by /login and /resume: the checks after the credential, then the session."""
    services = session.services
    if session.member is not None:  # two logins pipelined: the first one won
        raise ProtocolError(ErrorCode.ALREADY_LOGGED_IN, f"you are {session.member.name}")
    client_ca = services.settings.tls.client_ca
    if account is not None and client_ca is not None and session.client_cn != account.name:
        account = None
    if account is None:
        services.counters.logins_failed += 1
        log.info("%s: login failed for %s", session.describe(), loggable_name(raw_name))
        raise ProtocolError(ErrorCode.AUTH_FAILED, "wrong name or password")
    limit = services.settings.limits.max_sessions_per_user
    if services.hub.session_count(account.name) >= limit:
        raise ProtocolError(ErrorCode.FORBIDDEN, f"{account.name} has {limit} sessions already")
    member = Member(account.name, session.outbox, is_admin=account.is_admin, stamp=account.stamp)
    if services.bus is not None:
        return _cluster_login(session, services.bus, member)
    # Attached before stored messages are claimed: each is then delivered live or claimed.
    services.hub.attach(member)
    session.member = member
    services.counters.logins_ok += 1
    log.info("%s: logged in", session.describe())
    default = services.settings.rooms.default
    try:
        # The room policy holds here too: a user banned from the default room (or not
        # invited, if it is private) logs in without entering it.
        reply = encode_line("OK", "login", account.name, default)
        services.hub.join(member, default, reply, _admit(member))
        session.current_room = default
    except ProtocolError as error:
        log.info("%s: could not join %s: %s", session.describe(), default, error.text)
        session.push_line(f"OK login {account.name}")
    return _claim_stored(session, account.name)


def _claim_stored(session: Session, name: str) -> Step:
    messages, batch = session.services.messages, session.outbox.limit // 4

    def deliver(found: list[StoredMessage]) -> Reply:
        session.deliver_stored(found)
        return None

    # The first batch of stored messages is part of the login: it comes before the reply
    # to the client's next request. Later batches follow as the client reads.
    return Effect(
        Pool.STORE,
        lambda: messages.claim(name, batch),
        deliver,
        abandon=lambda found: messages.release([m.id for m in found]),
    )


def _cluster_login(session: Session, bus: Bus, member: Member) -> Step:
    """A login in a cluster: counted online, and in the default room, through the bus."""
    services = session.services
    hub, name = services.hub, member.name
    limit = services.settings.limits.max_sessions_per_user
    default: str | None = services.settings.rooms.default
    try:
        hub.check_join(member, default or "", _admit(member))
    except ProtocolError as error:
        log.info("%s: could not join %s: %s", session.describe(), default, error.text)
        default = None
    # Attached first: a private message published from now on finds this session, and a
    # connection that closes meanwhile leaves the cluster as any session does.
    hub.attach(member)
    member.on_mail = session.check_mail
    session.member = member

    def enter() -> tuple[ProtocolError | None, bool, bool]:
        """(why not logged in, whether in the default room, whether counted online)."""
        reply = encode_line("OK", "login", name, default) if default else b""
        try:
            joined = bus.login(member, limit, default, reply, _admit(member))
        except ProtocolError as error:
            if error.code is ErrorCode.FORBIDDEN:  # full or banned by now: in, roomless
                return None, False, True
            return error, False, True  # counted, or may be: counted out again
        if joined is None:
            refused = ProtocolError(ErrorCode.FORBIDDEN, f"{name} has {limit} sessions already")
            return refused, False, False
        return None, joined, True

    def entered(outcome: tuple[ProtocolError | None, bool, bool]) -> Step:
        error, joined, counted = outcome
        if error is not None:  # not logged in after all: as if it never began
            session.member = None
            hub.detach(member)
            if counted:
                bus.leave(member, [])
            raise error
        services.counters.logins_ok += 1
        log.info("%s: logged in", session.describe())
        if joined:
            session.current_room = default
        else:
            session.push_line(f"OK login {name}")
        return _claim_stored(session, name)

    return Effect(Pool.BUS, enter, entered)


# -- rooms --------------------------------------------------------------------------------------


def _admit(member: Member) -> Callable[[RoomView], None]:
    """The join check, run by the hub under its lock."""

    def check(view: RoomView) -> None:
        if not rooms.may_join(view, rooms.role_of(view, member.name, is_admin=member.is_admin)):
            raise ProtocolError(ErrorCode.FORBIDDEN, "you may not join this room")

    return check


def _joined(room: str, topic: str) -> bytes:
    return encode_line("OK", "join", room, topic) if topic else encode_line("OK", "join", room)


def cmd_join(session: Session, request: Request) -> Step:
    name = room_arg(session, request)
    member = require_member(session)
    hub, store = session.services.hub, session.services.store
    if session.services.bus is not None:
        return _cluster_join(session, session.services.bus, member, name)
    try:
        hub.join(member, name, _joined(name, hub.topic(name)), _admit(member))
    except ProtocolError as error:
        if error.code is not ErrorCode.NO_SUCH_ROOM:
            raise
    else:
        session.current_room = name
        return None
    # A new room: its creator owns it. The store decides who was first.
    hub.may_create(member)

    def create() -> RoomRecord:
        current_account(session)
        store.create_room(name, member.name)
        record = store.get_room(name)
        if record is None:  # destroyed as soon as made: let the join say so
            raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"{name} does not exist")
        return record

    def enter(record: RoomRecord) -> Reply:
        hub.apply(record)
        hub.join(member, name, _joined(name, record.topic), _admit(member))
        session.current_room = name
        return None

    return Effect(Pool.STORE, create, enter)


def _cluster_join(session: Session, bus: Bus, member: Member, name: str) -> Step:
    """The cluster's join: checked here, then ordered by the bus, which queues the reply
    when every node's copy of the room has the session in it."""
    hub, store = session.services.hub, session.services.store

    def entered(_: None) -> Reply:
        session.current_room = name
        return None

    if name in member.rooms:
        session.current_room = name
        return _joined(name, hub.topic(name)).decode().rstrip("\n")
    try:
        hub.check_join(member, name, _admit(member))
    except ProtocolError as error:
        if error.code is not ErrorCode.NO_SUCH_ROOM:
            raise
    else:
        reply = _joined(name, hub.topic(name))
        return Effect(Pool.BUS, lambda: bus.join(member, name, reply, _admit(member)), entered)
    hub.may_create(member)

    def create() -> RoomRecord:
        current_account(session)
        store.create_room(name, member.name)
        record = store.get_room(name)
        if record is None:  # destroyed as soon as made: let the join say so
            raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"{name} does not exist")
        return record

    def created(record: RoomRecord) -> Step:
        hub.apply(record)
        reply = _joined(name, record.topic)

        def share_and_join() -> None:  # in this order: every node knows the room first
            bus.broadcast("room", {"record": room_payload(record), "by": OPERATOR})
            bus.join(member, name, reply, _admit(member))

        return Effect(Pool.BUS, share_and_join, entered)

    return Effect(Pool.STORE, create, created)


def cmd_part(session: Session, request: Request) -> Step:
    name = room_arg(session, request)
    bus = session.services.bus
    if bus is not None:
        member = require_member(session)
        if name not in member.rooms:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"you are not in {name}")

        def parted(_: None) -> Reply:
            if session.current_room == name:
                session.current_room = None
            return f"OK part {name}"

        return Effect(Pool.BUS, lambda: bus.part(member, name), parted)
    session.services.hub.part(require_member(session), name)
    if session.current_room == name:
        session.current_room = None
    return f"OK part {name}"


def _say(session: Session, room: str, text: str, *, outside: bool = False) -> Step:
    if not text.strip():
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, "empty message")
    bus = session.services.bus
    if bus is not None:
        return _cluster_say(session, bus, room, text, outside=outside)
    messages = session.services.messages
    if messages.backed_up:
        # The disk is behind: this sender waits for room on a worker, nobody else does.
        wait = messages.writer.wait_for_room
        return Effect(Pool.STORE, wait, lambda _: _say(session, room, text, outside=outside))
    try:
        member = require_member(session)
        # /say #ROOM may post from outside a room the session may join (as `sealroom send`).
        admit = _admit(member) if outside else None
        message_id = messages.say(member, room, text, admit)
    except IdsExhausted:  # a burst outran the ids reserved ahead: reserve, then say
        refill = messages.ids.refill
        return Effect(Pool.STORE, refill, lambda _: _say(session, room, text, outside=outside))
    session.services.counters.messages_room += 1
    return f"OK say {room} {message_id}"


def _cluster_say(session: Session, bus: Bus, room: str, text: str, *, outside: bool) -> Step:
    """Ordered by the bus: every node, this one too, relays it from there."""
    member = require_member(session)
    if room not in member.rooms:  # a member's room exists: no copy of its view per message
        view = session.services.hub.view(room)  # no-such-room first, as on a single node
        if not outside:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"you are not in {room}")
        _admit(member)(view)  # an outsider may post where it may join, never elsewhere

    def said(message_id: int) -> Reply:
        session.services.counters.messages_room += 1
        return f"OK say {room} {message_id}"

    # Pipelined: the session reads on and more messages go out meanwhile, in one batch;
    # no thread waits for this one (its Later says when it is durable).
    return Effect(Pool.LATER, lambda: bus.say_later(member, room, text), said, pipelined=True)


def cmd_say(session: Session, request: Request) -> Step:
    return _say(session, room_arg(session, request), request.text or "", outside=True)


def cmd_say_current(session: Session, request: Request) -> Step:
    if session.current_room is None:
        raise ProtocolError(ErrorCode.NOT_IN_ROOM, "you are in no room; /join #ROOM")
    return _say(session, session.current_room, request.text or "")


def cmd_who(session: Session, request: Request) -> Step:
    name = room_arg(session, request)
    hub = session.services.hub
    view = hub.view(name)
    if not rooms.may_see(view, require_member(session).name, role_in(session, view)):
        raise ProtocolError(ErrorCode.FORBIDDEN, f"{name} is private")
    return " ".join(["OK", "who", name, *hub.who(name)])


def cmd_rooms(session: Session, request: Request) -> Step:
    return " ".join(["OK", "rooms", *sorted(require_member(session).rooms)])


# -- private messages and history ---------------------------------------------------------------


def cmd_msg(session: Session, request: Request) -> Step:
    recipient = user_arg(request.args[0])
    text = request.text or ""
    if not text.strip():
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, "empty message")
    sender = require_member(session).name
    services = session.services

    def send() -> int:
        current_account(session)
        account = services.store.get_account(recipient)
        if account is None:
            raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no account {recipient}")
        bus = services.bus
        if bus is None:
            return services.messages.send_private(sender, recipient, text, account.stamp)
        if not bus.online(recipient):
            services.messages.check_quota(sender, recipient)
        return bus.direct(sender, recipient, text, account.stamp)[0]

    def sent(message_id: int) -> Reply:
        services.counters.messages_private += 1
        return f"OK msg {recipient} {message_id}"

    return Effect(Pool.STORE if services.bus is None else Pool.BUS, send, sent)


def cmd_history(session: Session, request: Request) -> Step:
    services = session.services
    member = require_member(session)
    target = request.args[0]
    limit = _history_limit(
        request.args[1] if len(request.args) > 1 else None, services.settings.history.max_query
    )
    messages = services.messages
    if target.startswith("#"):
        room = room_arg(session, request)
        view = services.hub.view(room)
        role = rooms.role_of(view, member.name, is_admin=member.is_admin)
        if not rooms.may_read_history(view, member.name, role):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{room}'s history is for its members")

        def read_room() -> list[StoredMessage]:
            current_account(session)
            return messages.room_history(room, limit)

        return Effect(Pool.STORE, read_room, lambda found: _history_reply(room, found))
    other = user_name(target)
    if other is None:
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, "usage: /history #ROOM|NAME [N]")

    def read() -> list[StoredMessage]:
        current_account(session)
        if not account_exists(session, other):
            raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no account {other}")
        return messages.conversation(member.name, other, limit)

    return Effect(Pool.STORE, read, lambda found: _history_reply(other, found))


def _history_reply(target: str, found: list[StoredMessage]) -> Reply:
    return [*(hist_line(m) for m in found), f"OK history {target} {len(found)}"]


def _history_limit(raw: str | None, maximum: int) -> int:
    if raw is None:
        return min(DEFAULT_HISTORY, maximum)
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, f"N is a number from 1 to {maximum}")
    return int(raw)


# -- the account --------------------------------------------------------------------------------


def cmd_passwd(session: Session, request: Request) -> Step:
    member = require_member(session)
    old, new = request.args[0], request.text or ""
    problem = password_problem(new)
    if problem:
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, problem)
    take_login_token(session)
    services = session.services
    auth, store = services.auth, services.store

    def change() -> int:
        account = current_account(session)
        if not auth.verify_password(member.name, old):
            raise ProtocolError(ErrorCode.AUTH_FAILED, "wrong password")
        renewed = store.change_password(
            member.name, member.stamp, account.password_hash, auth.hash_password(new)
        )
        if renewed is None:  # another change won the race: this session's record is gone
            raise SessionEnded("account-changed")
        return renewed

    def changed(stamp: int) -> Reply:
        member.stamp = stamp
        # The account's other sessions may be a thief's: they end, and their tokens are gone.
        others = services.hub.disconnect_stale(member.name, stamp, "account-changed")
        log.info("%s: password changed; %d other sessions closed", session.describe(), others)
        return "OK passwd"

    return Effect(Pool.ARGON2, change, changed)


# -- the rest -----------------------------------------------------------------------------------


def cmd_ping(session: Session, request: Request) -> Step:
    return f"OK ping {request.text}" if request.text else "OK ping"


def cmd_help(session: Session, request: Request) -> Step:
    lines = [f"INFO {c.syntax.usage} - {c.summary}" for verb, c in COMMANDS.items() if verb]
    return [*lines, "OK help"]


def cmd_quit(session: Session, request: Request) -> Step:
    session.push_line("OK quit")
    session.outbox.close("quit", wake=False)
    return None


def _require_admin(session: Session) -> None:
    """Blocking: the record, read now, is still an enabled admin's."""
    if not current_account(session).is_admin:
        raise ProtocolError(ErrorCode.FORBIDDEN, "admins only")


def cmd_kick(session: Session, request: Request) -> Step:
    target = user_arg(request.args[0])
    reason = f"kicked by {require_member(session).name}"
    if request.text and request.text.strip():
        reason += f": {request.text.strip()}"
    hub = session.services.hub

    def check() -> bool:
        _require_admin(session)
        return account_exists(session, target)

    def kick(exists: bool) -> Step:
        if not exists:
            raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no account {target}")
        bus = session.services.bus
        if bus is not None:  # every node closes its sessions of the target
            payload = {"name": target, "reason": reason}
            log.info("%s: kicking %s on every node", session.describe(), target)
            return Effect(
                Pool.BUS, lambda: bus.broadcast("kick", payload), lambda _: f"OK kick {target}"
            )
        closed = hub.disconnect(target, reason)
        log.info("%s: kicked %s (%d sessions)", session.describe(), target, closed)
        return f"OK kick {target}"

    return Effect(Pool.STORE, check, kick)


def cmd_wall(session: Session, request: Request) -> Step:
    hub, name, text = session.services.hub, require_member(session).name, request.text or ""

    def wall(_: None) -> Step:
        bus = session.services.bus
        if bus is not None:
            payload = {"from": name, "text": text}
            return Effect(Pool.BUS, lambda: bus.broadcast("wall", payload), lambda _: "OK wall")
        hub.wall(name, text)
        return "OK wall"

    return Effect(Pool.STORE, lambda: _require_admin(session), wall)


COMMANDS: dict[str, Command] = {
    "login": Command(
        Syntax("/login NAME PASSWORD", 1, rest=Rest.REQUIRED),
        cmd_login,
        "log in",
        login=False,
        rate_limited=False,
    ),
    "join": Command(Syntax("/join #ROOM", 1), cmd_join, "join a room; it becomes current"),
    "part": Command(Syntax("/part [#ROOM]", 0, 1), cmd_part, "leave a room (default: current)"),
    "say": Command(
        Syntax("/say #ROOM TEXT", 1, rest=Rest.REQUIRED),
        cmd_say,
        "send TEXT to #ROOM (a plain line goes to the current room)",
    ),
    SAY_CURRENT: Command(
        Syntax("TEXT", rest=Rest.REQUIRED), cmd_say_current, "send TEXT to the current room"
    ),
    "msg": Command(
        Syntax("/msg NAME TEXT", 1, rest=Rest.REQUIRED), cmd_msg, "private message to NAME"
    ),
    "history": Command(
        Syntax("/history #ROOM|NAME [N]", 1, 1),
        cmd_history,
        "the last N messages of a room or of your conversation with NAME",
    ),
    "who": Command(Syntax("/who [#ROOM]", 0, 1), cmd_who, "members of a room"),
    "list": Command(Syntax("/list"), cmd_list, "the rooms you may join"),
    "topic": Command(
        Syntax("/topic #ROOM [TEXT]", 1, rest=Rest.OPTIONAL),
        cmd_topic,
        "show the topic; with TEXT, operators set it",
    ),
    "mode": Command(Syntax("/mode #ROOM open|private", 2), cmd_mode, "operators: who may join"),
    "invite": Command(
        Syntax("/invite NAME #ROOM", 2), cmd_invite, "operators: let NAME into a private room"
    ),
    "ban": Command(
        Syntax("/ban NAME #ROOM [REASON]", 2, rest=Rest.OPTIONAL),
        cmd_ban,
        "operators: remove NAME from the room and keep NAME out",
    ),
    "unban": Command(Syntax("/unban NAME #ROOM", 2), cmd_unban, "operators: lift a ban"),
    "op": Command(Syntax("/op NAME #ROOM", 2), cmd_op, "the owner: make NAME an operator"),
    "deop": Command(Syntax("/deop NAME #ROOM", 2), cmd_deop, "the owner: take it back"),
    "destroy": Command(
        Syntax("/destroy #ROOM", 1), cmd_destroy, "the owner: delete the room and its history"
    ),
    "rooms": Command(Syntax("/rooms"), cmd_rooms, "rooms you are in"),
    "token": Command(Syntax("/token"), cmd_token, "a resume token for this account"),
    "resume": Command(
        Syntax("/resume NAME TOKEN", 2),
        cmd_resume,
        "log in with a resume token",
        login=False,
        rate_limited=False,
    ),
    "passwd": Command(
        Syntax("/passwd OLD NEW", 1, rest=Rest.REQUIRED), cmd_passwd, "change your password"
    ),
    "ping": Command(
        Syntax("/ping [TOKEN]", rest=Rest.OPTIONAL), cmd_ping, "liveness check", login=False
    ),
    "help": Command(Syntax("/help"), cmd_help, "this list", login=False),
    "quit": Command(
        Syntax("/quit [REASON]", rest=Rest.OPTIONAL),
        cmd_quit,
        "leave",
        login=False,
        rate_limited=False,
    ),
    "kick": Command(
        Syntax("/kick NAME [REASON]", 1, rest=Rest.OPTIONAL),
        cmd_kick,
        "admins: disconnect all of NAME's sessions",
        admin=True,
    ),
    "wall": Command(
        Syntax("/wall TEXT", rest=Rest.REQUIRED),
        cmd_wall,
        "admins: announce to everyone",
        admin=True,
    ),
}

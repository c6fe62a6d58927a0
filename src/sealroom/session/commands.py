"""The requests of protocol version 1: one handler per verb, and the table that routes them.

A handler decides from memory. What needs the database or argon2 it returns as an
:class:`~sealroom.session.effects.Effect` whose ``work`` runs on a worker and whose ``then``
finishes the request back on the session's thread — so a handler that blocks cannot be
written by accident: the store and the hasher are only ever named inside ``work``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.model import Account, Mode, RoomRecord, RoomView, StoredMessage
from sealroom.core.protocol import SAY_CURRENT, Request, Rest, Syntax, encode_line
from sealroom.core.text import password_problem, room_name, user_name
from sealroom.policy import rooms
from sealroom.policy.ratelimit import retry_after_text
from sealroom.session.bus import Bus, room_payload
from sealroom.session.effects import Effect, Pool, Reply, Step
from sealroom.session.machine import Command, Session, SessionEnded, hist_line
from sealroom.state.hub import OPERATOR, Member
from sealroom.state.messages import IdsExhausted

log = logging.getLogger("sealroom.session")

DEFAULT_HISTORY = 20


# -- helpers ----------------------------------------------------------------------------------


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
    _login_limited(session.services.login_buckets.take(session.peer))


def _login_limited(wait: float) -> None:
    if wait:
        text = f"too many login attempts; {retry_after_text(wait)}"
        raise ProtocolError(ErrorCode.RATE_LIMITED, text)


def _shared_login_token(session: Session) -> None:
    """Blocking: in a cluster an address has one login budget, not one per node."""
    bus = session.services.bus
    if bus is not None:
        rate = session.services.settings.rate.logins_per_ip
        _login_limited(bus.take("logins", session.peer, rate.rate, rate.burst))


def _share_room(
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


def _user_arg(raw: str) -> str:
    name = user_name(raw)
    if name is None:
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, "a user name is [a-z0-9][a-z0-9_.-]")
    return name


def _account_exists(session: Session, name: str) -> bool:
    """Blocking: for an effect's work."""
    services = session.services
    if services.bus is None and services.hub.is_online(name):
        return True
    return services.store.get_account(name) is not None


def _current(session: Session) -> Account:
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
        _shared_login_token(session)
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
        _shared_login_token(session)
        return tokens.verify(name, token)

    return Effect(Pool.STORE, verify, lambda account: _complete_login(session, account, raw_name))


def cmd_token(session: Session, request: Request) -> Step:
    tokens, member = session.services.tokens, require_member(session)

    def mint() -> tuple[str, str]:
        _current(session)
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
        _current(session)
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
        _current(session)
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


def _role(session: Session, view: RoomView) -> rooms.Role:
    member = require_member(session)
    return rooms.role_of(view, member.name, is_admin=member.is_admin)


def cmd_who(session: Session, request: Request) -> Step:
    name = room_arg(session, request)
    hub = session.services.hub
    view = hub.view(name)
    if not rooms.may_see(view, require_member(session).name, _role(session, view)):
        raise ProtocolError(ErrorCode.FORBIDDEN, f"{name} is private")
    return " ".join(["OK", "who", name, *hub.who(name)])


def cmd_rooms(session: Session, request: Request) -> Step:
    return " ".join(["OK", "rooms", *sorted(require_member(session).rooms)])


# -- private messages and history ---------------------------------------------------------------


def cmd_msg(session: Session, request: Request) -> Step:
    recipient = _user_arg(request.args[0])
    text = request.text or ""
    if not text.strip():
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, "empty message")
    sender = require_member(session).name
    services = session.services

    def send() -> int:
        _current(session)
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
            _current(session)
            return messages.room_history(room, limit)

        return Effect(Pool.STORE, read_room, lambda found: _history_reply(room, found))
    other = user_name(target)
    if other is None:
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, "usage: /history #ROOM|NAME [N]")

    def read() -> list[StoredMessage]:
        _current(session)
        if not _account_exists(session, other):
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
        account = _current(session)
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


# -- room settings ------------------------------------------------------------------------------

TOPIC_MAX = 300


def _moderated(session: Session, name: str, *, manage: bool = False) -> RoomView:
    """The room's view, if this session may moderate it (or manage it: op, deop, destroy)."""
    view = session.services.hub.view(name)
    role = _role(session, view)
    allowed = rooms.may_manage(role) if manage else rooms.may_moderate(role)
    if not allowed:
        who = "the owner" if manage else "operators"
        raise ProtocolError(ErrorCode.FORBIDDEN, f"only {who} of {name} may do that")
    return view


def _target_account(session: Session, raw: str) -> Account:
    """Blocking: the account a room request names (it must exist)."""
    name = _user_arg(raw)
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
        if not rooms.may_see(view, member.name, _role(session, view)):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{name} is private")
        topic = hub.topic(name)
        return f"OK topic {name} {topic}" if topic else f"OK topic {name}"
    if len(text) > TOPIC_MAX:
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, f"a topic is at most {TOPIC_MAX} characters")
    _moderated(session, name)
    store = session.services.store

    def write() -> RoomRecord:
        _current(session)
        store.set_room(name, topic=text)
        return _stored(session, name)

    def done(record: RoomRecord) -> Step:
        hub.apply(record)
        line = encode_line("TOPIC", name, member.name, text)
        hub.announce(name, line)
        return _share_room(session, record, f"OK topic {name} {text}", line=line)

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
        _current(session)
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
        return _share_room(session, record, f"OK mode {name} {mode.value}", line=line)

    return Effect(Pool.STORE, write, done)


def cmd_invite(session: Session, request: Request) -> Step:
    name = room_arg(session, request, 1)
    _moderated(session, name)
    hub, store, by = session.services.hub, session.services.store, require_member(session).name

    def write() -> tuple[str, RoomRecord]:
        _current(session)
        invited = _target_account(session, request.args[0]).name
        store.set_role(name, invited, "invited", True)
        return invited, _stored(session, name)

    def done(result: tuple[str, RoomRecord]) -> Step:
        invited, record = result
        hub.apply(record)
        line = encode_line("INVITE", name, by)
        hub.notify(invited, line)
        reply = f"OK invite {invited} {name}"
        return _share_room(session, record, reply, line=line, notify=invited)

    return Effect(Pool.STORE, write, done)


def cmd_ban(session: Session, request: Request) -> Step:
    name = room_arg(session, request, 1)
    view = _moderated(session, name)
    reason = (request.text or "").strip()
    hub, store, by = session.services.hub, session.services.store, require_member(session).name

    def write() -> tuple[str, RoomRecord]:
        _current(session)
        target = _target_account(session, request.args[0])
        if not rooms.may_be_banned(view, target.name, is_admin=target.is_admin):
            raise ProtocolError(ErrorCode.FORBIDDEN, "the owner and admins cannot be banned")
        store.set_role(name, target.name, "banned", True)
        return target.name, _stored(session, name)

    def done(result: tuple[str, RoomRecord]) -> Step:
        banned, record = result
        # At once, under the hub's lock: after this no message of theirs reaches the room.
        hub.apply(record, by=by, reason=reason)
        return _share_room(session, record, f"OK ban {banned} {name}", by=by, reason=reason)

    return Effect(Pool.STORE, write, done)


def _role_change(session: Session, request: Request, role: str, held: bool, verb: str) -> Step:
    name = room_arg(session, request, 1)
    view = _moderated(session, name, manage=role == "operator")
    hub, store = session.services.hub, session.services.store

    def write() -> tuple[str, RoomRecord]:
        _current(session)
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
        return _share_room(session, record, f"OK {verb} {target} {name}")

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
        _current(session)
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
    if not _current(session).is_admin:
        raise ProtocolError(ErrorCode.FORBIDDEN, "admins only")


def cmd_kick(session: Session, request: Request) -> Step:
    target = _user_arg(request.args[0])
    reason = f"kicked by {require_member(session).name}"
    if request.text and request.text.strip():
        reason += f": {request.text.strip()}"
    hub = session.services.hub

    def check() -> bool:
        _require_admin(session)
        return _account_exists(session, target)

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

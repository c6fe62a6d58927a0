"""One client's session as a state machine: validated lines in, replies and hub calls out.

No sockets and no real clock: the connection shell feeds bytes and drains the outbox; time
comes from the injected clock. Each line goes through the pipeline SPEC.md describes —
framing, validator, authentication, rate limits, then the hub — and gets exactly one final
reply, pushed whole so no event can fall between a reply's data lines and its last line.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sealroom import PROTOCOL_VERSION
from sealroom.config import Settings
from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.model import Account, StoredMessage
from sealroom.core.protocol import (
    SAY_CURRENT,
    Framing,
    LineBuffer,
    Request,
    Rest,
    Syntax,
    decode_line,
    encode_line,
    parse_arguments,
    split_request,
)
from sealroom.core.storage import Store
from sealroom.core.text import escape_for_log, password_problem, room_name, user_name
from sealroom.policy.auth import Authenticator, ResumeTokens
from sealroom.policy.ratelimit import Clock, KeyedBuckets, TokenBucket, retry_after_text
from sealroom.state.counters import Counters
from sealroom.state.hub import Hub, Member
from sealroom.state.messages import MessageLog
from sealroom.state.outbox import Outbox

log = logging.getLogger("sealroom.session")

Reply = list[str] | str | None  # data lines then the final line; None: already queued


@dataclass(frozen=True, slots=True)
class Services:
    """What a session may use: shared by every session of the server."""

    settings: Settings
    hub: Hub
    auth: Authenticator
    store: Store
    messages: MessageLog
    tokens: ResumeTokens
    login_buckets: KeyedBuckets
    clock: Clock
    counters: Counters = field(default_factory=Counters)


@dataclass(frozen=True, slots=True)
class Command:
    """One row of the dispatch table."""

    syntax: Syntax
    handler: Callable[[Session, Request], Reply]
    summary: str
    login: bool = True
    admin: bool = False
    rate_limited: bool = True
    # May block for milliseconds (argon2, a SQLite read or commit): never run on the reactor,
    # where it would hold up every connection it owns.
    blocking: bool = False


class Pending(enum.Enum):
    """Why :meth:`Session.process` stopped."""

    NOTHING = "nothing"  # every complete line is handled
    BACKLOG = "backlog"  # replies pile up unread: handle the rest once they drain
    BLOCKING = "blocking"  # the next line blocks; run it on a thread of its own


class Session:
    """The protocol state of one connection, from HELLO to BYE."""

    def __init__(
        self, services: Services, outbox: Outbox, peer: str, client_cn: str | None = None
    ) -> None:
        self.services = services
        self.outbox = outbox
        self.peer = peer
        self.client_cn = client_cn
        settings = services.settings
        self._lines = LineBuffer(settings.limits.max_line_bytes)
        self._high_water = outbox.limit // 2
        now = services.clock()
        self._login_deadline = now + settings.limits.login_timeout_s
        self._last_activity = now
        self._errors = TokenBucket(
            settings.rate.errors.rate, settings.rate.errors.burst, services.clock
        )
        self._messages = TokenBucket(
            settings.rate.messages.rate, settings.rate.messages.burst, services.clock
        )
        self.member: Member | None = None
        self.current_room: str | None = None
        self._in_delivery: set[int] = set()  # stored messages queued but not yet written
        self._held: bytes | None = None  # a blocking line that ``process(inline=True)`` left

    @property
    def name(self) -> str | None:
        return self.member.name if self.member else None

    def describe(self) -> str:
        """Who this is, for log lines: address and account."""
        return f"{self.peer} [{self.name or '-'}]"

    # -- the shell's interface --------------------------------------------------------------

    def greet(self) -> None:
        settings = self.services.settings
        self.push_line(
            f"HELLO sealroom {PROTOCOL_VERSION} {settings.server_name} "
            "welcome; log in with /login NAME PASSWORD"
        )

    def feed(self, data: bytes) -> None:
        self._lines.feed(data)

    @property
    def has_input(self) -> bool:
        """Bytes are buffered that :meth:`process` has not turned into requests yet."""
        return self._held is not None or self._lines.buffered > 0

    @property
    def wants_input(self) -> bool:
        """False while our own replies are piling up unread: stop reading, not drop."""
        return self.outbox.closing is None and self.outbox.size < self._high_water

    def process(self, *, inline: bool = False) -> Pending:
        """Handle buffered lines while the client keeps up with the replies.

        ``inline``: the caller must not block (the reactor), so stop before a blocking
        request and keep it for the next call, which its own thread makes.
        """
        while self.wants_input:
            event = self._held or self._lines.next_event()
            self._held = None
            if event is None:
                return Pending.NOTHING
            if inline and isinstance(event, bytes) and self._may_block(event):
                self._held = event
                return Pending.BLOCKING
            self._last_activity = self.services.clock()
            if event is Framing.LINE_TOO_LONG:
                limit = self.services.settings.limits.max_line_bytes
                self._refuse(
                    ProtocolError(ErrorCode.LINE_TOO_LONG, f"lines are at most {limit} bytes")
                )
            elif event:
                self._handle_line(event)
        return Pending.BACKLOG

    def _may_block(self, raw: bytes) -> bool:
        # While the history writer is backed up, storing a message waits for the disk.
        return _blocks(raw) or self.services.messages.backed_up

    def check_timeouts(self) -> float:
        """Close the session if a deadline passed; returns the next deadline."""
        now = self.services.clock()
        if self.member is None:
            if now >= self._login_deadline:
                self.outbox.close("login-timeout", wake=False)
            return self._login_deadline
        idle_deadline = self._last_activity + self.services.settings.limits.idle_timeout_s
        if now >= idle_deadline:
            self.outbox.close("idle-timeout", wake=False)
        return idle_deadline

    def finish(self) -> None:
        """The connection is gone: leave the hub; undelivered stored messages stay stored."""
        if self.member is not None:
            self.services.hub.detach(self.member)
            if self._in_delivery:
                self.services.messages.release(list(self._in_delivery))
            log.info("%s: logged out", self.describe())

    def deliver_stored(self, messages: list[StoredMessage]) -> None:
        """Queue stored private messages; each batch is marked delivered once written,
        and then the next batch is claimed, so the outbox never holds them all at once."""
        if not messages or self.member is None:
            return
        name = self.member.name
        ids = [m.id for m in messages]
        self._in_delivery.update(ids)
        log_ = self.services.messages

        def written() -> None:
            log_.delivered(ids)
            self._in_delivery.difference_update(ids)
            self.deliver_stored(log_.claim(name, self.outbox.limit // 4))

        self.outbox.push(
            encode_lines([hist_line(m) for m in messages]), wake=False, on_sent=written
        )

    # -- the pipeline -----------------------------------------------------------------------

    def _handle_line(self, raw: bytes) -> None:
        try:
            reply = self._dispatch(raw)
        except ProtocolError as error:
            self._refuse(error)
            return
        except Exception:
            log.exception("%s: internal error while handling a request", self.describe())
            self.outbox.close("internal-error", wake=False)
            return
        if isinstance(reply, str):
            self.push_line(reply)
        elif reply:
            self.outbox.push(encode_lines(reply), wake=False)

    def _dispatch(self, raw: bytes) -> Reply:
        text = decode_line(raw)
        verb, remainder = split_request(text)
        command = COMMANDS.get(verb)
        if command is None:
            raise ProtocolError(ErrorCode.BAD_COMMAND, f"unknown command /{verb}; try /help")
        if command.login and self.member is None:
            raise ProtocolError(ErrorCode.AUTH_REQUIRED, "log in first: /login NAME PASSWORD")
        if command.admin and not (self.member and self.member.is_admin):
            raise ProtocolError(ErrorCode.FORBIDDEN, "admins only")
        request = parse_arguments(verb, remainder, command.syntax)
        if command.rate_limited and self.member is not None:
            wait = self._messages.take()
            if wait:
                self.services.counters.messages_rate_limited += 1
                raise ProtocolError(ErrorCode.RATE_LIMITED, retry_after_text(wait))
        return command.handler(self, request)

    def _refuse(self, error: ProtocolError) -> None:
        self.push_line(error.wire())
        if error.code not in _NOT_COUNTED and self._errors.take():
            log.info("%s: too many errors, closing", self.describe())
            self.outbox.close("too-many-errors", wake=False)

    def push_line(self, line: str) -> None:
        self.outbox.push(encode_line(line), wake=False)

    # -- helpers for handlers ---------------------------------------------------------------

    def room_arg(self, request: Request, index: int = 0) -> str:
        """The room named in the request, else the current room."""
        if len(request.args) > index:
            name = room_name(request.args[index])
            if name is None:
                raise ProtocolError(ErrorCode.BAD_ARGUMENT, "a room is # then [a-z0-9_-]")
            return name
        if self.current_room is None:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, "you are in no room; /join #ROOM")
        return self.current_room

    def require_member(self) -> Member:
        assert self.member is not None  # the dispatch table guarantees it  # noqa: S101
        return self.member

    def take_login_token(self) -> None:
        """Every password check draws on the client address's bucket, before any hashing."""
        wait = self.services.login_buckets.take(self.peer)
        if wait:
            text = f"too many login attempts; {retry_after_text(wait)}"
            raise ProtocolError(ErrorCode.RATE_LIMITED, text)


def encode_lines(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode("utf-8")


def hist_line(message: StoredMessage) -> str:
    return (
        f"HIST {message.target} {message.id} {message.created_at} {message.sender} {message.body}"
    )


# Protocol errors that do not count towards BYE too-many-errors: they are the server's word
# about load or policy, not a sign of a confused or hostile client.
_NOT_COUNTED = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.SERVER_BUSY, ErrorCode.NOT_IN_ROOM})


# -- handlers -------------------------------------------------------------------------------


def cmd_login(session: Session, request: Request) -> Reply:
    if session.member is not None:
        raise ProtocolError(ErrorCode.ALREADY_LOGGED_IN, f"you are {session.member.name}")
    session.take_login_token()
    services = session.services
    raw_name, password = request.args[0], request.text or ""
    # An invalid name cannot exist: it takes the unknown-account path, same reply, same time.
    name = user_name(raw_name) or ""
    account = services.auth.verify_login(name, password)  # ServerBusy is an ERR server-busy
    return _complete_login(session, account, raw_name)


def cmd_resume(session: Session, request: Request) -> Reply:
    if session.member is not None:
        raise ProtocolError(ErrorCode.ALREADY_LOGGED_IN, f"you are {session.member.name}")
    session.take_login_token()
    raw_name, token = request.args
    account = session.services.tokens.verify(user_name(raw_name) or "", token)
    return _complete_login(session, account, raw_name)


def cmd_token(session: Session, request: Request) -> Reply:
    token, expires = session.services.tokens.issue(session.require_member().name)
    return f"OK token {token} {expires}"


def _complete_login(session: Session, account: Account | None, raw_name: str) -> Reply:
    """Shared by /login and /resume: the checks after the credential, then the session."""
    services = session.services
    client_ca = services.settings.tls.client_ca
    if account is not None and client_ca is not None and session.client_cn != account.name:
        account = None
    if account is None:
        services.counters.logins_failed += 1
        log.info("%s: login failed for %r", session.describe(), escape_for_log(raw_name[:64]))
        raise ProtocolError(ErrorCode.AUTH_FAILED, "wrong name or password")
    member = Member(account.name, session.outbox, is_admin=account.is_admin)
    session.member = member
    stored = services.messages.attach_and_claim(member, session.outbox.limit // 4)
    services.counters.logins_ok += 1
    log.info("%s: logged in", session.describe())
    default = services.settings.rooms.default
    reply = encode_line("OK", "login", account.name, default)
    try:
        services.hub.join(member, default, reply)
        session.current_room = default
    except ProtocolError as error:
        log.info("%s: could not join %s: %s", session.describe(), default, error.text)
        session.push_line(f"OK login {account.name}")
    session.deliver_stored(stored)
    return None


def cmd_join(session: Session, request: Request) -> Reply:
    name = session.room_arg(request)
    session.services.hub.join(session.require_member(), name, encode_line("OK", "join", name))
    session.current_room = name
    return None


def cmd_part(session: Session, request: Request) -> Reply:
    name = session.room_arg(request)
    session.services.hub.part(session.require_member(), name)
    if session.current_room == name:
        session.current_room = None
    return f"OK part {name}"


def _say(session: Session, room: str, text: str) -> Reply:
    if not text.strip():
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, "empty message")
    message_id = session.services.messages.say(session.require_member(), room, text)
    session.services.counters.messages_room += 1
    return f"OK say {room} {message_id}"


def cmd_say(session: Session, request: Request) -> Reply:
    return _say(session, session.room_arg(request), request.text or "")


def cmd_say_current(session: Session, request: Request) -> Reply:
    if session.current_room is None:
        raise ProtocolError(ErrorCode.NOT_IN_ROOM, "you are in no room; /join #ROOM")
    return _say(session, session.current_room, request.text or "")


def cmd_msg(session: Session, request: Request) -> Reply:
    services = session.services
    recipient = user_name(request.args[0])
    if recipient is None:
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, "a user name is [a-z0-9][a-z0-9_.-]")
    text = request.text or ""
    if not text.strip():
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, "empty message")
    if not services.hub.is_online(recipient) and services.store.get_account(recipient) is None:
        raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no account {recipient}")
    sender = session.require_member().name
    message_id = services.messages.send_private(sender, recipient, text)
    services.counters.messages_private += 1
    return f"OK msg {recipient} {message_id}"


def cmd_history(session: Session, request: Request) -> Reply:
    services = session.services
    member = session.require_member()
    target = request.args[0]
    limit = _history_limit(
        request.args[1] if len(request.args) > 1 else None, services.settings.history.max_query
    )
    if target.startswith("#"):
        room = session.room_arg(request)
        if room not in member.rooms:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"join {room} to read its history")
        target, found = room, services.messages.room_history(room, limit)
    else:
        other = user_name(target)
        if other is None:
            raise ProtocolError(ErrorCode.BAD_ARGUMENT, "usage: /history #ROOM|NAME [N]")
        if not services.hub.is_online(other) and services.store.get_account(other) is None:
            raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no account {other}")
        target, found = other, services.messages.conversation(member.name, other, limit)
    return [*(hist_line(m) for m in found), f"OK history {target} {len(found)}"]


DEFAULT_HISTORY = 20


def _history_limit(raw: str | None, maximum: int) -> int:
    if raw is None:
        return min(DEFAULT_HISTORY, maximum)
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, f"N is a number from 1 to {maximum}")
    return int(raw)


def cmd_who(session: Session, request: Request) -> Reply:
    name = session.room_arg(request)
    return " ".join(["OK", "who", name, *session.services.hub.who(name)])


def cmd_rooms(session: Session, request: Request) -> Reply:
    return " ".join(["OK", "rooms", *sorted(session.require_member().rooms)])


def cmd_passwd(session: Session, request: Request) -> Reply:
    member = session.require_member()
    old, new = request.args[0], request.text or ""
    problem = password_problem(new)
    if problem:
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, problem)
    session.take_login_token()
    auth = session.services.auth
    if not auth.verify_password(member.name, old):
        raise ProtocolError(ErrorCode.AUTH_FAILED, "wrong password")
    session.services.store.set_password_hash(member.name, auth.hash_password(new))
    log.info("%s: password changed", session.describe())
    return "OK passwd"


def cmd_ping(session: Session, request: Request) -> Reply:
    return f"OK ping {request.text}" if request.text else "OK ping"


def cmd_help(session: Session, request: Request) -> Reply:
    lines = [f"INFO {c.syntax.usage} - {c.summary}" for verb, c in COMMANDS.items() if verb]
    return [*lines, "OK help"]


def cmd_quit(session: Session, request: Request) -> Reply:
    session.push_line("OK quit")
    session.outbox.close("quit", wake=False)
    return None


def cmd_kick(session: Session, request: Request) -> Reply:
    services = session.services
    target = user_name(request.args[0])
    if target is None:
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, "a user name is [a-z0-9][a-z0-9_.-]")
    if not services.hub.is_online(target) and services.store.get_account(target) is None:
        raise ProtocolError(ErrorCode.NO_SUCH_USER, f"no account {target}")
    reason = f"kicked by {session.require_member().name}"
    if request.text and request.text.strip():
        reason += f": {request.text.strip()}"
    closed = services.hub.disconnect(target, reason)
    log.info("%s: kicked %s (%d sessions)", session.describe(), target, closed)
    return f"OK kick {target}"


def cmd_wall(session: Session, request: Request) -> Reply:
    session.services.hub.wall(session.require_member().name, request.text or "")
    return "OK wall"


COMMANDS: dict[str, Command] = {
    "login": Command(
        Syntax("/login NAME PASSWORD", 1, rest=Rest.REQUIRED),
        cmd_login,
        "log in",
        login=False,
        rate_limited=False,
        blocking=True,
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
        Syntax("/msg NAME TEXT", 1, rest=Rest.REQUIRED),
        cmd_msg,
        "private message to NAME",
        blocking=True,
    ),
    "history": Command(
        Syntax("/history #ROOM|NAME [N]", 1, 1),
        cmd_history,
        "the last N messages of a room or of your conversation with NAME",
        blocking=True,
    ),
    "who": Command(Syntax("/who [#ROOM]", 0, 1), cmd_who, "members of a room"),
    "rooms": Command(Syntax("/rooms"), cmd_rooms, "rooms you are in"),
    "token": Command(Syntax("/token"), cmd_token, "a resume token for this account", blocking=True),
    "resume": Command(
        Syntax("/resume NAME TOKEN", 2),
        cmd_resume,
        "log in with a resume token",
        login=False,
        rate_limited=False,
        blocking=True,
    ),
    "passwd": Command(
        Syntax("/passwd OLD NEW", 1, rest=Rest.REQUIRED),
        cmd_passwd,
        "change your password",
        blocking=True,
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
        blocking=True,
    ),
    "wall": Command(
        Syntax("/wall TEXT", rest=Rest.REQUIRED),
        cmd_wall,
        "admins: announce to everyone",
        admin=True,
    ),
}

_BLOCKING_VERBS = frozenset(verb.encode() for verb, command in COMMANDS.items() if command.blocking)


def _blocks(raw: bytes) -> bool:
    """Whether the request on this raw line may block, judged before it is validated.

    A guess on the safe side: a verb that is not plain ASCII might still lower-case to a
    blocking one (``str.lower`` maps the Kelvin sign to ``k``), so it counts as blocking.
    """
    if not raw.startswith(b"/") or raw.startswith(b"//"):
        return False
    verb = raw[1:].split(b" ", 1)[0]
    return not verb.isascii() or verb.lower() in _BLOCKING_VERBS

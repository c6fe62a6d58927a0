"""One client's session as a state machine: validated lines in, replies and effects out.

No sockets, no database, no argon2 and no real clock: the connection shell feeds bytes,
drains the outbox and runs the :class:`~sealroom.session.effects.Effect` objects the session
hands it; time comes from the injected clock. Each line goes through the pipeline SPEC.md
describes — framing, validator, authentication, rate limits, then the hub — and gets exactly
one final reply, pushed whole so no event can fall between a reply's data lines and its last
line. While a request's effect is out, later lines wait: replies keep request order.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sealroom import PROTOCOL_VERSION
from sealroom.config import Settings
from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.model import StoredMessage, StoreError
from sealroom.core.protocol import (
    SAY_CURRENT,
    Framing,
    LineBuffer,
    Request,
    Syntax,
    decode_line,
    encode_line,
    parse_arguments,
    split_request,
)
from sealroom.core.storage import Store
from sealroom.policy.auth import Authenticator, ResumeTokens
from sealroom.policy.ratelimit import Clock, KeyedBuckets, TokenBucket, retry_after_text
from sealroom.session.bus import Bus
from sealroom.session.effects import Effect, Outcome, Pool, Reply, Step
from sealroom.state.counters import Counters
from sealroom.state.hub import Hub, Member
from sealroom.state.messages import MessageLog
from sealroom.state.outbox import Outbox

log = logging.getLogger("sealroom.session")

__all__ = ["Command", "Effect", "Outcome", "Pool", "Reply", "Services", "Session", "SessionEnded"]


@dataclass(frozen=True, slots=True)
class Services:
    """What a session may use: shared by every session of the server.

    ``store``, ``auth`` and ``tokens`` block: a session only names them inside an effect's
    ``work``, which the shell runs on a worker.
    """

    settings: Settings
    hub: Hub
    auth: Authenticator
    store: Store
    messages: MessageLog
    tokens: ResumeTokens
    login_buckets: KeyedBuckets
    clock: Clock
    counters: Counters = field(default_factory=Counters)
    # rate.messages, one bucket per account shared by its sessions (None: one per session,
    # for tests that build a session alone).
    account_buckets: KeyedBuckets | None = None
    bus: Bus | None = None  # in a cluster: rooms, messages and presence go through it


class SessionEnded(Exception):  # noqa: N818 -- names what happened, as BYE does
    """The session must end with ``BYE reason``: its account record is gone or changed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Command:
    """One row of the dispatch table."""

    syntax: Syntax
    handler: Callable[[Session, Request], Step]
    summary: str
    login: bool = True  # needs a logged-in session; before login: ``auth-required``
    admin: bool = False
    rate_limited: bool = True


class Session:
    """The protocol state of one connection, from HELLO to BYE."""

    def __init__(
        self,
        services: Services,
        outbox: Outbox,
        peer: str,
        client_cn: str | None = None,
        commands: dict[str, Command] | None = None,
    ) -> None:
        self.services = services
        self.outbox = outbox
        self.peer = peer
        self.client_cn = client_cn
        if commands is None:
            from sealroom.session.commands import COMMANDS  # noqa: PLC0415 -- they import us

            commands = COMMANDS
        self.commands = commands
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
        self._effects: deque[Effect[Any]] = deque()  # for the shell to run
        self._awaiting = False  # a request's effect is out: later lines wait for it
        # Stored private messages are being delivered, batch by batch: later lines wait,
        # so that they all come before the reply to the next request, as after a login.
        self._delivering = False
        self._streaming = False  # a long reply is being written as the client reads it
        self._finished = False
        # Pipelined requests in flight (a cluster's room messages), oldest first, each with
        # the lines of its reply once it has one: replies leave in request order.
        self._pipeline: deque[_Slot] = deque()
        self._slot: _Slot | None = None  # the slot whose reply is being made right now
        self._deferred: bytes | None = None  # a request that waits for the pipeline to empty

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
        return self._lines.buffered > 0

    @property
    def awaiting(self) -> bool:
        """A request's effect is out; nothing more is handled until it completes."""
        return self._awaiting

    @property
    def wants_input(self) -> bool:
        """False while our own replies pile up unread or a request waits for its effect:
        stop reading (the socket's buffers push back on the client), never drop."""
        return (
            not self._awaiting
            and not self._delivering
            and not self._streaming
            and self._deferred is None
            and len(self._pipeline) < MAX_PIPELINED
            and self.outbox.closing is None
            and self.outbox.size < self._high_water
        )

    def process(self) -> bool:
        """Handle buffered lines while the client keeps up; True if lines were left
        because replies piled up (the shell calls again once they drain)."""
        while self.wants_input:
            event = self._lines.next_event()
            if event is None:
                return False
            self._last_activity = self.services.clock()
            if event is Framing.LINE_TOO_LONG:
                limit = self.services.settings.limits.max_line_bytes
                self._refuse(
                    ProtocolError(ErrorCode.LINE_TOO_LONG, f"lines are at most {limit} bytes")
                )
            elif event:
                self._handle_line(event)
        return self._lines.buffered > 0 and not (
            self._awaiting
            or self._delivering
            or self._streaming
            or self._deferred is not None
            or len(self._pipeline) >= MAX_PIPELINED
        )

    @property
    def has_effects(self) -> bool:
        return bool(self._effects)

    def take_effects(self) -> list[Effect[Any]]:
        """The effects to run now, in the order they were asked for."""
        effects = list(self._effects)
        self._effects.clear()
        return effects

    def complete(self, effect: Effect[Any], outcome: Outcome) -> None:
        """An effect's work ended (back on the owner's thread): apply its result."""
        if self._finished:
            if effect.abandon is not None and outcome.error is None:
                effect.abandon(outcome.value)
            return
        if effect.pipelined:
            self._complete_pipelined(effect, outcome)
            return
        if effect.request:
            self._awaiting = False
        self._apply(outcome, effect.then, request=effect.request)

    def _complete_pipelined(self, effect: Effect[Any], outcome: Outcome) -> None:
        slot = next((s for s in self._pipeline if s.effect is effect), None)
        if slot is None:
            return
        self._slot = slot
        try:
            self._apply(outcome, effect.then, request=True)
        finally:
            self._slot = None
        slot.done = True
        while self._pipeline and self._pipeline[0].done:
            for data in self._pipeline.popleft().lines:
                self.outbox.push(data, wake=False)
        if not self._pipeline and self._deferred is not None:
            raw, self._deferred = self._deferred, None
            self._handle_line(raw)

    @property
    def deadline(self) -> float:
        """When :meth:`check_timeouts` must next run: the login or the idle deadline."""
        if self.member is None:
            return self._login_deadline
        return self._last_activity + self.services.settings.limits.idle_timeout_s

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
        """The connection is gone: leave the hub; undelivered stored messages stay stored.

        Never blocks: effects still out are abandoned when their results come back.
        """
        self._finished = True
        self._effects.clear()
        if self.member is not None:
            rooms = sorted(self.member.rooms)
            self.services.hub.detach(self.member)
            if self.services.bus is not None:
                self.services.bus.leave(self.member, rooms)
            if self._in_delivery:
                self.services.messages.release(list(self._in_delivery))
            log.info("%s: logged out", self.describe())

    # -- effects ----------------------------------------------------------------------------

    def background(self, effect: Effect[Any]) -> None:
        """Ask the shell to run ``effect`` without holding up the session's next lines."""
        if not self._finished:
            self._effects.append(effect)

    def check_mail(self) -> None:
        """Stored private messages may be waiting (a cluster's node stored one while this
        session logged in): claim them, unless a delivery is under way (it claims on)."""
        if self._finished or self._delivering or self.member is None:
            return
        name, log_ = self.member.name, self.services.messages
        batch = self.outbox.limit // 4

        def deliver(found: list[StoredMessage]) -> Reply:
            self.deliver_stored(found)
            return None

        self.background(
            Effect(
                Pool.STORE,
                lambda: log_.claim(name, batch),
                deliver,
                abandon=lambda found: log_.release([m.id for m in found]),
                request=False,
            )
        )

    def deliver_stored(self, messages: list[StoredMessage]) -> None:
        """Queue stored private messages; each batch is marked delivered once written,
        and then the next batch is claimed, so the outbox never holds them all at once."""
        if not messages or self.member is None:
            self._in_delivery.clear()
            self._delivering = False
            return
        self._delivering = True
        name, log_ = self.member.name, self.services.messages
        ids = [m.id for m in messages]
        self._in_delivery.update(ids)
        batch = self.outbox.limit // 4

        def mark_and_claim_next() -> list[StoredMessage]:
            log_.delivered(ids)
            return log_.claim(name, batch)

        def next_batch(found: list[StoredMessage]) -> Reply:
            self._in_delivery.difference_update(ids)
            self.deliver_stored(found)
            return None

        def written() -> None:
            self.background(
                Effect(
                    Pool.STORE,
                    mark_and_claim_next,
                    next_batch,
                    abandon=lambda found: log_.release([m.id for m in found]),
                    request=False,
                )
            )

        self.outbox.push(
            encode_lines([hist_line(m) for m in messages]), wake=False, on_sent=written
        )

    # -- the pipeline -----------------------------------------------------------------------

    def _handle_line(self, raw: bytes) -> None:
        if self._pipeline and not self._pipelinable(raw):
            self._deferred = raw  # its reply must follow theirs: it waits, unread
            return
        try:
            step = self._dispatch(raw)
        except ProtocolError as error:
            self._refuse(error)
            return
        except Exception:
            log.exception("%s: internal error while handling a request", self.describe())
            self.outbox.close("internal-error", wake=False)
            return
        self._step(step, request=True)

    def _apply(self, outcome: Outcome, then: Callable[[Any], Step], *, request: bool) -> None:
        """Continue a request (or background work) with its effect's outcome."""
        error = outcome.error
        if error is None:
            try:
                step = then(outcome.value)
            except Exception as raised:  # judged below, like an error from the work itself
                error = raised
        if isinstance(error, StoreError):  # the database is away or busy: not our bug
            log.warning("%s: %s", self.describe(), error)
            error = ProtocolError(ErrorCode.SERVER_BUSY, "the database is unreachable; retry in 2s")
        if isinstance(error, SessionEnded):
            log.info("%s: %s", self.describe(), error.reason)
            self.outbox.close(error.reason, wake=False)
        elif isinstance(error, ProtocolError):
            if request:
                self._refuse(error)
            else:
                log.warning("%s: %s", self.describe(), error.text)
        elif error is not None:
            log.error(
                "%s: internal error while handling a request",
                self.describe(),
                exc_info=(type(error), error, error.__traceback__),
            )
            self.outbox.close("internal-error", wake=False)
        else:
            self._step(step, request=request)

    def _pipelinable(self, raw: bytes) -> bool:
        """Whether the line is a room message (``/say`` or a plain line), the one request
        that may be in flight beside others of its kind."""
        return not raw.startswith(b"/") or raw.startswith((b"//", b"/say "))

    def _step(self, step: Step, *, request: bool) -> None:
        if isinstance(step, Effect):
            if request and step.pipelined and self._slot is None:
                self._pipeline.append(_Slot(step))
                self._effects.append(step)
            elif request:
                self._awaiting = True
                self._effects.append(step)
            else:
                self.background(step)
        elif isinstance(step, str):
            self.push_line(step)
        elif step:
            data = encode_lines(step)
            if len(data) <= self._high_water // 2 or self._slot is not None or self._pipeline:
                self._emit(data)
            else:
                self._stream(step, 0)

    def _stream(self, lines: list[str], start: int) -> None:
        """Write a long reply as the client reads it: a part at a time, the next part once
        this one is written, others' lines held until the final one is queued."""
        if start == 0:
            self._streaming = True
            self.outbox.hold()
        budget = self._high_water // 2
        end, size = start, 0
        while end < len(lines) and (end == start or size + len(lines[end]) < budget):
            size += len(lines[end]) + 1
            end += 1
        part = encode_lines(lines[start:end])
        if end < len(lines):
            self.outbox.push(part, wake=False, on_sent=lambda: self._stream(lines, end))
            return
        self.outbox.push(part, wake=False)
        self.outbox.release()
        self._streaming = False

    def _dispatch(self, raw: bytes) -> Step:
        text = decode_line(raw)
        verb, remainder = split_request(text)
        logged_in = self.member is not None
        command = self.commands.get(verb)
        if verb == SAY_CURRENT and text.startswith("/") and not text.startswith("//"):
            command = None  # "/ hi": a command with an empty verb, not a message
        if not logged_in and (command is None or command.login):
            # Before login the one answer to anything else, known or not, is this one.
            raise ProtocolError(ErrorCode.AUTH_REQUIRED, "log in first: /login NAME PASSWORD")
        if command is None:
            raise ProtocolError(ErrorCode.BAD_COMMAND, f"unknown command /{verb}; try /help")
        if command.admin and not (self.member and self.member.is_admin):
            raise ProtocolError(ErrorCode.FORBIDDEN, "admins only")
        request = parse_arguments(verb, remainder, command.syntax)
        if self.member is None:
            # Before login every request draws on this connection's bucket (leaving is free):
            # a stranger cannot make the server work for nothing.
            wait = 0.0 if verb == "quit" else self._messages.take()
        elif command.rate_limited:
            buckets = self.services.account_buckets
            wait = self._messages.take() if buckets is None else buckets.take(self.member.name)
        else:
            wait = 0.0
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
        self._emit(encode_line(line))

    def _emit(self, data: bytes) -> None:
        """A reply's lines: queued now, unless pipelined requests' replies must go first."""
        slot = self._slot
        if slot is not None:
            slot.lines.append(data)
        elif self._pipeline:
            self._pipeline.append(_Slot(None, [data], done=True))
        else:
            self.outbox.push(data, wake=False)


# Pipelined requests in flight per session; then it stops reading. In a cluster a room
# message is answered once its batch is published and committed, so a publishing session's
# window is its throughput: at 64, one script call, transaction and read of the bus carried
# about 60 messages, and the per-batch costs made the saturated fan-out 1.6-2.3 x the single
# node's CPU; at 256, about 110 and 1.4 x. The rate limiter keeps an ordinary session far
# below it (rate.messages' burst: 20).
MAX_PIPELINED = 256


@dataclass(slots=True, eq=False)
class _Slot:
    """A pipelined request's place in the order of replies."""

    effect: Effect[Any] | None
    lines: list[bytes] = field(default_factory=list)
    done: bool = False


def encode_lines(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode("utf-8")


def hist_line(message: StoredMessage) -> str:
    return (
        f"HIST {message.target} {message.id} {message.created_at} {message.sender} {message.body}"
    )


# Protocol errors that do not count towards BYE too-many-errors: they are the server's word
# about load or policy, not a sign of a confused or hostile client.
_NOT_COUNTED = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.SERVER_BUSY, ErrorCode.NOT_IN_ROOM})

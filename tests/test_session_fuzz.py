"""The sans-I/O session under any sequence of lines, from several clients at once.

A Hypothesis state machine drives real ``Session`` objects sharing a real ``Hub``, message log
and SQLite store (argon2 at its cheapest, a fake clock), the way the connection shell does:
feed bytes in arbitrary chunks, process, drain the outbox, run the write receipts. After every
step it checks the protocol's promises:

* every request line gets exactly one final reply (``OK VERB``/``ERR CODE``), in order, and an
  ``OK`` names the verb that was asked; only a ``BYE`` may end the series early;
* nothing raises, nothing is logged at ERROR, and no ``BYE internal-error`` is ever sent;
* the data lines of a reply (``INFO`` for ``/help``, ``HIST`` for ``/history``) come right
  before its final line, with no event in between;
* a stored private message is delivered to its account at most once;
* when every client is gone, the hub holds no session and no room.
"""

from __future__ import annotations

import logging
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from sealroom.config import settings_from_mapping
from sealroom.core.errors import ProtocolError
from sealroom.core.protocol import Framing, LineBuffer, decode_line, split_request
from sealroom.policy.auth import Authenticator, ResumeTokens
from sealroom.policy.ratelimit import KeyedBuckets
from sealroom.session import COMMANDS, Outcome, Services, Session
from sealroom.state.hub import Hub, HubLimits
from sealroom.state.messages import HistoryWriter, MessageIds, MessageLog
from sealroom.state.outbox import Outbox
from sealroom.store.sqlite import SqliteStore

PASSWORD = "correct horse battery"
USERS = ("alice", "bob", "root")
MAX_LINE = 128
FINAL = ("OK ", "ERR ")
EVENTS = ("MSG ", "DM ", "JOIN ", "PART ", "WALL ", "INFO ", "HIST ", "HELLO ")
HELP_LINES = sum(1 for verb in COMMANDS if verb)
REPLY_VERB = {"": "say", "resume": "login"}  # the OK word when it is not the request's verb


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass(eq=False)
class Conn:
    """One simulated connection: its session, its outbox and what we expect of it."""

    number: int
    session: Session
    outbox: Outbox
    framing: LineBuffer  # an independent copy of the framing: our oracle for "one line"
    expected: deque[bytes | Framing] = field(default_factory=deque)
    since_final: list[str] = field(default_factory=list)  # lines after the last final reply
    closed: str | None = None


# -- what a client may send ------------------------------------------------------------------

names = st.sampled_from(["alice", "bob", "root", "nobody", "ALICE", "\u212aelly", "b\u043eb"])
rooms = st.sampled_from(["#lobby", "#a", "#b", "#c", "#d", "#e", "#LOBBY", "#", "lobby", "#x-1"])
printable = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=24)
free_text = st.one_of(printable, printable, st.text(st.characters(codec="utf-8"), max_size=24))
counts = st.sampled_from(["", " 1", " 5", " 0", " -1", " 99999", " x", " 3 4"])
commands = st.one_of(
    names.map(lambda n: f"/login {n} {PASSWORD}"),
    st.builds("/login {} {}".format, names, free_text),
    rooms.map("/join {}".format),
    rooms.map("/part {}".format),
    st.builds("/say {} {}".format, rooms, free_text),
    free_text,
    free_text.map("//{}".format),
    st.builds("/msg {} {}".format, names, free_text),
    st.builds("/history {}{}".format, rooms | names, counts),
    rooms.map("/who {}".format),
    st.just("/help"),
    st.sampled_from(
        [
            "/who",
            "/rooms",
            "/token",
            "/help",
            "/ping",
            "/ping tok en",
            "/quit",
            "/part",
            "/",
            "/frobnicate",
            "/WHO",
            "/kick bob",
            "/kick nobody",
            "/wall hello all",
            f"/passwd {PASSWORD} {PASSWORD}",
            "/passwd wrong-one new password",
            "/passwd x short",
            "/resume alice " + "A" * 43,
            "/resume alice",
            "hello\r",
            "\t",
            "  ",
        ]
    ),
)
raw_lines = st.one_of(
    *[commands.map(lambda text: text.encode())] * 6,  # mostly well-formed, for depth
    st.binary(max_size=40),
    st.integers(MAX_LINE - 3, MAX_LINE + 3).map(lambda n: b"y" * n),
).map(lambda raw: raw.replace(b"\n", b""))  # one generated line is one line on the wire


class SessionMachine(RuleBasedStateMachine):
    conns = Bundle("conns")

    def __init__(self) -> None:
        super().__init__()
        self._folder = tempfile.TemporaryDirectory()
        database = Path(self._folder.name) / "fuzz.db"
        self.settings = settings_from_mapping(
            {
                "storage": {"database": str(database)},
                "limits": {
                    "max_line_bytes": MAX_LINE,
                    "max_rooms_per_session": 3,
                    "max_rooms": 5,
                    "max_room_members": 3,
                    "outbound_queue_bytes": 65536,
                    "login_timeout_s": 60,
                    "idle_timeout_s": 300,
                },
                "rate": {
                    "messages": {"rate": 2, "burst": 12},
                    "logins_per_ip": {"rate": 1, "burst": 8},
                    "errors": {"rate": 1, "burst": 25},
                },
                "history": {"per_room": 20, "private_per_user": 4, "max_query": 50},
            },
            Path(self._folder.name),
        )
        self.clock = FakeClock()
        self.store = SqliteStore(database)
        auth = Authenticator.for_tests(self.store)
        hashed = auth.hash_password(PASSWORD)
        for name in USERS:
            self.store.add_account(name, hashed, is_admin=name == "root")
        limits = self.settings.limits
        self.ids = MessageIds(self.store)
        self.hub = Hub(
            HubLimits(
                max_rooms=limits.max_rooms,
                max_rooms_per_session=limits.max_rooms_per_session,
                max_room_members=limits.max_room_members,
                allow_create=True,
                default_room="#lobby",
            ),
            next_id=self.ids.take,
        )
        self.store.create_room("#lobby", None)  # as the server does at start
        self.hub.load_rooms(self.store.list_rooms())
        history = self.settings.history
        self.writer = HistoryWriter(
            SqliteStore(database), history.per_room, history.private_per_user
        )
        self.writer.start()
        rate = self.settings.rate.logins_per_ip
        self.services = Services(
            settings=self.settings,
            hub=self.hub,
            auth=auth,
            store=self.store,
            messages=MessageLog(
                self.store,
                self.hub,
                self.writer,
                self.ids,
                private_quota=history.private_per_user,
            ),
            tokens=ResumeTokens(self.store, 7),
            login_buckets=KeyedBuckets(rate.rate, rate.burst, self.clock, max_keys=100),
            clock=self.clock,
        )
        self.live: list[Conn] = []
        self.opened = 0
        self.delivered: dict[str, set[str]] = {}  # account -> ids of HIST lines delivered
        self.errors = ErrorLog()
        logging.getLogger("sealroom").addHandler(self.errors)

    # -- rules ------------------------------------------------------------------------------

    @initialize(target=conns)
    def first_connection(self) -> Conn:
        return self._connect("127.0.0.1")

    @rule(target=conns, peer=st.sampled_from(["127.0.0.1", "127.0.0.2"]))
    def connect(self, peer: str) -> Conn:
        return self._connect(peer)

    @rule(
        conn=conns,
        lines=st.lists(raw_lines, min_size=1, max_size=8),
        ending=st.sampled_from([b"\n", b"\r\n"]),
        chunk=st.integers(1, 64),
        login_first=st.sampled_from([None, *USERS]),
    )
    def send(
        self, conn: Conn, lines: list[bytes], ending: bytes, chunk: int, login_first: str | None
    ) -> None:
        if conn.closed:
            return
        if login_first is not None and conn.session.member is None:  # deeper after a login
            lines = [f"/login {login_first} {PASSWORD}".encode(), *lines]
        data = b"".join(line + ending for line in lines)
        for start in range(0, len(data), chunk):
            piece = data[start : start + chunk]
            conn.framing.feed(piece)
            while (event := conn.framing.next_event()) is not None:
                if event is Framing.LINE_TOO_LONG or event:
                    conn.expected.append(event)
            conn.session.feed(piece)
            self._pump(conn)
        self._pump_all()

    @rule(conn=conns, data=st.binary(max_size=30))
    def partial_line(self, conn: Conn, data: bytes) -> None:
        """Bytes without an LF: buffered, answered only once the line ends."""
        if conn.closed:
            return
        data = data.replace(b"\n", b"")
        conn.framing.feed(data)
        conn.session.feed(data)
        self._pump_all()

    @rule(seconds=st.sampled_from([0.5, 5.0, 61.0, 301.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds
        for conn in self.live:
            conn.session.check_timeouts()
        self._pump_all()

    @rule(conn=consumes(conns))
    def connection_lost(self, conn: Conn) -> None:
        self._finish(conn)
        self._pump_all()

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def nothing_logged_as_an_error(self) -> None:
        assert not self.errors.records, [r.getMessage() for r in self.errors.records]

    @invariant()
    def every_request_answered(self) -> None:
        for conn in self.live:
            if conn.closed is None:
                assert not conn.expected, f"conn {conn.number}: unanswered {list(conn.expected)}"

    def teardown(self) -> None:
        try:
            for conn in list(self.live):
                self._finish(conn)
            sessions, _rooms = self.hub.counts()  # rooms are stored: they outlive sessions
            assert sessions == 0, "sessions outlived their clients"
            for name, view, _topic in self.hub.rooms():
                assert not view.members, f"{name} has members with no client"
        finally:
            logging.getLogger("sealroom").removeHandler(self.errors)
            self.writer.stop()
            self.store.close()
            self._folder.cleanup()

    # -- the shell's part -------------------------------------------------------------------

    def _connect(self, peer: str) -> Conn:
        self.opened += 1
        outbox = Outbox(self.settings.limits.outbound_queue_bytes, lambda: None)
        session = Session(self.services, outbox, peer)
        conn = Conn(self.opened, session, outbox, LineBuffer(MAX_LINE))
        self.live.append(conn)
        session.greet()
        self._pump(conn)
        return conn

    def _finish(self, conn: Conn) -> None:
        """What the server does when a connection ends: retire the outbox, finish the session."""
        if conn in self.live:
            self.live.remove(conn)
            conn.outbox.retire()
            conn.session.finish()
        conn.closed = conn.closed or "lost"

    def _pump_all(self) -> None:
        for conn in list(self.live):
            self._pump(conn)

    def _pump(self, conn: Conn) -> None:
        """Process buffered lines and write what is queued, until neither makes progress."""
        for _ in range(10_000):
            if conn.closed is not None:
                self._finish(conn)  # after BYE, the server closes the connection
                return
            # As the shell does: handle lines, run the effects they ask for (here, inline),
            # hand back their outcomes. The oracle checks nothing is lost or reordered by it.
            conn.session.process()
            effects = conn.session.take_effects()
            for effect in effects:
                conn.session.complete(effect, Outcome.of(effect.work))
            data, receipts = conn.outbox.take()
            if not data:
                if effects:
                    continue
                return
            self._check_output(conn, data)
            for receipt in receipts:  # the bytes are "on the wire"
                receipt()
        raise AssertionError("the session never stopped producing output")

    def _check_output(self, conn: Conn, data: bytes) -> None:
        text = data.decode("utf-8")  # the server only ever sends valid UTF-8
        assert text.endswith("\n")
        for line in text[:-1].split("\n"):
            assert conn.closed is None, f"conn {conn.number}: {line!r} after BYE {conn.closed}"
            if line.startswith("BYE "):
                conn.closed = line[4:]
                assert conn.closed != "internal-error", "a request hit a bug in the server"
                conn.expected.clear()  # the rest of what it sent will never be answered
            elif line.startswith(FINAL):
                self._check_final(conn, line)
            else:
                assert line.startswith(EVENTS), f"unknown line {line!r}"
                conn.since_final.append(line)

    def _check_final(self, conn: Conn, line: str) -> None:
        assert conn.expected, f"conn {conn.number}: {line!r} answers no request"
        request = conn.expected.popleft()
        before, conn.since_final = conn.since_final, []
        if request is Framing.LINE_TOO_LONG:
            assert line.startswith("ERR line-too-long "), line
            self._record_deliveries(conn, before)
            return
        assert isinstance(request, bytes)
        try:
            verb, _ = split_request(decode_line(request))
        except ProtocolError:
            assert line.startswith(("ERR bad-encoding ", "ERR bad-input ")), (request, line)
            self._record_deliveries(conn, before)
            return
        if not line.startswith("OK "):
            self._record_deliveries(conn, before)
            return
        assert line.split(" ")[1] == REPLY_VERB.get(verb, verb), (request, line)
        data: list[str] = []
        if verb == "help":
            data = before[len(before) - HELP_LINES :]
            assert len(data) == HELP_LINES, before
            assert all(d.startswith("INFO /") for d in data), before
        elif verb == "history":
            count = int(line.rsplit(" ", 1)[1])
            data = before[len(before) - count :] if count else []
            assert len(data) == count, before
            assert all(d.startswith("HIST ") for d in data), before
        self._record_deliveries(conn, before[: len(before) - len(data)])

    def _record_deliveries(self, conn: Conn, lines: list[str]) -> None:
        """HIST lines that are not a reply's data are stored private messages being delivered."""
        name = conn.session.name
        for line in lines:
            if line.startswith("HIST ") and name is not None:
                message_id = line.split(" ")[2]
                seen = self.delivered.setdefault(name, set())
                assert message_id not in seen, f"{name} got stored message {message_id} twice"
                seen.add(message_id)


TestSessionMachine = SessionMachine.TestCase
TestSessionMachine.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

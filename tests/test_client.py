"""The client library (sealroom.client) against a real server over TLS, and against a scripted
peer for what a real server does not do (yet, or ever: history, resume tokens, hostile lines)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from helpers import PASSWORD, Server, ServerFactory
from sealroom.client import (
    Backoff,
    Banned,
    Bye,
    Client,
    ConnectError,
    ConnectionClosed,
    Destroyed,
    History,
    Info,
    InvalidArgument,
    Invited,
    Joined,
    Message,
    ModeChanged,
    Parted,
    PrivateMessage,
    ProtocolViolation,
    Reconnected,
    ReconnectFailed,
    RequestError,
    RequestTimeout,
    RoomListing,
    TopicChanged,
    Wall,
    parse_event,
)
from sealroom.config import load_settings
from sealroom.core.errors import ErrorCode
from sealroom.ops.app import App

FAST = Backoff(initial_s=0.01, max_s=0.2, max_attempts=60)


@pytest.fixture
def connect(server: Server) -> Iterator[Callable[..., Client]]:
    """Library clients for ``server``, closed after the test."""
    made: list[Client] = []

    def factory(**kwargs: object) -> Client:
        client = Client("127.0.0.1", server.port, ca_file=server.ca_file, timeout=5, **kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


def logged_in(server: Server, connect: Callable[..., Client], name: str, **kw: object) -> Client:
    if server.app.store.get_account(name.lower()) is None:
        server.add_user(name.lower())
    client = connect(**kw)
    client.login(name, PASSWORD)
    return client


# -- requests ------------------------------------------------------------------------------------


def test_login_and_every_request(server: Server, connect: Callable[..., Client]) -> None:
    bob = server.user("bob")
    alice = logged_in(server, connect, "Alice")
    assert alice.user == "alice"
    assert alice.server_name == "localhost"
    assert alice.rooms == ("#lobby",)
    assert alice.current_room == "#lobby"

    assert alice.join("#Tea") == "#tea"
    assert alice.current_room == "#tea"
    assert alice.rooms == ("#lobby", "#tea")
    assert alice.who() == ["alice"]
    assert alice.who("#lobby") == ["alice", "bob"]
    assert alice.list_rooms() == ["#lobby", "#tea"]

    first = alice.say("hello tea")
    second = alice.say("/not a command", room="#lobby")
    assert second > first
    assert bob.expect("JOIN #lobby alice")
    assert bob.expect("MSG #lobby alice /not a command")
    third = alice.say("/slashed")  # a plain line: written //slashed on the wire
    dm = alice.msg("bob", "psst")
    assert dm > third > second
    assert bob.expect("DM alice psst")

    assert alice.ping("token-1") == "token-1"
    assert any(line.startswith("/login NAME PASSWORD") for line in alice.help())
    assert alice.request("/ping raw").args == "raw"

    assert alice.part() == "#tea"
    assert alice.current_room is None
    assert alice.rooms == ("#lobby",)

    alice.quit()
    assert not alice.connected
    with pytest.raises(ConnectionClosed):
        alice.ping()

    # The protocol's /passwd OLD NEW: the old password cannot hold a space.
    server.add_user("carol", "nospaces")
    carol = connect()
    carol.login("carol", "nospaces")
    carol.passwd("nospaces", "a new password")
    carol.close()
    again = connect()
    again.login("carol", "a new password")
    assert again.user == "carol"


def test_admin_requests(server: Server, connect: Callable[..., Client]) -> None:
    server.add_user("root", admin=True)
    root = logged_in(server, connect, "root")
    bob = server.user("bob")
    root.wall("maintenance at noon")
    assert bob.expect("WALL root maintenance at noon")
    root.kick("bob", "enough")
    assert bob.closed()[-1] == "BYE kicked by root: enough"

    # A kicked client does not come back, even with reconnecting on.
    alice = logged_in(server, connect, "alice", reconnect=FAST)
    root.kick("alice")
    assert alice.next_event(timeout=5) == Bye("kicked by root")
    with pytest.raises(ConnectionClosed):
        alice.next_event(timeout=1)


def test_typed_errors(server: Server, connect: Callable[..., Client]) -> None:
    server.add_user("alice")
    client = connect()
    with pytest.raises(RequestError) as refused:
        client.login("alice", "wrong password")
    assert refused.value.code is ErrorCode.AUTH_FAILED
    assert str(refused.value) == "auth-failed: wrong name or password"
    with pytest.raises(RequestError) as early:
        client.join("#tea")
    assert early.value.code is ErrorCode.AUTH_REQUIRED

    client.login("alice", PASSWORD)
    cases: list[tuple[Callable[[], object], ErrorCode]] = [
        (lambda: client.login("alice", PASSWORD), ErrorCode.ALREADY_LOGGED_IN),
        (lambda: client.part("#nowhere"), ErrorCode.NOT_IN_ROOM),
        (lambda: client.msg("nobody", "hi"), ErrorCode.NO_SUCH_USER),
        (lambda: client.who("#nowhere"), ErrorCode.NO_SUCH_ROOM),
        (lambda: client.wall("hear me"), ErrorCode.FORBIDDEN),
        (lambda: client.kick("alice"), ErrorCode.FORBIDDEN),
        (lambda: client.passwd("wrong", "a new password"), ErrorCode.AUTH_FAILED),
        (lambda: client.passwd("whatever", "short"), ErrorCode.BAD_ARGUMENT),
        (lambda: client.request("/frobnicate"), ErrorCode.BAD_COMMAND),
    ]
    for call, code in cases:
        with pytest.raises(RequestError) as error:
            call()
        assert error.value.code is code
    client.part()
    with pytest.raises(RequestError) as nowhere:
        client.say("into the void")
    assert nowhere.value.code is ErrorCode.NOT_IN_ROOM
    assert client.ping() == ""  # the connection stayed usable throughout


def test_rate_limited_error_says_when_to_retry(make_server: ServerFactory) -> None:
    server = make_server(rate={"messages": {"rate": 0.5, "burst": 2}})
    server.add_user("alice")
    with Client("127.0.0.1", server.port, ca_file=server.ca_file, timeout=5) as client:
        client.login("alice", PASSWORD)
        client.ping()
        client.ping()  # the burst is spent
        with pytest.raises(RequestError) as limited:
            client.ping()
        assert limited.value.code is ErrorCode.RATE_LIMITED
        assert limited.value.retry_after is not None
        assert 0 < limited.value.retry_after <= 2


def test_invalid_arguments_are_never_sent(server: Server, connect: Callable[..., Client]) -> None:
    client = logged_in(server, connect, "alice")
    bob = server.user("bob")
    refused: list[Callable[[], object]] = [
        lambda: client.say("hi\n/quit"),
        lambda: client.say("bell\x07"),
        lambda: client.say("\u202eevil"),
        lambda: client.say("   "),
        lambda: client.msg("Not A Name", "hi"),
        lambda: client.msg("bob", "two\r\nlines"),
        lambda: client.join("tea"),
        lambda: client.history("#tea", 0),
        lambda: client.passwd("old pass", "new password"),
        lambda: client.request("/join #tea"),
        lambda: client.request("/quit"),
        lambda: client.login("alice", "pw\n/wall x"),
    ]
    for call in refused:
        with pytest.raises(InvalidArgument):
            call()
    assert isinstance(InvalidArgument("x"), ValueError)
    assert client.ping("still") == "still"
    bob.send("/ping bob")
    assert bob.expect("OK ping bob")  # nothing from alice reached the room


# -- events --------------------------------------------------------------------------------------


def test_each_event(server: Server, connect: Callable[..., Client]) -> None:
    server.add_user("root", admin=True)
    alice = logged_in(server, connect, "alice")
    alice.join("#tea")
    bob = server.user("bob")
    bob.request("/join #tea")
    bob.request("hello alice")
    bob.request("/msg alice a secret")
    bob.request("/part #tea")
    root = server.user("root")
    root.request("/wall hear ye")

    received = list(alice.events(timeout=0.5))
    assert received == [
        Joined("#lobby", "bob"),
        Joined("#tea", "bob"),
        Message("#tea", "bob", "hello alice"),
        PrivateMessage("bob", "a secret"),
        Parted("#tea", "bob"),
        Joined("#lobby", "root"),
        Wall("root", "hear ye"),
    ]
    root.request("/kick alice bye now")
    assert alice.next_event(timeout=5) == Bye("kicked by root: bye now")
    assert list(alice.events(timeout=0.5)) == []  # over: the iteration ends
    with pytest.raises(ConnectionClosed) as closed:
        alice.next_event(timeout=1)
    assert closed.value.reason == "kicked by root: bye now"


def test_history_and_stored_private_messages(
    server: Server, connect: Callable[..., Client]
) -> None:
    alice = logged_in(server, connect, "alice")
    alice.join("#tea")
    first = alice.say("one")
    second = alice.say("two")
    assert [(h.target, h.id, h.sender, h.text) for h in alice.history("#tea", 5)] == [
        ("#tea", first, "alice", "one"),
        ("#tea", second, "alice", "two"),
    ]
    assert alice.history("#tea", 1)[0].text == "two"
    assert alice.history("#tea", 1)[0].time.tzinfo is not None

    server.add_user("carol")
    sent = alice.msg("carol", "while you were away")
    carol = logged_in(server, connect, "carol")
    stored = carol.next_event(timeout=5)
    assert isinstance(stored, History)
    assert (stored.target, stored.id, stored.sender, stored.text) == (
        "carol",
        sent,
        "alice",
        "while you were away",
    )
    assert [h.text for h in carol.history("alice")] == ["while you were away"]
    with pytest.raises(RequestError) as elsewhere:
        carol.history("#tea")
    assert elsewhere.value.code is ErrorCode.FORBIDDEN  # history is for members


def test_resume_token_and_secrets(server: Server, connect: Callable[..., Client]) -> None:
    alice = logged_in(server, connect, "alice", reconnect=FAST)
    # Password and token are kept for reconnecting, and shown nowhere.
    assert PASSWORD not in repr(alice)
    assert PASSWORD not in repr(vars(alice))
    assert repr(alice) == f"<Client 127.0.0.1:{server.port} user=alice connected>"
    token = alice.token()
    assert token.value not in repr(vars(alice))
    assert token.value not in repr(token)
    assert token.expires is not None
    assert not token.expired()
    other = connect()
    other.resume("alice", token)
    assert other.user == "alice"
    assert other.rooms == ("#lobby",)


def test_events_during_a_request_wait_their_turn(
    server: Server, connect: Callable[..., Client]
) -> None:
    alice = logged_in(server, connect, "alice")
    bob = server.user("bob")
    for number in range(3):
        bob.request(f"message {number}")
    assert alice.who() == ["alice", "bob"]  # the messages arrived before this reply
    assert alice.next_event(0) == Joined("#lobby", "bob")
    assert [alice.next_event(1) for _ in range(3)] == [
        Message("#lobby", "bob", f"message {number}") for number in range(3)
    ]
    assert alice.next_event(timeout=0.1) is None


# -- rooms with owners ----------------------------------------------------------------------------


def test_room_requests_and_events(server: Server, connect: Callable[..., Client]) -> None:
    """Every room method against a real server: what it returns, the typed events the others
    get, and what the client keeps (rooms, current room, topics) as they arrive."""
    alice = logged_in(server, connect, "alice")
    bob = logged_in(server, connect, "bob")
    carol = logged_in(server, connect, "carol")
    assert alice.join("#tea") == "#tea"  # created: alice owns it
    assert alice.topics == {"#tea": ""}  # OK join #tea, with an empty topic
    assert alice.topic("#tea", "tea,  and cake ") == "tea,  and cake "
    assert alice.topic("#tea") == "tea,  and cake "
    bob.join("#tea")
    assert bob.topics == {"#tea": "tea,  and cake "}  # carried by OK join #ROOM TOPIC
    assert bob.joinable_rooms() == [
        RoomListing("#lobby", 3, "open", ""),
        RoomListing("#tea", 2, "open", "tea,  and cake "),
    ]
    alice.topic("#tea", "scones")
    assert alice.mode("#tea", "Private") == "private"
    assert [e for e in bob.events(timeout=0.5) if not isinstance(e, Joined)] == [
        TopicChanged("#tea", "alice", "scones"),
        ModeChanged("#tea", "alice", "private"),
    ]
    assert bob.topics["#tea"] == "scones"

    # Private: carol neither sees it nor gets in, until she is invited.
    assert [r.room for r in carol.joinable_rooms()] == ["#lobby"]
    with pytest.raises(RequestError) as refused:
        carol.join("#tea")
    assert refused.value.code is ErrorCode.FORBIDDEN
    alice.invite("carol", "#tea")
    assert carol.next_event(timeout=5) == Invited("#tea", "alice")
    assert [r.room for r in carol.joinable_rooms()] == ["#lobby", "#tea"]
    carol.join("#tea")
    assert carol.current_room == "#tea"

    # An operator bans; the banned client is out of the room, as far as it keeps track too.
    alice.op("bob", "#tea")
    bob.ban("carol", "#tea", "too much sugar")
    assert [e for e in carol.events(timeout=0.5) if not isinstance(e, Joined)] == [
        Banned("#tea", "bob", "too much sugar")
    ]
    assert (carol.rooms, carol.current_room, carol.topics) == (("#lobby",), None, {})
    with pytest.raises(RequestError) as banned:
        carol.join("#tea")
    assert banned.value.code is ErrorCode.FORBIDDEN
    bob.unban("carol", "#tea")
    alice.deop("bob", "#tea")
    with pytest.raises(RequestError) as not_an_operator:
        bob.ban("carol", "#tea")
    assert not_an_operator.value.code is ErrorCode.FORBIDDEN
    with pytest.raises(RequestError) as not_the_owner:
        bob.destroy("#tea")
    assert not_the_owner.value.code is ErrorCode.FORBIDDEN

    # Destroyed: everyone in it is out, the owner included, and the name is free.
    bob.take_queued_events()
    alice.destroy("#tea")
    assert bob.next_event(timeout=5) == Destroyed("#tea", "alice")
    assert (bob.rooms, bob.current_room) == (("#lobby",), None)
    assert (alice.rooms, alice.current_room, alice.topics) == (("#lobby",), None, {})
    assert [r.room for r in alice.joinable_rooms()] == ["#lobby"]


def test_room_arguments_are_checked_before_sending(
    server: Server, connect: Callable[..., Client]
) -> None:
    alice = logged_in(server, connect, "alice")
    alice.join("#tea")
    refused: list[Callable[[], object]] = [
        lambda: alice.mode("#tea", "secret"),
        lambda: alice.topic("#tea", "   "),  # /topic #tea alone would ask, not set
        lambda: alice.topic("#tea", "two\nlines"),
        lambda: alice.topic("tea"),
        lambda: alice.ban("bob", "#tea", "why\r/quit"),
        lambda: alice.op("Not A Name", "#tea"),
        lambda: alice.destroy("#"),
    ]
    for call in refused:
        with pytest.raises(InvalidArgument):
            call()
    assert alice.topic("#tea") == ""  # the connection stayed in step


def test_a_destroyed_room_is_not_joined_again_after_a_reconnect(
    make_server: ServerFactory,
) -> None:
    """Joining it again would create it anew, owned by whoever reconnected first."""
    server = make_server(listen=[f"127.0.0.1:{free_port()}"])
    server.add_user("alice")
    alice = Client("127.0.0.1", server.port, ca_file=server.ca_file, timeout=5, reconnect=FAST)
    apps: list[App] = []
    try:
        alice.login("alice", PASSWORD)
        alice.join("#ops")
        alice.join("#tea")
        server.add_user("owner", admin=True)
        with server_client(server, "owner") as owner:
            assert owner.request("/destroy #tea") == "OK destroy #tea"
        assert Destroyed("#tea", "owner") in list(alice.events(timeout=0.5))
        apps.append(restart(server))
        assert alice.next_event(timeout=5) == Bye("shutting-down")
        assert alice.next_event(timeout=5) == Reconnected(("#lobby", "#ops"))
        assert apps[0].store.get_room("#tea") is None
    finally:
        alice.close()
        for app in apps:
            app.stop(grace_s=1.0)


# -- reconnecting --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def restart(server: Server) -> App:
    server.app.stop(grace_s=1.0)
    app = App(load_settings(server.config))
    app.start()
    return app


def test_reconnects_after_a_restart_and_rejoins(make_server: ServerFactory) -> None:
    server = make_server(listen=[f"127.0.0.1:{free_port()}"])
    server.add_user("alice")
    server.add_user("bob")
    alice = Client("127.0.0.1", server.port, ca_file=server.ca_file, timeout=5, reconnect=FAST)
    apps: list[App] = []
    try:
        alice.login("alice", PASSWORD)
        alice.join("#ops")
        alice.join("#tea")
        alice.part("#lobby")
        apps.append(restart(server))
        assert alice.next_event(timeout=5) == Bye("shutting-down")
        assert alice.next_event(timeout=5) == Reconnected(("#ops", "#tea"))
        assert alice.current_room == "#tea"

        with server_client(server, "bob") as bob:
            bob.request("/join #tea")
            assert alice.next_event(timeout=5) == Joined("#tea", "bob")
            alice.say("back again")  # the server agrees #tea is current
            assert bob.expect("MSG #tea alice back again")
            assert bob.request("/who #lobby").startswith("OK who #lobby bob")
            assert "alice" not in bob.request("/who #lobby")

        # A request also reconnects, when the server said goodbye while nobody listened.
        apps[0].stop(grace_s=1.0)
        apps.append(App(load_settings(server.config)))
        apps[-1].start()
        assert alice.who("#ops") == ["alice"]
        assert alice.next_event(0) == Parted("#tea", "bob")
        assert alice.next_event(0) == Bye("shutting-down")
        assert alice.next_event(0) == Reconnected(("#ops", "#tea"))
    finally:
        alice.close()
        for app in apps:
            app.stop(grace_s=1.0)


def test_reconnecting_gives_up(make_server: ServerFactory) -> None:
    server = make_server()
    server.add_user("alice")
    policy = Backoff(initial_s=0.01, max_s=0.02, max_attempts=3)
    with Client(
        "127.0.0.1", server.port, ca_file=server.ca_file, timeout=2, reconnect=policy
    ) as alice:
        alice.login("alice", PASSWORD)
        server.app.stop(grace_s=1.0)
        events = alice.events(timeout=5)
        assert next(events) == Bye("shutting-down")
        with pytest.raises(ReconnectFailed, match="gave up after 3 attempts"):
            next(events)


def test_backoff_is_bounded_and_jittered() -> None:
    policy = Backoff(initial_s=1, max_s=8, factor=2, max_attempts=5)
    delays = [policy.delay(attempt) for attempt in range(50) for _ in range(20)]
    assert all(0 <= delay <= 8 for delay in delays)
    assert len(set(delays)) > 100
    assert max(policy.delay(0) for _ in range(50)) <= 1
    with pytest.raises(ValueError, match="max_attempts"):
        Backoff(max_attempts=0)


class server_client:  # noqa: N801 -- reads as a function in `with`
    """A `helpers.Client` for ``name``, closed on exit (the fixture's may be gone)."""

    def __init__(self, server: Server, name: str) -> None:
        from helpers import Client as RawClient

        self.client = RawClient(server.port, server.ca_file)
        self.client.login(name)

    def __enter__(self) -> object:
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close()


# -- a scripted peer -----------------------------------------------------------------------------


class Peer:
    """The server side of one scripted connection."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.sock.settimeout(5)
        self.buffer = b""

    def send(self, *lines: str | bytes) -> None:
        for line in lines:
            data = line if isinstance(line, bytes) else line.encode()
            self.sock.sendall(data + b"\n")

    def receive(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("the client closed the connection")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def expect(self, line: str) -> None:
        got = self.receive()
        assert got == line, f"expected {line!r}, got {got!r}"

    def login(self, password: str = "pw") -> None:  # noqa: S107 -- a scripted test password
        self.expect(f"/login alice {password}")
        self.send("OK login alice #lobby")


Script = Callable[[Peer, int], None]


class ScriptedServer:
    """Accepts connections and hands connection number N to ``script(peer, N)``."""

    def __init__(
        self,
        tls_files: dict[str, Path],
        script: Script,
        hello: str = "HELLO sealroom 1 scripted hi",
    ) -> None:
        self.hello = hello
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(tls_files["cert"], tls_files["key"])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = int(self.listener.getsockname()[1])
        self.script = script
        self.failures: list[BaseException] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        number = 0
        while not self.stopping.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            try:
                with self.context.wrap_socket(raw, server_side=True) as sock:
                    peer = Peer(sock)
                    peer.send(self.hello)
                    self.script(peer, number)
            except (EOFError, OSError):
                pass  # the client went away; what the test asserts decides
            except BaseException as error:
                self.failures.append(error)
            finally:
                raw.close()
            number += 1

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()
        if self.failures:
            raise self.failures[0]


@pytest.fixture
def scripted(tls_files: dict[str, Path]) -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def factory(script: Script, **kw: str) -> ScriptedServer:
        servers.append(ScriptedServer(tls_files, script, **kw))
        return servers[-1]

    yield factory
    for server in servers:
        server.close()


def client_for(peer_server: ScriptedServer, tls_files: dict[str, Path], **kw: object) -> Client:
    kw.setdefault("timeout", 2)
    return Client("127.0.0.1", peer_server.port, ca_file=tls_files["ca"], **kw)  # type: ignore[arg-type]


def test_history_and_stored_messages(
    scripted: Callable[..., ScriptedServer], tls_files: dict[str, Path]
) -> None:
    def script(peer: Peer, number: int) -> None:
        peer.login()
        peer.expect("/history #tea 2")
        # A stored private message right before the reply's lines: only the count tells.
        peer.send(
            "HIST alice 7 2024-05-01T10:00:00.000Z bob stored for you",
            "HIST #tea 1 2024-05-01T09:00:00.123Z bob one",
            "HIST #tea 2 2024-05-01T09:00:01.000Z carol  two, spaced",
            "OK history #tea 2",
        )
        peer.expect("/history bob")
        peer.send("OK history bob 0")
        peer.expect("/quit")
        peer.send("OK quit", "BYE quit")

    with client_for(scripted(script), tls_files) as client:
        client.login("alice", "pw")
        assert client.history("#tea", 2) == [
            History("#tea", 1, datetime(2024, 5, 1, 9, 0, 0, 123000, UTC), "bob", "one"),
            History("#tea", 2, datetime(2024, 5, 1, 9, 0, 1, tzinfo=UTC), "carol", " two, spaced"),
        ]
        assert client.history("bob") == []
        stored = client.next_event(0)
        assert stored == History(
            "alice", 7, datetime(2024, 5, 1, 10, tzinfo=UTC), "bob", "stored for you"
        )
        client.quit()


def test_data_lines_before_an_event_were_events(
    scripted: Callable[..., ScriptedServer], tls_files: dict[str, Path]
) -> None:
    def script(peer: Peer, number: int) -> None:
        peer.expect("/help")
        peer.send("INFO early notice", "MSG #lobby bob hi", "INFO /ping - liveness", "OK help")
        peer.expect("/ping")
        peer.send("OK ping")

    with client_for(scripted(script), tls_files) as client:
        assert client.help() == ["/ping - liveness"]
        assert client.next_event(0) == Info("early notice")
        assert client.next_event(0) == Message("#lobby", "bob", "hi")
        client.ping()


def test_resume_token_is_used_to_reconnect(
    scripted: Callable[..., ScriptedServer], tls_files: dict[str, Path]
) -> None:
    token = "A" * 43

    def script(peer: Peer, number: int) -> None:
        if number == 0:
            peer.login()
            peer.expect("/token")
            peer.send(f"OK token {token} 2099-01-01T00:00:00Z")
            peer.expect("/join #tea")
            peer.send("OK join #tea")
            peer.send("BYE shutting-down")
            return
        if number == 1:
            peer.expect(f"/resume alice {token}")
            peer.send("OK login alice #lobby")
            peer.expect("/token")
            peer.send(f"OK token {'B' * 43} 2099-01-01T00:00:00Z")
            peer.expect("/join #tea")
            peer.send("OK join #tea")
            peer.send("BYE shutting-down")
            return
        # A refused token (revoked, expired): the password it kept logs in instead.
        peer.expect(f"/resume alice {'B' * 43}")
        peer.send("ERR auth-failed wrong name or password")
        peer.login()
        peer.expect("/token")
        peer.send("ERR server-busy not now")
        peer.expect("/join #tea")
        peer.send("OK join #tea")
        peer.expect("/quit")
        peer.send("OK quit", "BYE quit")

    with client_for(scripted(script), tls_files, reconnect=FAST) as client:
        client.login("alice", "pw")
        client.join("#tea")
        assert client.next_event(5) == Bye("shutting-down")
        assert client.next_event(5) == Reconnected(("#lobby", "#tea"))
        assert "B" * 43 not in repr(vars(client))
        assert client.next_event(5) == Bye("shutting-down")
        assert client.next_event(5) == Reconnected(("#lobby", "#tea"))
        client.quit()


def test_hostile_server_lines(
    scripted: Callable[..., ScriptedServer], tls_files: dict[str, Path]
) -> None:
    def script(peer: Peer, number: int) -> None:
        peer.send(b"MSG #lobby evil \x1b[2J\xff boom")
        peer.expect("/ping")
        peer.send("ERR no-such-code what")
        peer.expect("/ping")
        peer.send("OK ping")
        peer.send("MSG #lobby evil " + "x" * 2000)
        peer.receive()  # until the client hangs up

    with client_for(scripted(script), tls_files, max_line_bytes=1024) as client:
        client.connect()
        with pytest.raises(ProtocolViolation, match="no-such-code"):
            client.ping()
        assert client.ping() == ""  # an unknown code does not desynchronise the connection
        # The library hands text over as it came (the tools escape it for terminals).
        assert client.next_event(1) == Message("#lobby", "evil", "\x1b[2J\ufffd boom")
        assert client.next_event(2) == Bye("protocol-violation")  # the over-long line


def test_timeouts_and_dead_peers(
    scripted: Callable[..., ScriptedServer], tls_files: dict[str, Path]
) -> None:
    def script(peer: Peer, number: int) -> None:
        if number == 0:
            peer.expect("/who")
            peer.receive()  # never answered
        else:
            peer.expect("/ping keepalive")
            peer.send("OK ping keepalive")
            peer.expect("/ping keepalive")
            peer.receive()  # the second one is never answered: a dead peer

    server = scripted(script)
    with client_for(server, tls_files, timeout=0.5) as client:
        with pytest.raises(RequestTimeout):
            client.who()
        assert not client.connected
    with client_for(server, tls_files, timeout=0.5, keepalive_s=0.2) as client:
        client.connect()
        assert client.next_event(timeout=0.35) is None  # one ping answered
        assert client.next_event(timeout=3) == Bye("connection-lost")


def test_refused_connections(
    scripted: Callable[..., ScriptedServer], tls_files: dict[str, Path], tmp_path: Path
) -> None:
    with (
        Client("127.0.0.1", free_port(), ca_file=tls_files["ca"]) as client,
        pytest.raises(ConnectError, match="cannot connect"),
    ):
        client.connect()

    server = scripted(lambda peer, number: None)
    other_ca = tmp_path / "other.pem"
    import trustme

    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with (
        Client("127.0.0.1", server.port, ca_file=other_ca) as client,
        pytest.raises(ConnectError, match="cannot verify the certificate"),
    ):
        client.connect()
    with (
        Client(
            "127.0.0.1", server.port, ca_file=tls_files["ca"], server_hostname="elsewhere.example"
        ) as client,
        pytest.raises(ConnectError, match="cannot verify"),
    ):
        client.connect()


def test_protocol_version_is_checked(
    scripted: Callable[..., ScriptedServer], tls_files: dict[str, Path]
) -> None:
    for hello, problem in [
        ("HELLO sealroom 2 future hi", "speaks protocol version 2"),
        ("SSH-2.0-OpenSSH_9.6", "is not a Sealroom server"),
    ]:
        with (
            client_for(scripted(lambda peer, number: None, hello=hello), tls_files) as client,
            pytest.raises(ConnectError, match=problem),
        ):
            client.connect()
    with client_for(scripted(lambda peer, number: peer.receive()), tls_files) as client:
        client.connect()
        assert client.server_name == "scripted"


@pytest.mark.parametrize(
    ("line", "event"),
    [
        ("MSG #a bob  two  spaces ", Message("#a", "bob", " two  spaces ")),
        ("DM bob hi", PrivateMessage("bob", "hi")),
        ("JOIN #a bob", Joined("#a", "bob")),
        ("PART #a bob", Parted("#a", "bob")),
        ("WALL root x", Wall("root", "x")),
        ("INFO some text", Info("some text")),
        ("BYE idle-timeout", Bye("idle-timeout")),
        ("HIST #a x 2024-01-01T00:00:00Z b t", None),
        ("HIST #a 1 yesterday b t", None),
        ("MSG #a", None),
        ("JOIN #a", None),
        ("OK who #a", None),
        ("FUTURE thing", None),
    ],
)
def test_parse_event(line: str, event: object) -> None:
    assert parse_event(line) == event

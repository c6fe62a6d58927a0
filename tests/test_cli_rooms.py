"""`sealroom room …`: each command against a database (SQLite, and PostgreSQL where the
engine matters), its refusals as one line, and the commands acting on a running server."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import CHEAP_ARGON2, Client, Server, ServerFactory, wait_until, write_config
from sealroom.cli.main import main
from sealroom.core.model import RoomView
from sealroom.core.storage import Store
from sealroom.store import open_store

HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"  # never checked here


ENGINES = ["sqlite", "postgresql"]


def database_for(engine: str, request: pytest.FixtureRequest, folder: Path) -> str:
    if engine == "sqlite":
        return str(folder / "var" / "sealroom.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


def seed(database: str) -> Store:
    """``database``, created, with accounts and rooms as a server leaves them: #lobby without
    an owner, #tea owned by alice with bob as an operator, #den private and carol's."""
    store = open_store(database)
    for name, admin in (("alice", False), ("bob", False), ("carol", False), ("root", True)):
        store.add_account(name, HASH, is_admin=admin)
    store.create_room("#lobby", None)
    store.create_room("#tea", "alice")
    store.set_role("#tea", "bob", "operator", True)
    store.set_room("#tea", topic="tea and cake")
    store.create_room("#den", "carol")
    store.set_room("#den", mode="private")
    return store


@pytest.fixture(params=ENGINES)
def seeded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Store]]:
    """A configuration and its seeded database, on each engine."""
    database = database_for(request.param, request, tmp_path)
    config = write_config(
        tmp_path, {"storage": {"database": database}, "auth": {"argon2": CHEAP_ARGON2}}
    )
    with seed(database) as store:
        yield config, store


@pytest.fixture
def sqlite_config(tmp_path: Path) -> Path:
    """A configuration and its seeded SQLite database, for what no engine changes."""
    database = str(tmp_path / "var" / "sealroom.db")
    seed(database).close()
    return write_config(
        tmp_path, {"storage": {"database": database}, "auth": {"argon2": CHEAP_ARGON2}}
    )


def run(argv: list[str], config: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    return main([*argv, "-c", str(config)])


# -- against a database ------------------------------------------------------------------------


def test_every_command_changes_the_database(
    seeded: tuple[Path, Store],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, store = seeded
    assert run(["room", "list", "--json"], config, monkeypatch) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["owner"], r["mode"], r["topic"]) for r in rows] == [
        ("#den", "carol", "private", ""),
        ("#lobby", None, "open", ""),
        ("#tea", "alice", "open", "tea and cake"),
    ]
    assert rows[2]["operators"] == ["alice", "bob"]

    assert run(["room", "op", "carol", "tea"], config, monkeypatch) == 0
    assert run(["room", "deop", "Bob", "#TEA"], config, monkeypatch) == 0
    assert run(["room", "invite", "alice", "den"], config, monkeypatch) == 0
    assert run(["room", "ban", "bob", "den"], config, monkeypatch) == 0
    assert run(["room", "topic", "den", "a", "quiet", "corner"], config, monkeypatch) == 0
    tea, den = store.get_room("#tea"), store.get_room("#den")
    assert tea is not None
    assert den is not None
    assert tea.operators == {"alice", "carol"}
    assert (den.invited, den.banned, den.topic) == ({"alice"}, {"bob"}, "a quiet corner")

    assert run(["room", "unban", "bob", "den"], config, monkeypatch) == 0
    assert run(["room", "topic", "den", "--clear"], config, monkeypatch) == 0
    den = store.get_room("#den")
    assert den is not None
    assert (den.banned, den.topic) == (frozenset(), "")

    assert run(["room", "destroy", "#den"], config, monkeypatch) == 0
    assert store.get_room("#den") is None
    assert [r.name for r in store.list_rooms()] == ["#lobby", "#tea"]
    out = capsys.readouterr().out
    assert "carol is now an operator of #tea" in out
    assert "destroyed #den" in out


def test_list_and_show_as_text_and_json(
    sqlite_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["room", "list"], sqlite_config, monkeypatch) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ROOM", "MODE", "OWNER", "TOPIC"]
    assert [line.split(None, 3) for line in lines[1:]] == [
        ["#den", "private", "carol"],
        ["#lobby", "open", "-"],
        ["#tea", "open", "alice", "tea and cake"],
    ]
    assert run(["room", "show", "tea"], sqlite_config, monkeypatch) == 0
    shown = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert shown["room"] == "#tea"
    assert shown["owner"] == "alice"
    assert shown["operators"] == "alice bob"
    assert shown["banned"] == "-"
    assert run(["room", "show", "lobby"], sqlite_config, monkeypatch) == 0
    assert "#lobby (the default room)" in capsys.readouterr().out
    assert run(["room", "show", "#tea", "--json"], sqlite_config, monkeypatch) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["topic"] == "tea and cake"
    assert record["created"].endswith("Z")
    assert run(["room", "topic", "tea"], sqlite_config, monkeypatch) == 0
    assert capsys.readouterr().out == "tea and cake\n"


def test_what_is_already_so_is_said_and_changes_nothing(
    sqlite_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_store(str(sqlite_config.parent / "var" / "sealroom.db")) as store:
        version = store.rooms_version()
        for argv, said in (
            (["room", "op", "bob", "tea"], "bob is already an operator of #tea"),
            (["room", "deop", "carol", "tea"], "carol is not an operator of #tea"),
            (["room", "unban", "carol", "tea"], "carol is not banned from #tea"),
        ):
            assert run(argv, sqlite_config, monkeypatch) == 0
            assert said in capsys.readouterr().out
        assert store.rooms_version() == version


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["room", "destroy", "lobby"], "#lobby is the default room"),
        (["room", "destroy", "#nowhere"], "no room #nowhere"),
        (["room", "show", "nowhere"], "no room #nowhere"),
        (["room", "show", "#bad room"], "invalid room"),
        (["room", "show", "#\u202etea"], "invalid room '#\\u202etea'"),
        (["room", "ban", "alice", "tea"], "alice owns #tea"),
        (["room", "ban", "root", "tea"], "root is an admin"),
        (["room", "ban", "ghost", "tea"], "no account ghost"),
        (["room", "ban", "Not A Name", "tea"], "invalid user name"),
        (["room", "deop", "alice", "tea"], "the owner is always an operator"),
        (["room", "op", "dave", "nowhere"], "no room #nowhere"),
        (["room", "topic", "tea", "x" * 301], "at most 300 characters"),
        (["room", "topic", "tea", "bell\x07"], "control characters"),
        (["room", "topic", "tea", "new", "--clear"], "not both"),
    ],
)
def test_refusals_are_one_line(
    argv: list[str],
    message: str,
    sqlite_config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(argv, sqlite_config, monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.startswith("sealroom: ")
    assert err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err


def test_a_banned_user_is_given_no_role(
    sqlite_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ban outweighs the role, so the command would report a change that is none."""
    with open_store(str(sqlite_config.parent / "var" / "sealroom.db")) as store:
        assert run(["room", "ban", "carol", "tea"], sqlite_config, monkeypatch) == 0
        for verb in ("op", "invite"):
            assert run(["room", verb, "carol", "tea"], sqlite_config, monkeypatch) == 1
            assert "sealroom room unban carol tea" in capsys.readouterr().err
        tea = store.get_room("#tea")
        assert tea is not None
        assert "carol" not in tea.operators | tea.invited


@pytest.mark.parametrize(
    "argv",
    [
        ["room", "list"],
        ["room", "show", "tea"],
        ["room", "destroy", "tea"],
        ["room", "ban", "bob", "tea"],
        ["room", "topic", "tea", "hello"],
    ],
)
def test_room_commands_never_create_a_database(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEALROOM_CONFIG", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"no database at {tmp_path / 'var' / 'sealroom.db'}" in err
    assert list(tmp_path.iterdir()) == []


# -- on a running server -------------------------------------------------------------------------


def until(client: Client, prefix: str, deadline: float) -> list[str]:
    """Lines up to and including the first that starts with ``prefix``, before ``deadline``
    (a time.monotonic() value)."""
    seen: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {prefix!r} in time; saw {seen}")
        try:
            seen.append(client.line(timeout=remaining))
        except TimeoutError:
            continue
        if seen[-1].startswith(prefix):
            return seen


def room_lines(client: Client) -> list[str]:
    """The ROOM lines of the server's reply to /list."""
    client.send("/list")
    lines: list[str] = []
    while not (line := client.line()).startswith("OK list"):
        if line.startswith("ROOM "):
            lines.append(line)
    return lines


def replies_until(client: Client, line: str) -> list[str]:
    """Send ``line`` and return every line up to its reply: what had arrived before it."""
    client.send(line)
    seen = [client.line()]
    while not seen[-1].startswith(("OK ", "ERR ")):
        seen.append(client.line())
    return seen


@pytest.fixture(params=ENGINES)
def served(
    request: pytest.FixtureRequest, make_server: ServerFactory, tmp_path: Path
) -> tuple[Server, Client, Client, Client]:
    """A running server (on each engine) where alice owns #tea, and bob and carol are in it."""
    server = make_server(storage={"database": database_for(request.param, request, tmp_path)})
    alice, bob, carol = server.user("alice"), server.user("bob"), server.user("carol")
    assert alice.request("/join #tea") == "OK join #tea"
    assert alice.request("/topic #tea tea and cake") == "OK topic #tea tea and cake"
    assert bob.request("/join #tea") == "OK join #tea tea and cake"
    assert carol.request("/join #tea") == "OK join #tea tea and cake"
    return server, alice, bob, carol


def test_the_cli_commands_act_on_a_running_server(
    served: tuple[Server, Client, Client, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, alice, bob, carol = served
    config = server.config

    def tea() -> RoomView:
        return server.app.hub.view("#tea")

    # A ban takes bob's session out within 2 s; the others see him leave; he stays out.
    assert run(["room", "ban", "bob", "#tea"], config, monkeypatch) == 0
    assert until(bob, "BANNED #tea ", time.monotonic() + 2)
    assert until(carol, "PART #tea bob", time.monotonic() + 2)
    assert bob.request("/join #tea").startswith("ERR forbidden")
    assert bob.request("/say #tea let me in").startswith("ERR forbidden")
    assert room_lines(bob) == ["ROOM #lobby 3 open"]  # a banned user is not shown the room

    # The server's own replies follow the database.
    assert run(["room", "topic", "tea", "scones", "only"], config, monkeypatch) == 0
    wait_until(lambda: server.app.hub.topic("#tea") == "scones only", 2, "the new topic")
    assert room_lines(carol) == ["ROOM #lobby 3 open", "ROOM #tea 2 open scones only"]
    assert carol.request("/topic #tea") == "OK topic #tea scones only"
    assert run(["room", "unban", "bob", "tea"], config, monkeypatch) == 0
    wait_until(lambda: "bob" not in tea().banned, 2, "the ban lifted")
    assert bob.request("/join #tea") == "OK join #tea scones only"

    # The owner is gone: an admin makes carol an operator, and she can moderate.
    assert carol.request("/ban bob #tea").startswith("ERR forbidden")
    assert run(["room", "op", "carol", "tea"], config, monkeypatch) == 0
    wait_until(lambda: "carol" in tea().operators, 2, "carol an operator")
    assert carol.request("/ban bob #tea") == "OK ban bob #tea"
    assert until(bob, "BANNED #tea carol", time.monotonic() + 2)

    # Destroy empties the room at once: every member gets DESTROYED, and no PART follows.
    assert run(["room", "destroy", "tea"], config, monkeypatch) == 0
    deadline = time.monotonic() + 2
    assert until(alice, "DESTROYED #tea ", deadline)
    assert until(carol, "DESTROYED #tea ", deadline)
    assert not [line for line in replies_until(alice, "/ping") if line.startswith("PART")]
    assert room_lines(carol) == ["ROOM #lobby 3 open"]
    assert alice.request("/who #tea").startswith("ERR no-such-room")
    assert carol.request("/join #tea") == "OK join #tea"  # the name is free: carol owns it now
    assert carol.request("/rooms") == "OK rooms #lobby #tea"


def test_the_default_room_survives_the_cli(
    served: tuple[Server, Client, Client, Client],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, alice, _bob, _carol = served
    assert run(["room", "destroy", "#lobby"], server.config, monkeypatch) == 1
    assert "default room" in capsys.readouterr().err
    assert alice.request("/who #lobby") == "OK who #lobby alice bob carol"

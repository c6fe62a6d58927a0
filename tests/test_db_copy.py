"""`sealroom db copy --to URL`: a single node's SQLite data moves into PostgreSQL whole.

A real server fills an SQLite database the way users do (accounts, room messages, a private
message waiting for an offline user, a resume token, changed and removed accounts); the copy
goes into a fresh PostgreSQL database; a server started on that database then serves the same
users as if nothing had happened.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from engines import PostgresEngine
from helpers import Server, ServerFactory
from sealroom.cli.main import main
from sealroom.core.model import StoredMessage
from sealroom.store.postgres import PostgresStore
from sealroom.store.sqlite import SqliteStore

TOKEN = re.compile(r"OK token ([A-Za-z0-9_-]{43}) \S+")
NOW = "2026-01-01T00:00:00.000Z"


def sqlite_counter(path: Path, key: str) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])


def populate(server: Server) -> dict[str, object]:
    """Use the SQLite server as people do; what they did, to look for after the copy."""
    server.add_user("bob")
    server.add_user("dave")
    alice = server.user("alice", admin=True)
    said = [int(alice.request(f"room line {i}").rsplit(" ", 1)[1]) for i in range(3)]
    waiting = int(alice.request("/msg bob while you were away").rsplit(" ", 1)[1])
    match = TOKEN.fullmatch(alice.request("/token"))
    assert match
    carol = server.user("carol")
    carol.close()
    server.app.store.set_enabled("carol", False)
    server.app.store.remove_account("dave")  # its stamp is spent: no new account may get it
    server.app.writer.flush()
    return {"said": said, "waiting": waiting, "token": match.group(1)}


def test_copy_moves_everything_into_postgresql(
    make_server: ServerFactory, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_server()
    did = populate(source)
    database = source.settings.storage.database
    assert isinstance(database, Path)
    with SqliteStore(database) as store:
        accounts = store.list_accounts()
    high_water = sqlite_counter(database, "id_high_water")
    stamps_given = sqlite_counter(database, "account_stamp")

    # The server may keep running: the copy reads one consistent snapshot.
    assert main(["db", "copy", "--to", postgres_url, "-c", str(source.config)]) == 0
    out, err = capsys.readouterr()
    assert "copied accounts: 3/3" in err
    assert "copied messages: 4/4" in err
    assert "copied tokens: 1/1" in err
    assert "copied 3 accounts, 4 messages (1 waiting for delivery) and 1 resume tokens" in out
    assert f"new message ids start above {high_water}" in out
    password = postgres_url.split(":")[2].split("@", maxsplit=1)[0]
    assert password not in out + err

    with PostgresStore(postgres_url) as copied:
        assert copied.list_accounts() == accounts  # hashes, roles, states, times and stamps
        assert copied.pending_count("bob") == 1
        assert copied.add_account("erin", "hash").stamp > stamps_given
        assert copied.check() == []

    target = make_server(storage={"database": postgres_url})
    alice = target.client()
    alice.login("alice")  # the same password hash
    alice.send("/history #lobby")
    assert [int(alice.line().split()[2]) for _ in range(3)] == did["said"]
    assert alice.line() == "OK history #lobby 3"
    assert int(alice.request("first words on postgresql").rsplit(" ", 1)[1]) > high_water
    bob = target.client()
    bob.login("bob")
    stored = bob.line()  # still pending after the copy: delivered at this login
    assert stored.split()[:3] == ["HIST", "bob", str(did["waiting"])]
    assert stored.endswith("alice while you were away")
    assert bob.request("/ping") == "OK ping"
    again = target.client()
    assert again.request(f"/resume alice {did['token']}").startswith("OK login alice")
    assert target.client().request(f"/login carol {'x' * 12}").startswith("ERR auth-failed")


@pytest.fixture
def config(tmp_path: Path) -> str:
    """A configuration whose SQLite database holds one account, alice."""
    with SqliteStore(tmp_path / "sealroom.db") as store:
        store.add_account("alice", "hash")
    path = tmp_path / "sealroom.yaml"
    path.write_text("storage: {database: sealroom.db}\n")
    return str(path)


def test_a_database_that_is_not_empty_is_refused(
    config: str, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "copy", "--to", postgres_url, "-c", config]) == 0
    with PostgresStore(postgres_url) as copied:
        copied.add_account("zed", "hash")
    capsys.readouterr()
    assert main(["db", "copy", "--to", postgres_url, "-c", config]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(r"sealroom: postgresql://postgres@\S+ is not empty \(2 accounts.*\n", err)
    with PostgresStore(postgres_url) as copied:
        assert [a.name for a in copied.list_accounts()] == ["alice", "zed"]


def test_into_a_database_whose_schema_exists_already(tmp_path: Path, postgres_url: str) -> None:
    SqliteStore(tmp_path / "sealroom.db").close()  # nothing in it: no id, no stamp given yet
    (tmp_path / "sealroom.yaml").write_text("storage: {database: sealroom.db}\n")
    PostgresStore(postgres_url).close()  # as `db init` leaves it: the schema, nothing in it
    assert main(["db", "copy", "--to", postgres_url, "-c", str(tmp_path / "sealroom.yaml")]) == 0
    with PostgresStore(postgres_url) as copied:
        assert copied.count_accounts() == 0
        assert copied.add_account("alice", "hash").stamp == 1
        assert copied.reserve_ids(1) == range(1, 2)


def test_leases_stay_behind(tmp_path: Path, postgres_url: str) -> None:
    """A lease belongs to a session of the server that read the SQLite file; none of them
    will write to PostgreSQL, so what they held waits there for anybody to claim."""
    with SqliteStore(tmp_path / "sealroom.db") as store:
        ids = store.reserve_ids(2)
        store.add_messages(
            [StoredMessage(i, None, "bob", "alice", f"wait {i}", NOW) for i in ids],
            delivered=False,
        )
        assert len(store.claim_pending("bob", 10, "single/s1", 3600)) == 2
    (tmp_path / "sealroom.yaml").write_text("storage: {database: sealroom.db}\n")
    assert main(["db", "copy", "--to", postgres_url, "-c", str(tmp_path / "sealroom.yaml")]) == 0
    with PostgresStore(postgres_url) as copied:
        assert [m.body for m in copied.claim_pending("bob", 10, "node1/s1", 60)] == [
            "wait 1",
            "wait 2",
        ]


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("var/other.db", "copy to a postgresql:// URL"),
        ("mysql://u:hunter22@127.0.0.1/db", "copy to a postgresql:// URL"),
    ],
)
def test_only_into_postgresql(
    config: str, target: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "copy", "--to", target, "-c", config]) == 1
    err = capsys.readouterr().err
    assert error in err
    assert "hunter22" not in err


def test_wrong_password_is_one_line_without_it(
    config: str, postgres: PostgresEngine, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres.url(postgres_url.rsplit("/", 1)[1], password="not-the-password")
    assert main(["db", "copy", "--to", url, "-c", config]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "password authentication failed" in err
    assert "not-the-password" not in err


def test_a_missing_source_is_a_user_error(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "sealroom.yaml"
    config.write_text("storage: {database: nothing-here.db}\n")
    assert main(["db", "copy", "--to", postgres_url, "-c", str(config)]) == 1
    assert f"no database at {tmp_path / 'nothing-here.db'}" in capsys.readouterr().err
    assert not (tmp_path / "nothing-here.db").exists()

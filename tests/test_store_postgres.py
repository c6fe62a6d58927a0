"""What only the PostgreSQL store has: its migrations, its URL and secrets, its bounds.

Against the real server of conftest.py's ``postgres`` fixture, one database per test. The
store's meaning (the same as SQLite's) is tested on both engines in test_store.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from engines import PostgresEngine, free_port
from helpers import ServerFactory, wait_until
from sealroom.core.model import SchemaTooNew, StoredMessage, StoreError
from sealroom.store import open_store
from sealroom.store import postgres_schema as schema_module
from sealroom.store import postgres_url as url_module
from sealroom.store.postgres import PostgresStore
from sealroom.store.postgres_schema import MIGRATIONS
from sealroom.store.sqlite import SqliteStore

NOW = "2026-01-01T00:00:00.000Z"


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Look at the database with a connection of our own, not through the store."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description is not None else []


def schema_version(url: str) -> int:
    return int(query(url, "SELECT version FROM schema_version")[0][0])


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:
    with PostgresStore(postgres_url) as opened:
        yield opened


# -- migrations ---------------------------------------------------------------------------


def test_an_empty_database_is_migrated(postgres_url: str) -> None:
    with PostgresStore(postgres_url) as store:
        assert store.count_accounts() == 0
    assert schema_version(postgres_url) == len(MIGRATIONS)
    tables = {row[0] for row in query(postgres_url, "SELECT tablename FROM pg_tables")}
    assert {"accounts", "messages", "resume_tokens", "meta", "schema_version"} <= tables


def test_only_an_existing_schema_without_create(postgres_url: str) -> None:
    with pytest.raises(StoreError, match=r"holds no Sealroom database.*db init"):
        PostgresStore(postgres_url, create=False)
    assert query(postgres_url, "SELECT to_regclass('schema_version')") == [(None,)]
    PostgresStore(postgres_url).close()
    PostgresStore(postgres_url, create=False).close()


def test_later_migration_step_is_applied_on_open(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with PostgresStore(postgres_url) as store:
        store.add_account("alice", "hash-a")
    step = ("CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)",)
    monkeypatch.setattr(schema_module, "MIGRATIONS", (*MIGRATIONS, step))
    with PostgresStore(postgres_url) as store:
        assert store.get_account("alice") is not None
    assert schema_version(postgres_url) == len(MIGRATIONS) + 1
    assert query(postgres_url, "SELECT count(*) FROM notes") == [(0,)]


def test_failing_migration_leaves_the_database_untouched(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    PostgresStore(postgres_url).close()
    good = ("CREATE TABLE notes (id bigint PRIMARY KEY)",)
    bad = ("THIS IS NOT SQL",)
    monkeypatch.setattr(schema_module, "MIGRATIONS", (*MIGRATIONS, good, bad))
    with pytest.raises(StoreError, match="cannot open database") as caught:
        PostgresStore(postgres_url)
    assert "\n" not in str(caught.value)
    assert schema_version(postgres_url) == len(MIGRATIONS)
    assert query(postgres_url, "SELECT to_regclass('notes')") == [(None,)]


def test_a_database_from_before_leases_keeps_its_waiting_messages(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Schema 2, the last without leases, migrates on open: what waited still waits, and
    is claimable."""
    with monkeypatch.context() as before:
        before.setattr(schema_module, "MIGRATIONS", MIGRATIONS[:2])
        with PostgresStore(postgres_url) as old:
            assert old.reserve_ids(3) == range(1, 4)
            old.add_messages([StoredMessage(1, None, "bob", "alice", "read", NOW)])
            old.add_messages(
                [StoredMessage(i, None, "bob", "alice", "waiting", NOW) for i in (2, 3)],
                delivered=False,
            )
    assert schema_version(postgres_url) == 2
    with PostgresStore(postgres_url) as store:
        assert schema_version(postgres_url) == len(MIGRATIONS)
        assert [m.id for m in store.pending("bob", 10)] == [2, 3]
        assert [m.id for m in store.claim_pending("bob", 10, "node1/s1", 60)] == [2, 3]
        assert store.claim_pending("bob", 10, "node2/s1", 60) == []
        assert store.check() == []


def test_newer_schema_is_refused(postgres_url: str) -> None:
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS) + 1,))
    with pytest.raises(SchemaTooNew, match="newer Sealroom") as caught:
        PostgresStore(postgres_url)
    assert "postgresql://postgres@127.0.0.1" in str(caught.value)
    assert schema_version(postgres_url) == len(MIGRATIONS) + 1


def test_many_nodes_migrating_a_new_database_at_once(postgres: PostgresEngine) -> None:
    # Each thread stands in for a node starting against the same new database.
    errors: list[BaseException] = []
    for _ in range(3):
        url = postgres.new_database()
        start = threading.Barrier(4, timeout=30)

        def open_and_close(url: str = url, start: threading.Barrier = start) -> None:
            try:
                start.wait()
                PostgresStore(url).close()
            except BaseException as exc:  # handed to the main thread below
                errors.append(exc)

        threads = [threading.Thread(target=open_and_close) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert schema_version(url) == len(MIGRATIONS)
    assert errors == []


def test_a_schema_of_the_operators_choosing(postgres_url: str) -> None:
    """The URL's own ``options`` are kept (Sealroom adds its timeouts to them)."""
    query(postgres_url, "CREATE SCHEMA chat")
    url = postgres_url + "?options=" + quote("-c search_path=chat")
    with PostgresStore(url) as store:
        store.add_account("alice", "hash")
        with store._connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("10s",)
    assert query(postgres_url, "SELECT name FROM chat.accounts") == [("alice",)]
    assert query(postgres_url, "SELECT to_regclass('public.accounts')") == [(None,)]


def test_a_database_that_is_not_utf8_is_refused(postgres: PostgresEngine) -> None:
    with postgres.admin() as conn:
        conn.execute("CREATE DATABASE latin ENCODING 'LATIN1' TEMPLATE template0 LOCALE 'C'")
    with pytest.raises(StoreError, match="LATIN1; Sealroom needs a UTF8 database"):
        PostgresStore(postgres.url("latin"))


# -- connections: bounds and secrets ------------------------------------------------------


def test_connections_are_bounded(store: PostgresStore) -> None:
    with store._connection() as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('statement_timeout',"
                " 'lock_timeout', 'idle_in_transaction_session_timeout')"
            ).fetchall()
        )
        assert settings == {
            "statement_timeout": "10000",
            "lock_timeout": "5000",
            "idle_in_transaction_session_timeout": "60000",
        }
        assert conn.info.get_parameters()["application_name"] == "sealroom"
        assert conn.info.get_parameters().get("connect_timeout", "5") == "5"


def test_a_statement_that_runs_too_long_is_cut_off(store: PostgresStore) -> None:
    def sleep_beyond_a_short_timeout() -> None:
        with store._connection() as conn:
            conn.execute("SET statement_timeout = '100ms'")  # the store's own is 10 s
            conn.execute("SELECT pg_sleep(5)")

    started = time.monotonic()
    with pytest.raises(StoreError, match="statement timeout"):
        sleep_beyond_a_short_timeout()
    assert time.monotonic() - started < 2


def test_wrong_password_names_the_database_but_never_the_password(
    postgres: PostgresEngine, postgres_url: str
) -> None:
    secret = "pa:ss/w@rd %sécret"
    database = postgres_url.rsplit("/", 1)[1]
    url = postgres.url(database, password=secret)
    with pytest.raises(StoreError) as caught:
        PostgresStore(url)
    message = str(caught.value)
    assert message.startswith(
        f"cannot open database postgresql://postgres@127.0.0.1:{postgres.port}/"
    )
    assert "password authentication failed" in message
    for form in (secret, quote(secret, safe="")):
        assert form not in message
    assert "\n" not in message


def test_no_server_there_fails_fast(postgres: PostgresEngine) -> None:
    url = f"postgresql://postgres:hunter22@127.0.0.1:{free_port()}/sealroom"
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot open database") as caught:
        PostgresStore(url)
    assert time.monotonic() - started < 5
    assert "hunter22" not in str(caught.value)
    assert "postgresql://postgres@127.0.0.1:" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:hunter22@127.0.0.1/db?sslmode=bogus",
        "postgresql://u:hunter22@127.0.0.1:notaport/db",
        "postgresql://u:hunter22@127.0.0.1/db?nosuchoption=1",
    ],
)
def test_a_malformed_url_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(StoreError) as caught:
        PostgresStore(url)
    assert "hunter22" not in str(caught.value)


def test_location_keeps_everything_but_secrets() -> None:
    cases = {
        "postgresql://alice:hunter22@db.example:5433/chat?sslmode=require": (
            "postgresql://alice@db.example:5433/chat"
        ),
        "postgresql:///chat?host=/run/postgresql": "postgresql:///chat?host=/run/postgresql",
    }
    for url, location in cases.items():
        params = url_module.conninfo_to_dict(url)
        assert url_module.location(params) == location
    assert url_module.secrets_in("postgresql://a:p%40ss@h/d") == ["p%40ss", "p@ss"]


def test_a_dropped_connection_fails_one_call_then_reconnects(store: PostgresStore) -> None:
    with store._connection() as conn:
        backend = conn.info.backend_pid
    with psycopg.connect(store_url(store), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
    # The pooled connection is dead: the call fails as a StoreError, the next one reconnects.
    with pytest.raises(StoreError, match="database error in postgresql://"):
        store.count_accounts()
    assert store.count_accounts() == 0


def store_url(store: PostgresStore) -> str:
    """The test's own URL for the store's database (the store keeps its password to itself)."""
    with store._connection() as conn:
        info = conn.info
        return (
            f"postgresql://{info.user}:{quote(info.password, safe='')}"
            f"@{info.host}:{info.port}/{info.dbname}"
        )


# -- what the Store protocol asks that PostgreSQL does its own way ------------------------


def test_backup_points_to_postgresql_tools(store: PostgresStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="pg_dump"):
        store.backup(tmp_path / "backup.db")


def test_check_finds_broken_invariants(store: PostgresStore, postgres_url: str) -> None:
    assert store.check() == []
    query(
        postgres_url,
        "INSERT INTO messages (id, room, sender, body, created_at)"
        " VALUES (99, '#a', 'x', 'y', 'z')",
    )
    query(
        postgres_url,
        "INSERT INTO accounts (name, password_hash, is_admin, created_at, stamp)"
        " VALUES ('x', 'h', false, 'z', 1000)",
    )
    assert store.check() == [
        "message id 99 is above the id high-water mark 0",
        "account stamp 1000 is above the stamp sequence (1)",
    ]


# -- a server on PostgreSQL ---------------------------------------------------------------


def test_open_store_picks_the_engine_by_the_name(postgres_url: str, tmp_path: Path) -> None:
    with open_store(postgres_url) as store:
        assert isinstance(store, PostgresStore)
    with open_store(postgres_url.replace("postgresql://", "postgres://", 1)) as store:
        assert isinstance(store, PostgresStore)
    with open_store(tmp_path / "sealroom.db") as store:
        assert isinstance(store, SqliteStore)
    with pytest.raises(StoreError, match=f"no database at {tmp_path / 'missing.db'}"):
        open_store(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    empty = postgres_url.rsplit("/", 1)[0] + "/postgres"  # exists, but holds no Sealroom schema
    with pytest.raises(StoreError, match="holds no Sealroom database"):
        open_store(empty, create=False)


def test_a_server_keeps_its_state_in_postgresql(
    make_server: ServerFactory, postgres_url: str
) -> None:
    server = make_server(storage={"database": postgres_url})
    server.add_user("bob")
    alice = server.user("alice")
    said = int(alice.request("hello from postgres").rsplit(" ", 1)[1])
    assert alice.request("/msg bob kept for later").startswith("OK msg bob")
    server.restart()
    alice = server.user("alice")
    alice.send("/history #lobby")
    assert alice.line().split()[:3] == ["HIST", "#lobby", str(said)]
    assert alice.line() == "OK history #lobby 1"
    bob = server.client()
    bob.login("bob")
    assert bob.line().endswith("alice kept for later")
    assert int(alice.request("after").rsplit(" ", 1)[1]) > said
    wait_until(
        lambda: query(postgres_url, "SELECT count(*) FROM messages WHERE NOT delivered") == [(0,)],
        what="the stored message marked delivered",
    )

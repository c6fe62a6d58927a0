"""The store against real SQLite files: schema migration, accounts, change detection."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from helpers import FakeWallClock
from sealroom.core.model import AccountExists, NoSuchAccount, SchemaTooNew, StoreError, iso_utc
from sealroom.store import sqlite as store_module
from sealroom.store.sqlite import MIGRATIONS, SqliteStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "sealroom.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(db_path) as opened:
        yield opened


def raw_query(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Look at the file with a connection of our own, not through the SqliteStore."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def set_user_version(path: Path, version: int) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {version:d}")
        conn.commit()


# -- opening and migrating ----------------------------------------------------------------


def test_new_file_is_created_with_parent_dirs_and_migrated(db_path: Path) -> None:
    assert not db_path.parent.exists()
    with SqliteStore(db_path) as store:
        assert store.count_accounts() == 0
    assert raw_query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert raw_query(db_path, "PRAGMA journal_mode") == [("wal",)]
    tables = raw_query(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")
    assert ("accounts",) in tables


def test_empty_existing_file_is_migrated(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.touch()
    with SqliteStore(db_path) as store:
        assert store.list_accounts() == []
    assert raw_query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]


def test_connection_settings(store: SqliteStore) -> None:
    with store._connection() as conn:
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (5000,)
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)


def test_reopen_keeps_data_and_does_not_migrate_again(db_path: Path) -> None:
    with SqliteStore(db_path) as store:
        store.add_account("alice", "hash-a", is_admin=True)
    with SqliteStore(db_path) as store:
        account = store.get_account("alice")
    assert account is not None
    assert account.is_admin
    assert account.password_hash == "hash-a"
    assert raw_query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]


def test_later_migration_step_is_applied_on_open(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SqliteStore(db_path) as store:
        store.add_account("alice", "hash-a")
    step = ("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",)
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, step))
    with SqliteStore(db_path) as store:
        assert store.get_account("alice") is not None
    assert raw_query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS) + 1,)]
    assert raw_query(db_path, "SELECT count(*) FROM notes") == [(0,)]


def test_failing_migration_leaves_the_file_untouched(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SqliteStore(db_path) as store:
        store.add_account("alice", "hash-a")
    good = ("CREATE TABLE notes (id INTEGER PRIMARY KEY)",)
    bad = ("THIS IS NOT SQL",)
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, good, bad))
    with pytest.raises(StoreError, match="cannot open database"):
        SqliteStore(db_path)
    assert raw_query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    tables = raw_query(db_path, "SELECT name FROM sqlite_master WHERE name = 'notes'")
    assert tables == []


def test_newer_schema_is_refused(db_path: Path) -> None:
    SqliteStore(db_path).close()
    set_user_version(db_path, len(MIGRATIONS) + 1)
    with pytest.raises(SchemaTooNew, match="newer Sealroom") as caught:
        SqliteStore(db_path)
    assert str(db_path) in str(caught.value)
    # Refusing must not have changed the file.
    assert raw_query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS) + 1,)]


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all\n" * 100, b"garbage", b"SQLite format 3\x00" + b"\xff" * 200],
)
def test_non_database_file_is_refused(db_path: Path, content: bytes) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(content)
    with pytest.raises(StoreError) as caught:
        SqliteStore(db_path)
    message = str(caught.value)
    assert str(db_path) in message
    assert "\n" not in message
    assert "Traceback" not in message
    assert db_path.read_bytes() == content


def test_directory_instead_of_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open database"):
        SqliteStore(tmp_path)


def test_closed_store_refuses_calls(db_path: Path) -> None:
    store = SqliteStore(db_path)
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(StoreError, match="closed"):
        store.count_accounts()


# -- accounts -----------------------------------------------------------------------------


def test_add_and_get(db_path: Path) -> None:
    clock = FakeWallClock(datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC))
    with SqliteStore(db_path, clock=clock) as store:
        added = store.add_account("alice", "hash-a")
        assert added.name == "alice"
        assert not added.is_admin
        assert added.enabled
        assert added.created_at == "2024-05-01T12:00:00.123Z"
        assert added.last_login is None
        assert store.get_account("alice") == added
        assert store.get_account("bob") is None


def test_add_duplicate(store: SqliteStore) -> None:
    store.add_account("alice", "hash-a")
    with pytest.raises(AccountExists, match="alice"):
        store.add_account("alice", "hash-b", is_admin=True)
    account = store.get_account("alice")
    assert account is not None
    assert account.password_hash == "hash-a"
    assert not account.is_admin


@pytest.mark.parametrize("name", ["Alice", "", "bad name", "-x", "a" * 33])
def test_add_refuses_non_canonical_names(store: SqliteStore, name: str) -> None:
    with pytest.raises(ValueError, match="canonical"):
        store.add_account(name, "hash")
    assert store.count_accounts() == 0


def test_set_password_hash(store: SqliteStore) -> None:
    store.add_account("alice", "hash-a")
    store.set_password_hash("alice", "hash-b")
    account = store.get_account("alice")
    assert account is not None
    assert account.password_hash == "hash-b"
    with pytest.raises(NoSuchAccount, match="bob"):
        store.set_password_hash("bob", "hash")


def test_replace_password_hash_only_if_unchanged(store: SqliteStore) -> None:
    store.add_account("alice", "hash-a")
    assert store.replace_password_hash("alice", "hash-a", "hash-b")
    assert not store.replace_password_hash("alice", "hash-a", "hash-c")
    account = store.get_account("alice")
    assert account is not None
    assert account.password_hash == "hash-b"
    assert not store.replace_password_hash("bob", "hash-a", "hash-c")


def test_enable_and_disable(store: SqliteStore) -> None:
    store.add_account("alice", "hash-a")
    store.set_enabled("alice", False)
    account = store.get_account("alice")
    assert account is not None
    assert not account.enabled
    store.set_enabled("alice", True)
    account = store.get_account("alice")
    assert account is not None
    assert account.enabled
    with pytest.raises(NoSuchAccount):
        store.set_enabled("bob", False)


def test_remove(store: SqliteStore) -> None:
    store.add_account("alice", "hash-a")
    store.remove_account("alice")
    assert store.get_account("alice") is None
    assert store.count_accounts() == 0
    with pytest.raises(NoSuchAccount):
        store.remove_account("alice")
    # The name is free again.
    store.add_account("alice", "hash-b")
    assert store.count_accounts() == 1


def test_list_is_sorted_by_name(store: SqliteStore) -> None:
    for name in ["carol", "alice", "bob.x", "bob", "0zed"]:
        store.add_account(name, f"hash-{name}", is_admin=name == "carol")
    accounts = store.list_accounts()
    assert [a.name for a in accounts] == ["0zed", "alice", "bob", "bob.x", "carol"]
    assert [a.is_admin for a in accounts] == [False, False, False, False, True]
    assert store.count_accounts() == 5


def test_record_login(db_path: Path) -> None:
    clock = FakeWallClock(datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    with SqliteStore(db_path, clock=clock) as store:
        store.add_account("alice", "hash-a")
        clock.now += timedelta(hours=1, milliseconds=7)
        store.record_login("alice")
        account = store.get_account("alice")
        assert account is not None
        assert account.created_at == "2024-05-01T12:00:00.000Z"
        assert account.last_login == "2024-05-01T13:00:00.007Z"
        with pytest.raises(NoSuchAccount):
            store.record_login("bob")


def test_repr_hides_the_hash(store: SqliteStore) -> None:
    account = store.add_account("alice", "$argon2id$secret-hash-material")
    assert "secret-hash-material" not in repr(account)
    assert "alice" in repr(account)


def test_names_are_parameters_not_sql(store: SqliteStore) -> None:
    store.add_account("alice", "hash-a")
    assert store.get_account("alice' OR '1'='1") is None
    with pytest.raises(NoSuchAccount):
        store.remove_account("x' OR 1=1 --")
    assert store.count_accounts() == 1


def test_iso_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert iso_utc(datetime(2024, 1, 2, 5, 6, 7, 999999, tzinfo=plus_two)) == (
        "2024-01-02T03:06:07.999Z"
    )
    with pytest.raises(ValueError, match="naive"):
        iso_utc(datetime(2024, 1, 2))


# -- change detection and concurrency -----------------------------------------------------


def test_one_store_from_many_threads(store: SqliteStore) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(8, timeout=30)

    def work(worker: int) -> None:
        try:
            start.wait()
            for i in range(25):
                name = f"u{worker}-{i}"
                store.add_account(name, f"hash-{name}")
                store.record_login(name)
                assert store.get_account(name) is not None
                store.list_accounts()
        except BaseException as exc:  # handed to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count_accounts() == 200


def test_two_stores_on_one_file_from_threads(db_path: Path) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(2, timeout=30)

    def work(prefix: str) -> None:
        try:
            with SqliteStore(db_path) as own:
                start.wait()
                for i in range(50):
                    own.add_account(f"{prefix}{i}", "hash")
                    own.set_enabled(f"{prefix}{i}", False)
        except BaseException as exc:  # handed to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with SqliteStore(db_path) as store:
        accounts = store.list_accounts()
    assert len(accounts) == 100
    assert not any(a.enabled for a in accounts)


def test_many_processes_opening_a_new_file_at_once(tmp_path: Path) -> None:
    # Each thread stands in for a process (server, CLI) creating the same new database.
    errors: list[BaseException] = []
    for attempt in range(20):
        path = tmp_path / f"new-{attempt}.db"
        start = threading.Barrier(4, timeout=30)

        def open_and_close(path: Path = path, start: threading.Barrier = start) -> None:
            try:
                start.wait()
                SqliteStore(path).close()
            except BaseException as exc:  # handed to the main thread below
                errors.append(exc)

        threads = [threading.Thread(target=open_and_close) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert raw_query(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert errors == []


# -- opening only what exists; files born private ---------------------------------------------


def test_create_false_never_creates_a_database(tmp_path: Path) -> None:
    """Issue 13, report 1: a command must not leave a new, empty database behind."""
    missing = tmp_path / "var" / "none.db"
    with pytest.raises(store_module.MissingDatabase) as raised:
        SqliteStore(missing, create=False)
    assert str(missing) in str(raised.value)
    assert not missing.exists()
    assert not missing.parent.exists()


def test_create_false_opens_an_existing_database(db_path: Path) -> None:
    with SqliteStore(db_path) as store:
        store.add_account("alice", "hash-a")
    with SqliteStore(db_path, create=False) as store:
        assert [a.name for a in store.list_accounts()] == ["alice"]


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_database_and_side_files_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """Issue 13, report 3: argon2 hashes and private messages, mode 0600 (and -wal, -shm)."""
    db_path = tmp_path / "sealroom.db"
    backup = tmp_path / "backup.db"
    previous = os.umask(umask)
    try:
        with SqliteStore(db_path) as store:
            store.add_account("alice", "hash-a")
            modes = {
                path.name: stat.S_IMODE(path.stat().st_mode)
                for path in tmp_path.iterdir()
                if path.name.startswith("sealroom.db")
            }
            store.backup(backup)
    finally:
        os.umask(previous)
    assert modes == {"sealroom.db": 0o600, "sealroom.db-wal": 0o600, "sealroom.db-shm": 0o600}
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    # A backup is one self-contained file: no -wal or -shm needed beside it.
    assert raw_query(backup, "PRAGMA journal_mode") == [("delete",)]


def test_backup_never_follows_a_planted_file(store: SqliteStore, tmp_path: Path) -> None:
    target = tmp_path / "planted.db"
    target.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="exists"):
        store.backup(target)
    assert not (tmp_path / "elsewhere").exists()


def test_check_file_reads_a_backup_without_touching_it(store: SqliteStore, tmp_path: Path) -> None:
    store.add_account("alice", "hash-a")
    backup = tmp_path / "backup.db"
    store.backup(backup)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert store_module.check_file(backup) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        (b"", "not a Sealroom database"),
        (b"not a database at all, just text" * 40, "not an SQLite"),
    ],
)
def test_check_file_reports_what_is_wrong(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    path = tmp_path / "backup.db"
    if content is not None:
        path.write_bytes(content)
    problems = store_module.check_file(path)
    assert len(problems) == 1
    assert problem in problems[0]
    assert str(path) in problems[0]


def test_check_file_finds_damage(store: SqliteStore, tmp_path: Path) -> None:
    for index in range(200):
        store.add_account(f"user{index}", "x" * 200)
    backup = tmp_path / "backup.db"
    store.backup(backup)
    data = bytearray(backup.read_bytes())
    page = 4096
    data[2 * page + 100 : 2 * page + 400] = b"\xff" * 300  # scribble over a b-tree page
    backup.write_bytes(bytes(data))
    assert store_module.check_file(backup) != []


# -- roles and the last admin --------------------------------------------------------------------


def test_set_admin_changes_the_role_and_counts_as_an_account_change(store: SqliteStore) -> None:
    store.add_account("alice", "hash-a", is_admin=True)
    store.add_account("bob", "hash-b")
    version = store.accounts_version()
    store.set_admin("bob", True)
    account = store.get_account("bob")
    assert account is not None
    assert account.is_admin
    assert store.accounts_version() > version
    with pytest.raises(NoSuchAccount):
        store.set_admin("carol", True)


@pytest.mark.parametrize(
    "change",
    [
        lambda store: store.set_admin("alice", False),
        lambda store: store.set_enabled("alice", False),
        lambda store: store.remove_account("alice"),
    ],
    ids=["demote", "disable", "remove"],
)
def test_the_last_enabled_admin_stays(store: SqliteStore, change: Any) -> None:
    store.add_account("alice", "hash-a", is_admin=True)
    store.add_account("bob", "hash-b")
    with pytest.raises(store_module.LastAdmin, match="alice"):
        change(store)
    account = store.get_account("alice")
    assert account is not None
    assert (account.is_admin, account.enabled) == (True, True)
    # With a second enabled admin it is allowed.
    store.add_account("carol", "hash-c", is_admin=True)
    change(store)


def test_a_disabled_admin_does_not_count(store: SqliteStore) -> None:
    store.add_account("alice", "hash-a", is_admin=True)
    store.add_account("carol", "hash-c", is_admin=True)
    store.set_enabled("carol", False)
    with pytest.raises(store_module.LastAdmin):
        store.remove_account("alice")
    # Plain users come and go freely, admins or not elsewhere.
    store.add_account("bob", "hash-b")
    store.remove_account("bob")
